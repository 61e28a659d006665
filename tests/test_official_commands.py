"""The official README's commands from a fresh clone (issue 15, "Done when").

Without weights, every command fails on the missing ``.pth`` only, with one line naming the
``scripts/download_checkpoints.py --only …`` command. With tiny stand-in weights written at the official
paths in the official formats (and tiny copies of the configs at the same paths), the same commands run:
the README's ``VQ_Diffusion`` examples (ITHQ, config_text, config_imagenet, imagenet_cf) and
``running_command/run_train_coco.py`` for two iterations from ``--load_path OUTPUT/pretrained_model/CC_pretrained.pth``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import fixtures_dir
from test_inference import official_layout_checkpoint, shrink_model_config, write_tiny_codec_yamls
from vqdiff.utils.config import load_yaml_config, save_yaml_config

REPO = Path(__file__).resolve().parents[1]
COPIED = ["configs", "OUTPUT/pretrained_model", "help_folder", "running_command", "scripts", "train.py",
          "inference_VQ_Diffusion.py"]
P = "OUTPUT/pretrained_model"


def fresh_clone(dst: Path) -> Path:
    """The tracked files a user gets (copied; the package linked), and nothing else."""
    dst.mkdir(parents=True)
    for rel in COPIED:
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, dst / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pth", "*.pt*"))
        else:
            shutil.copy2(src, dst / rel)
    shutil.copytree(REPO / "help_folder", dst / "help_folder", dirs_exist_ok=True)  # the token maps (*.pt)
    os.symlink(REPO / "vqdiff", dst / "vqdiff")
    return dst


def _launcher(clone: Path, script: str):
    spec = importlib.util.spec_from_file_location(script[:-3], clone / "running_command" / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # the clone must run on its own
    return env


# --------------------------------------------------------------------------------------------------
# no weights: one line naming the download command
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script,needs", [
    ("run_train_coco.py", ["CC_pretrained", "taming_f8_8192_openimages_last", "ViT-B-32"]),
    ("run_train_cub.py", ["CC_pretrained", "taming_f8_8192_openimages_last", "ViT-B-32"]),
    ("run_train_imagenet.py", ["vqgan_imagenet_f16_16384"]),
    ("run_train_ffhq.py", ["vqgan_ffhq_f16_1024"]),
    ("run_tune_coco.py", ["coco_pretrained", "taming_f8_8192_openimages_last", "ViT-B-32"]),
])
def test_launchers_without_weights_name_the_download_command(tmp_path, monkeypatch, capsys, script, needs):
    clone = fresh_clone(tmp_path / "clone")
    monkeypatch.chdir(clone)
    mod = _launcher(clone, script)
    assert mod.launch(mod.RUN, [], mod.REPO) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"{script}: missing file")
    command = err.split("download with: ")[1]
    assert command == "python scripts/download_checkpoints.py " + " ".join(f"--only {n}" for n in needs)
    assert "not part of the release" not in err  # every tracked file (YAMLs, token maps) is there


def test_api_and_script_without_weights_name_the_download_command(tmp_path, monkeypatch):
    from inference_VQ_Diffusion import VQ_Diffusion

    clone = fresh_clone(tmp_path / "clone")
    monkeypatch.chdir(clone)
    with pytest.raises(FileNotFoundError, match=r"download with: python scripts/download_checkpoints.py "
                                                r"--only coco_learnable --only taming_f8_8192_openimages_last --only ViT-B-32$"):
        VQ_Diffusion(config=f"{P}/config_text.yaml", path=f"{P}/coco_learnable.pth")
    with pytest.raises(FileNotFoundError, match=r"--only imagenet_pretrained --only vqgan_imagenet_f16_16384$"):
        VQ_Diffusion(config=f"{P}/config_imagenet.yaml", path=f"{P}/imagenet_pretrained.pth")
    out = subprocess.run([sys.executable, "inference_VQ_Diffusion.py"], cwd=clone, env=_env(),
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().endswith(
        "--only ithq_learnable --only ithq_vqvae --only ViT-B-32"), out.stderr


# --------------------------------------------------------------------------------------------------
# tiny stand-in weights at the official paths: the same commands run
# --------------------------------------------------------------------------------------------------
def _tiny_model_config(clone: Path, rel: str, **model_params) -> dict:
    """Shrink the clone's config ``rel`` in place; the codec keeps its official weight path."""
    cfg = load_yaml_config(clone / rel)
    codec = cfg["model"]["params"]["content_codec_config"]["params"]
    ckpt_path = codec.get("ckpt_path")
    tiny = shrink_model_config(cfg)
    tiny_codec = tiny["model"]["params"]["content_codec_config"]["params"]
    if ckpt_path is None:
        tiny_codec.pop("ckpt_path")  # PatchVQVAE: the official hard-coded default path
    else:
        tiny_codec["ckpt_path"] = ckpt_path
    tiny["model"]["params"].update(model_params)
    for key in ("solver", "dataloader"):
        if key in cfg:
            tiny[key] = cfg[key]
    save_yaml_config(tiny, clone / rel)
    return tiny


def write_tiny_release(clone: Path) -> None:
    """Tiny weights at every path the README examples and run_train_coco.py read, in official formats."""
    from vqdiff.modeling.codecs.image.patch_vqvae import PatchVQVAE
    from vqdiff.modeling.codecs.image.taming_vqvae import TamingCodec

    write_tiny_codec_yamls(clone)  # 8x8 tokens of 16x16 images, 64 codes, at the official YAML paths
    torch.manual_seed(0)
    for name in ("taming_f8_8192_openimages", "vqgan_imagenet_f16_16384"):
        codec = TamingCodec.load_model(f"{P}/taming_dvae/{name}.yaml", None)
        weights = "taming_f8_8192_openimages_last" if "openimages" in name else name
        torch.save({"state_dict": codec.state_dict()}, clone / P / "taming_dvae" / f"{weights}.pth")
    ithq = PatchVQVAE.load_model(f"{P}/taming_dvae/config.yaml", None)
    torch.save({"model": ithq.state_dict()}, clone / P / "taming_dvae" / "ithq_vqvae.pth")
    shutil.copy(fixtures_dir("official_tiny_text") / P / "ViT-B-32.pt", clone / P / "ViT-B-32.pt")
    for rel in ("configs/ithq.yaml", f"{P}/config_text.yaml", f"{P}/config_imagenet.yaml", "configs/imagenet.yaml"):
        _tiny_model_config(clone, rel)
    coco = _tiny_model_config(clone, "configs/coco.yaml")
    for node in coco["dataloader"]["train_datasets"] + coco["dataloader"]["validation_datasets"]:
        node["params"]["im_preprocessor_config"]["params"]["size"] = 16
    save_yaml_config(coco, clone / "configs" / "coco.yaml")
    official_layout_checkpoint(clone / "configs/ithq.yaml", clone / P / "ithq_learnable.pth")
    text = clone / P / "config_text.yaml"
    learnable = load_yaml_config(text)
    learnable["model"]["params"]["learnable_cf"] = True
    learnable["model"]["params"]["diffusion_config"]["params"]["learnable_cf"] = True
    save_yaml_config(learnable, clone / "learnable.yaml")
    official_layout_checkpoint(clone / "learnable.yaml", clone / P / "coco_learnable.pth")
    official_layout_checkpoint(text, clone / P / "CC_pretrained.pth")
    official_layout_checkpoint(clone / P / "config_imagenet.yaml", clone / P / "imagenet_pretrained.pth")
    cf = load_yaml_config(clone / "configs/imagenet.yaml")
    cf["model"]["params"]["diffusion_config"]["params"]["transformer_config"]["params"]["class_number"] = 1001
    save_yaml_config(cf, clone / "imagenet_cf.yaml")
    official_layout_checkpoint(clone / "imagenet_cf.yaml", clone / P / "imagenet_learnable.pth")


@pytest.fixture
def tiny_clone(tmp_path, monkeypatch) -> Path:
    clone = fresh_clone(tmp_path / "clone")
    monkeypatch.chdir(clone)
    torch.set_num_threads(1)
    write_tiny_release(clone)
    return clone


@pytest.mark.slow
def test_readme_examples_and_run_train_coco_run_with_tiny_weights(tiny_clone):

    from inference_VQ_Diffusion import VQ_Diffusion

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every checkpoint loads cleanly
        # ITHQ (the official README's first block, each call as written there)
        m = VQ_Diffusion(config="configs/ithq.yaml", path=f"{P}/ithq_learnable.pth")
        m.inference_generate_sample_with_condition("teddy bear playing in the pool", truncation_rate=0.86, save_root="RESULT", batch_size=4)
        m.inference_generate_sample_with_condition("teddy bear playing in the pool", truncation_rate=1.0, save_root="RESULT", batch_size=4, guidance_scale=5.0)
        m.inference_generate_sample_with_condition("a long exposure photo of waterfall", truncation_rate=0.86, save_root="RESULT", batch_size=4, infer_speed=0.5)
        m.inference_generate_sample_with_condition("a long exposure photo of waterfall", truncation_rate=0.86, save_root="RESULT", batch_size=4, infer_speed=2)
        m.inference_generate_sample_with_condition("a long exposure photo of waterfall", truncation_rate=0.86, save_root="RESULT", batch_size=4, prior_rule=2, prior_weight=1)
        m.inference_generate_sample_with_condition("a long exposure photo of waterfall", truncation_rate=1.0, save_root="RESULT", batch_size=4, guidance_scale=5.0, infer_speed=2)
        assert m.model.transformer.learnable_cf and m.epoch == 3 and m.info["model"] is m.model
        # MSCOCO: the README's call loads coco_learnable.pth into config_text.yaml, which has no learnable_cf;
        # the official code then drops the learned null text silently, ours warns and names the flag
        with pytest.warns(UserWarning, match="learnable_cf: True"):
            VQ_Diffusion(config=f"{P}/config_text.yaml", path=f"{P}/coco_learnable.pth")
        m = VQ_Diffusion(config=f"{P}/config_text.yaml", path=f"{P}/coco_learnable.pth", learnable_cf=True)
        assert m.model.learnable_cf and m.load_report.unexpected == []
        m.inference_generate_sample_with_condition("A group of elephants walking in muddy water", truncation_rate=0.86, save_root="RESULT", batch_size=4)
        m.inference_generate_sample_with_condition("A group of elephants walking in muddy water", truncation_rate=1.0, save_root="RESULT", batch_size=4, guidance_scale=3.0)
        # ImageNet, plain and with classifier-free sampling (the official keyword text=)
        m = VQ_Diffusion(config=f"{P}/config_imagenet.yaml", path=f"{P}/imagenet_pretrained.pth")
        m.inference_generate_sample_with_class(407, truncation_rate=0.86, save_root="RESULT", batch_size=4)
        m = VQ_Diffusion(config="configs/imagenet.yaml", path=f"{P}/imagenet_learnable.pth", imagenet_cf=True)
        m.inference_generate_sample_with_class(text=493, truncation_rate=0.94, save_root="RESULT", batch_size=8, guidance_scale=1.5)
    result = tiny_clone / "RESULT"
    assert sorted(p.name for p in (result / "teddy bear playing in the pool").iterdir()) == [f"{i:06d}.png" for i in range(4)]
    assert (result / "A group of elephants walking in muddy water" / "000003.png").is_file()
    assert sorted(p.name for p in (result / "407").iterdir()) == [f"{i:06d}.jpg" for i in range(4)]
    assert len(list((result / "493").glob("*.jpg"))) == 8

    code = _python_block(REPO / "README.md", "## Inference (as the official README)")  # ours, as written
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(code, "README.md", "exec"), {})
    shutil.rmtree(result)
    out = subprocess.run([sys.executable, "inference_VQ_Diffusion.py"], cwd=tiny_clone, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in (result / "teddy bear playing in the pool").iterdir()) == [f"{i:06d}.png" for i in range(4)]

    out = _train_one_tiny_epoch(tiny_clone, "run_train_coco.py")
    last = torch.load(tiny_clone / "OUTPUT" / "coco_train" / "checkpoint" / "last.pth", map_location="cpu", weights_only=True)
    assert last["last_iter"] == 3  # one epoch: 4 iterations of batch 2
    assert f"resumed from {P}/CC_pretrained.pth" in out.stdout
    start = torch.load(tiny_clone / P / "CC_pretrained.pth", map_location="cpu", weights_only=True)["model"]
    key = "transformer.transformer.to_logits.1.weight"
    assert not torch.equal(last["model"][key], start[key])  # it trained from the loaded weights ...
    assert (last["model"][key] - start[key]).abs().max() < 0.05  # ... not from a fresh initialisation


def _train_one_tiny_epoch(clone: Path, launcher: str) -> subprocess.CompletedProcess:
    """``running_command/<launcher>`` for one epoch (batch 2) on a 4-image COCO layout; it must succeed."""
    out = subprocess.run(
        [sys.executable, f"running_command/{launcher}", "--no_progress_bar", "--seed", "0",
         "solver.max_epochs=1", "solver.sample_iterations=1000", "dataloader.batch_size=2",
         "dataloader.num_workers=0", f"dataloader.data_root={_coco_layout(clone)}"],
        cwd=clone, env=_env(), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _python_block(doc: Path, section: str) -> str:
    """The first ```python block after the heading ``section`` in ``doc``."""
    text = doc.read_text(encoding="utf-8")
    start = text.index("```python\n", text.index(section)) + len("```python\n")
    return text[start:text.index("```", start)]


def _coco_layout(clone: Path) -> Path:
    from vqdiff.data.layouts import write_layout

    return write_layout("coco", clone.parent / "coco", num_images=4, resolution=16)


def test_class_method_text_keyword_rules(tiny_clone):
    from inference_VQ_Diffusion import VQ_Diffusion

    m = VQ_Diffusion(config=f"{P}/config_imagenet.yaml", path=f"{P}/imagenet_pretrained.pth")
    a = m.inference_generate_sample_with_class(text=3, truncation_rate=0.9, save_root=None, batch_size=1, seed=0, fast=10)
    b = m.inference_generate_sample_with_class(3, 0.9, None, 1, seed=0, fast=10)
    assert list(a[0].getdata()) == list(b[0].getdata())
    with pytest.raises(TypeError, match="not both"):
        m.inference_generate_sample_with_class(3, truncation_rate=0.9, save_root=None, batch_size=1, text=4)
    with pytest.raises(TypeError, match="'batch_size'"):
        m.inference_generate_sample_with_class(text=3, truncation_rate=0.9)
    info = m.get_model(ema=False, model_path=f"{P}/imagenet_pretrained.pth", config_path=f"{P}/config_imagenet.yaml")
    assert set(info) == {"model", "epoch", "model_name", "parameter"} and info["model_name"] == "OUTPUT"
    counts = info["parameter"]
    assert counts["overall"]["total"] == sum(p.numel() for p in info["model"].parameters())
    assert counts["content_codec"]["trainable"] == 0 and counts["transformer"]["trainable"] > 0


def test_launcher_help_shows_the_official_command_and_train_flags(capfd):
    mod = _launcher(REPO, "run_tune_coco.py")
    assert mod.launch(mod.RUN, ["--help"], mod.REPO) == 0
    out = capfd.readouterr().out
    assert ("python train.py --name coco_tune --config_file configs/coco_tune.yaml --num_node 1 --tensorboard "
            "--load_path OUTPUT/pretrained_model/COCO_pretrained.pth") in out
    assert "--auto_resume" in out and "--load_path" in out  # train.py's own help follows


def test_tune_launcher_takes_either_case_of_the_coco_checkpoint(tmp_path, monkeypatch):
    from vqdiff.official_runs import OFFICIAL_RUNS, build_command

    run = OFFICIAL_RUNS["run_tune_coco.py"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / P).mkdir(parents=True)

    def load_path():
        cmd = build_command(run, [], REPO)
        return cmd[cmd.index("--load_path") + 1]

    assert load_path() == f"{P}/coco_pretrained.pth"  # neither: the name the download writes (and the message names)
    (tmp_path / P / "coco_pretrained.pth").write_bytes(b"x")
    assert load_path() == f"{P}/coco_pretrained.pth"
    (tmp_path / P / "COCO_pretrained.pth").write_bytes(b"x")
    assert load_path() == f"{P}/COCO_pretrained.pth"  # the official name wins when present


@pytest.mark.slow
def test_run_tune_coco_fine_tunes_a_checkpoint_without_the_learned_null_text(tiny_clone):
    """The tune recipe adds ``empty_text_embed`` (learnable cf) to a model whose pretrained checkpoint has
    none: the official single-GPU resume loads strictly and fails (OFFICIAL.md, "Fix"); ours keeps the new
    tensor as initialised, in the model and in the EMA, and says so in the log."""
    from vqdiff.utils.config import load_yaml_config, save_yaml_config

    tune = _tiny_model_config(tiny_clone, "configs/coco_tune.yaml")
    for node in tune["dataloader"]["train_datasets"] + tune["dataloader"]["validation_datasets"]:
        node["params"]["im_preprocessor_config"]["params"]["size"] = 16
    save_yaml_config(tune, tiny_clone / "configs/coco_tune.yaml")
    pretrained = tiny_clone / P / "coco_pretrained.pth"
    shutil.copy(tiny_clone / P / "CC_pretrained.pth", pretrained)
    assert "transformer.empty_text_embed" not in torch.load(pretrained, map_location="cpu", weights_only=True)["model"]
    out = _train_one_tiny_epoch(tiny_clone, "run_tune_coco.py")
    assert "transformer.empty_text_embed" in out.stdout  # named as kept at its initial value
    last = torch.load(tiny_clone / "OUTPUT" / "coco_tune" / "checkpoint" / "last.pth", map_location="cpu",
                      weights_only=True)
    assert last["model"]["transformer.empty_text_embed"].shape == last["ema"]["empty_text_embed"].shape
    assert load_yaml_config(tiny_clone / "OUTPUT" / "coco_tune" / "configs" / "config.yaml")  # the run's config saved
