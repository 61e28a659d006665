from setuptools import find_packages, setup

setup(
    name="vqdiff",
    version="0.1.0",
    description="VQ-Diffusion: discrete diffusion text-to-image synthesis in PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vqdiff", "vqdiff.*"]),
    py_modules=["inference_VQ_Diffusion", "train"],
    include_package_data=True,
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy",
        "pyyaml",
        "pillow",
        "ftfy",
        "regex",
        "tqdm",
        "tensorboard",
        "safetensors",
        "peft==0.21.2",  # LoRA fine-tuning (solver.lora, VQ_Diffusion(lora=...)); it installs transformers
        "accelerate==1.15.0",  # needed by peft
        "webdataset==1.0.2",  # shard readers (vqdiff.data.web_shards); img2dataset itself needs its own env
    ],
    extras_require={
        "dev": [
            "pytest",
            "diffusers",
            "transformers",  # diffusers export/import: CLIPTextModel, CLIPTokenizer
            "torchmetrics",
            "torch-fidelity",  # torchmetrics' FID / IS / KID run torch-fidelity's TF-FID Inception
            "scipy",
            "openai-clip==1.0.1",
            "einops==0.8.2",  # benchmarks/bench_precision.py --official-root: the official code imports it
            "selenium==4.51.0",  # tests/test_app_browser.py; 4.52 needs a certifi newer than some mirrors serve
            "hypothesis==6.155.2",  # tests/test_fuzz_parsers.py: property-based tests of the input parsers
        ],
        # the web page (python -m vqdiff.app). Gradio 6 requires pillow<13: the pin below makes that choice
        # explicit here (vqdiff itself works with either), so that every part's requirements are met.
        "app": [
            "gradio==6.31.0",
            "pillow>=10,<13",
        ],
    },
)
