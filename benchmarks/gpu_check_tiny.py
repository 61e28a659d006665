"""The small models and training setups that ``benchmarks/gpu_check.py`` runs.

- :func:`tiny_diffusions`: the tiny text, class and unconditional ``DiffusionTransformer`` s (4x4 tokens,
  K = 16, T = 10). The text one is ``configs/tiny_text_shapes.yaml``'s diffusion part (its network and
  token embedding; the condition is given as features, so no CLIP is needed); the class and unconditional
  ones have the same size with ``Condition2ImageTransformer`` / ``UnCondition2ImageTransformer``.
- :func:`tiny_text_training_config`: ``configs/tiny_text_shapes.yaml`` with random tiny CLIP and VQ-VAE
  parts (``bench_train.write_parts``) for a run of exactly ``iterations`` steps (one epoch).
- :func:`amp_flags`: the ``train.py`` arguments that ask for fp16 or bf16 autocast, read from the flags
  ``train.py`` accepts (the ``--amp`` interface is being changed; this is the one place that knows it).
- :func:`paper_network_size`: the paper's 24-layer/512 and 19-layer/1024 text networks (32x32 tokens).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parents[1]

TINY_TEXT_CONFIG = REPO / "configs" / "tiny_text_shapes.yaml"
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def perturb_(module: torch.nn.Module, std: float = 0.02, seed: int = 0) -> torch.nn.Module:
    """Add N(0, std) noise to every parameter (a CPU generator: the same weights on every machine).

    The official init zeroes biases and sets norms to 1/0, which would leave parts of the network unused
    by a comparison; the noise makes every parameter matter while keeping the logits of moderate size."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)
    return module


def _content_emb(K: int, side: int, width: int) -> dict:
    return {"target": "vqdiff.modeling.embeddings.dalle_mask_image_embedding.DalleMaskImageEmbedding",
            "params": {"num_embed": K, "spatial_size": [side, side], "embed_dim": width, "trainable": True,
                       "pos_emb_type": "embedding"}}


def _tiny_text_diffusion():
    from vqdiff.modeling.diffusion import DiffusionTransformer
    from vqdiff.utils.config import load_yaml_config

    dp = load_yaml_config(TINY_TEXT_CONFIG)["model"]["params"]["diffusion_config"]["params"]
    net = dp["transformer_config"]
    return DiffusionTransformer(
        content_emb_config=dp["content_emb_config"], transformer_config=net, diffusion_step=dp["diffusion_step"],
        alpha_init_type=dp["alpha_init_type"], auxiliary_loss_weight=dp["auxiliary_loss_weight"],
        adaptive_auxiliary_loss=dp["adaptive_auxiliary_loss"], mask_weight=dp["mask_weight"],
    ), (int(net["params"]["condition_seq_len"]), int(net["params"]["condition_dim"]))


def _tiny_image_diffusion(kind: str, K: int = 16, side: int = 4, width: int = 32, T: int = 10):
    from vqdiff.modeling.diffusion import DiffusionTransformer

    params = dict(n_layer=2, n_embd=width, n_head=2, content_seq_len=side * side, content_spatial_size=[side, side],
                  block_activate="GELU2", timestep_type="adalayernorm", mlp_hidden_times=2, mlp_type="conv_mlp")
    if kind == "class":
        target = "vqdiff.modeling.transformers.networks.Condition2ImageTransformer"
        params.update(class_type="adalayernorm", class_number=5)
    else:
        target = "vqdiff.modeling.transformers.networks.UnCondition2ImageTransformer"
    return DiffusionTransformer(content_emb_config=_content_emb(K, side, width),
                                transformer_config={"target": target, "params": params}, diffusion_step=T,
                                auxiliary_loss_weight=5e-4, adaptive_auxiliary_loss=True)


def tiny_diffusions(batch: int = 3, seed: int = 0) -> dict:
    """``{kind: (diffusion, condition)}`` for kind in text/class/uncond: perturbed random weights and a
    condition made on the CPU (text features (B, 77, 32), class labels (B,), or None), both fp32 CPU."""
    torch.manual_seed(seed)
    text, (cond_len, cond_dim) = _tiny_text_diffusion()
    g = torch.Generator().manual_seed(seed)
    out = {
        "text": (perturb_(text, seed=seed), torch.randn(batch, cond_len, cond_dim, generator=g)),
        "class": (perturb_(_tiny_image_diffusion("class"), seed=seed), torch.randint(0, 5, (batch,), generator=g)),
        "uncond": (perturb_(_tiny_image_diffusion("uncond"), seed=seed), None),
    }
    return {k: (d.eval(), c) for k, (d, c) in out.items()}


def tiny_text_training_config(workdir: Path, iterations: int, batch_size: int = 4, lr: float = 1e-3) -> dict:
    """``configs/tiny_text_shapes.yaml`` with random tiny parts written under ``workdir`` (absolute paths),
    ``iterations * batch_size`` training images (one epoch = the whole run), no validation, no sample grids."""
    if __package__:  # imported as benchmarks.gpu_check_tiny (tests; python -m benchmarks.gpu_check)
        from benchmarks.bench_train import build_config, write_parts
    else:  # run through python benchmarks/gpu_check.py: benchmarks/ is first on sys.path
        from bench_train import build_config, write_parts

    workdir.mkdir(parents=True, exist_ok=True)
    part = write_parts(workdir, "tiny")
    cfg = build_config(workdir, part, layers=1, width=32, batch_size=batch_size)
    cfg["dataloader"]["train_datasets"][0]["params"]["num_samples"] = iterations * batch_size
    cfg["dataloader"].pop("validation_datasets", None)
    sc = cfg["solver"]
    sc.update(base_lr=lr, max_epochs=1, save_epochs=-1, validation_epochs=-1, sample_iterations=-1,
              max_iterations=iterations)
    return cfg


def train_help_text() -> str:
    """``train.py --help`` as printed (in this process; ``train`` is imported from the repository root)."""
    import train

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        train.get_args(["--help"])
    return buf.getvalue()


def amp_flags(dtype: str, help_text: str) -> tuple[list[str], dict]:
    """``(flags, solver settings)`` for ``train.py`` to train under ``dtype`` ('fp16' or 'bf16') autocast;
    the settings go into the config's ``solver`` section (see :func:`apply_solver_settings`).

    Recognised forms of ``train.py --help``: a separate ``--amp_dtype`` flag; ``--amp {choices}`` /
    ``--amp [AMP]`` taking the dtype as its value; or a plain ``--amp`` switch with the dtype in the
    config (``solver.amp_dtype``, the Solver's key)."""
    if dtype not in AMP_DTYPES:
        raise ValueError(f"amp dtype must be one of {sorted(AMP_DTYPES)}, got {dtype!r}")
    if re.search(r"--amp[_-]dtype\b", help_text):
        flag = re.search(r"--amp[_-]dtype\b", help_text).group(0)
        return ["--amp", flag, dtype], {}
    choices = re.search(r"--amp \[?\{([^}]*)\}", help_text)
    if choices:
        names = [c.strip() for c in choices.group(1).split(",")]
        aliases = {"fp16": ("fp16", "float16", "half"), "bf16": ("bf16", "bfloat16")}[dtype]
        pick = next((n for n in names if n in aliases), None)
        if pick is None:
            raise ValueError(f"train.py --amp accepts {names}; none of them is {dtype}")
        return ["--amp", pick], {}
    if re.search(r"--amp \[?[A-Z_]+\]?", help_text):
        return ["--amp", dtype], {}
    return ["--amp"], {"amp_dtype": dtype}


def apply_solver_settings(cfg: dict, settings: dict) -> dict:
    """Write :func:`amp_flags`' solver settings into ``cfg['solver']`` (a command-line override could not
    add a key the config lacks); returns ``cfg``."""
    cfg["solver"].update(settings)
    return cfg


def paper_network_size(name: str) -> dict:
    """The paper's text networks at 32x32 tokens, 77x512 text features, T = 100 (``perf`` size dicts).

    '24x512': 24 layers, width 512, 16 heads, K = 4096 (the ITHQ codebook size);
    '19x1024': 19 layers, width 1024, 16 heads, K = 2887 (COCO/CUB, ``configs/coco.yaml``)."""
    sizes = {"24x512": dict(layers=24, width=512, K=4096), "19x1024": dict(layers=19, width=1024, K=2887)}
    if name not in sizes:
        raise ValueError(f"unknown paper network {name!r}; expected one of {sorted(sizes)}")
    return dict(heads=16, side=32, T=100, cond_dim=512, cond_len=77, batch=1, **sizes[name])


def quick_stand_in_size() -> dict:
    """The size ``--quick`` on CPU runs instead of the paper networks (the same code path, seconds)."""
    return dict(layers=2, width=64, heads=4, side=8, K=64, T=10, cond_dim=64, cond_len=16, batch=1)


def model_autocast_probe(model_type: type) -> tuple[Any, dict]:
    """A global forward pre-hook noting, at the first forward of a ``model_type`` module, whether autocast
    is on and with which dtype; returns ``(handle, seen)``. Remove the handle when done."""
    seen: dict = {}

    def hook(module: torch.nn.Module, inputs: Any) -> None:
        if "enabled" in seen or not isinstance(module, model_type):
            return
        p: Optional[torch.Tensor] = next(module.parameters(), None)
        dev = p.device.type if p is not None else "cpu"
        seen["enabled"] = torch.is_autocast_enabled(dev)
        seen["dtype"] = str(torch.get_autocast_dtype(dev)).replace("torch.", "") if seen["enabled"] else None

    return torch.nn.modules.module.register_module_forward_pre_hook(hook), seen
