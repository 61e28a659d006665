"""Training a taming-style VQ-VAE / VQGAN with the objective of :mod:`.losses` (a small, single-process
loop for the synthetic shapes and users' own small data sets; ``scripts/train_vqvae.py`` is its CLI).

Config layout (YAML)::

    model:      {target: VQModel | GumbelVQ (taming or vqdiff path), params: {ddconfig, n_embed, embed_dim,
                 lossconfig: {target: VQLPIPSWithDiscriminator, params: …}, …}}
    solver:     see :class:`CodecSolverConfig` (every key, its default and its check)
    dataloader: {train_datasets: [{target, params}]}   # items {'image': (3, H, W) in [0, 255]}

Outputs (``output_dir``): ``checkpoint/last.pth`` = ``{'state_dict': model (+ 'loss.*'), 'global_step'}``
in the taming layout, ``configs/model.yaml`` (the taming YAML: ``model`` node) and
``configs/codec.yaml`` (a ``content_codec_config`` for :class:`TamingVQVAE` / :class:`TamingGumbelVQVAE`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from vqdiff.utils.config import ConfigError, instantiate_from_config, save_yaml_config

from .quantizers import GumbelQuantize, VectorQuantizer
from .vqgan import GumbelVQ, VQModel

__all__ = ["CodecSolverConfig", "load_images", "train_vqvae", "save_taming_checkpoint", "DeadCodeRestarter",
           "codec_learning_rate"]


def load_images(dataset_configs: list[Mapping[str, Any]]) -> torch.Tensor:
    """Render every item's ``'image'`` of the configured data sets into one ``(N, 3, H, W)`` tensor."""
    images = []
    for i, node in enumerate(dataset_configs):
        ds = instantiate_from_config(node, key_path=f"dataloader.train_datasets[{i}]")
        images += [ds[j]["image"] for j in range(len(ds))]
    if not images:
        raise ConfigError("dataloader.train_datasets yields no images")
    return torch.stack(images).float()


@dataclass(frozen=True)
class CodecSolverConfig:
    """The ``solver:`` section of a codec training config: one default and one check per key.

    The schedule matters as much as the model for a small codebook. With a constant learning rate the
    weights at the last step are one noisy draw among many nearby ones, and which draw a run ends on is
    decided by float summation order (thread count, CPU): on one machine a code for "red" survived, on
    another it drifted to orange. Decaying the rate to ``min_lr_ratio * base_lr`` (cosine, after a linear
    warm-up) ends every run in a settled minimum instead; restarting dead codes stops at
    ``dead_code_restart_until`` of the run, so the decoder has the last part of it to learn what the
    moved codes mean (a code moved at the very last step decodes as whatever it meant before).
    """

    base_lr: float = 1.0e-3
    max_steps: int = 1000
    batch_size: int = 16
    log_frequency: int = 50
    betas: tuple[float, float] = (0.5, 0.9)
    lr_schedule: str = "cosine"            # "cosine" (warm-up, then cosine decay) or "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.02             # the cosine decay ends at base_lr * min_lr_ratio
    gumbel_temperature: tuple[float, float] = (1.0, 1.0 / 16)
    codebook_init: str = "data"            # "data" (k-means++ seeding from encoder outputs) or "none"
    dead_code_restart: int = 0             # every N steps (0: off)
    dead_code_restart_until: float = 0.75  # fraction of max_steps after which no code is moved

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None, key_path: str = "solver") -> "CodecSolverConfig":
        """Parse and check ``section``; an unknown key or a bad value raises naming ``key_path.key``."""
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"{key_path}: unknown key(s) {unknown}; known: {sorted(known)}")
        try:
            values = {
                "base_lr": float(section.get("base_lr", cls.base_lr)),
                "max_steps": int(section.get("max_steps", cls.max_steps)),
                "batch_size": int(section.get("batch_size", cls.batch_size)),
                "log_frequency": int(section.get("log_frequency", cls.log_frequency)),
                "betas": tuple(float(b) for b in section.get("betas", cls.betas)),
                "lr_schedule": str(section.get("lr_schedule", cls.lr_schedule)),
                "warmup_steps": int(section.get("warmup_steps", cls.warmup_steps)),
                "min_lr_ratio": float(section.get("min_lr_ratio", cls.min_lr_ratio)),
                "gumbel_temperature": tuple(float(t) for t in section.get("gumbel_temperature", cls.gumbel_temperature)),
                "codebook_init": str(section.get("codebook_init", cls.codebook_init)),
                "dead_code_restart": int(section.get("dead_code_restart", cls.dead_code_restart) or 0),
                "dead_code_restart_until": float(section.get("dead_code_restart_until", cls.dead_code_restart_until)),
            }
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key_path}: {exc}") from exc
        checks = {
            "base_lr": values["base_lr"] > 0,
            "max_steps": values["max_steps"] > 0,
            "batch_size": values["batch_size"] > 0,
            "log_frequency": values["log_frequency"] > 0,
            "betas": len(values["betas"]) == 2 and all(0 <= b < 1 for b in values["betas"]),
            "lr_schedule": values["lr_schedule"] in ("cosine", "constant"),
            "warmup_steps": values["warmup_steps"] >= 0,
            "min_lr_ratio": 0 <= values["min_lr_ratio"] <= 1,
            "gumbel_temperature": len(values["gumbel_temperature"]) == 2 and min(values["gumbel_temperature"]) > 0,
            "codebook_init": values["codebook_init"] in ("data", "none"),
            "dead_code_restart": values["dead_code_restart"] >= 0,
            "dead_code_restart_until": 0 <= values["dead_code_restart_until"] <= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"{key_path}.{key}: invalid value {section.get(key, values[key])!r}")
        return cls(**values)


def codec_learning_rate(step: int, cfg: CodecSolverConfig) -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up over ``warmup_steps``, then
    constant or a cosine decay from ``base_lr`` to ``base_lr * min_lr_ratio`` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.base_lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.base_lr
    span = max(cfg.max_steps - 1 - cfg.warmup_steps, 1)
    frac = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    floor = cfg.base_lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.base_lr - floor) * (1.0 + math.cos(math.pi * frac))


def _d2_sample(z: torch.Tensor, codes: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` rows of ``z (M, C)`` drawn with probability proportional to their squared distance to the
    nearest row of ``codes`` (k-means++ "D^2" seeding, arXiv cs/0611017 -- Arthur & Vassilvitskii 2007).

    Rare patches (a small coloured shape on a large background) lie far from every code, so they are
    the likeliest picks: plain uniform picks would spend almost every code on background patches.
    """
    d2 = torch.cdist(z, codes).pow(2).min(dim=1).values if codes.numel() else torch.ones(z.shape[0])
    if float(d2.sum()) <= 0:
        d2 = torch.ones_like(d2)
    return z[torch.multinomial(d2, n, replacement=n > z.shape[0], generator=generator)]


@torch.no_grad()
def _init_codebook_from_data(model: VQModel, images: torch.Tensor, generator: torch.Generator) -> None:
    """Seed the VQ codebook with encoder outputs chosen by k-means++ D^2 sampling (no dead codes at start,
    and codes for the rare foreground patches as well as for the background)."""
    if not isinstance(model.quantize, VectorQuantizer):
        return
    idx = torch.randperm(images.shape[0], generator=generator)[:64]
    z = model.encode_to_prequant(images[idx] / 127.5 - 1.0)
    z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    codes = z[torch.randint(0, z.shape[0], (1,), generator=generator)]
    for _ in range(model.quantize.n_e - 1):
        codes = torch.cat([codes, _d2_sample(z, codes, 1, generator)])
    model.quantize.embedding.weight.copy_(codes)


class DeadCodeRestarter:
    """Re-seed codes that no encoder output chose during the last ``every`` steps.

    A code nobody picks gets no gradient and stays dead for good (the codebook-collapse failure of small
    VQ-VAEs). Every ``every`` steps each dead code is moved onto an encoder output of the latest batch,
    drawn with probability proportional to its squared quantization error (:func:`_d2_sample`), so dead
    codes go where the codebook represents the data worst (the random-restart of Jukebox, arXiv
    2005.00341, Sec. 2.2, with error-weighted picks). Listens to the quantizer through a forward hook.
    """

    def __init__(self, quantizer: VectorQuantizer, every: int, generator: torch.Generator):
        self.quantizer = quantizer
        self.every = int(every)
        self.generator = generator
        self.counts = torch.zeros(quantizer.n_e, dtype=torch.long)
        self.last_z: torch.Tensor | None = None
        self.restarted = 0
        self._handle = quantizer.register_forward_hook(self._record)

    def _record(self, module: nn.Module, inputs: tuple, output: tuple) -> None:
        z = inputs[0].detach()
        self.last_z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        self.counts += torch.bincount(output[2][2].reshape(-1).cpu(), minlength=self.quantizer.n_e)

    @torch.no_grad()
    def step(self, step: int) -> int:
        """Call after each optimizer step; returns how many codes were restarted now."""
        if (step + 1) % self.every != 0 or self.last_z is None:
            return 0
        dead = (self.counts == 0).nonzero().flatten()
        self.counts.zero_()
        if dead.numel() == 0:
            return 0
        weight = self.quantizer.embedding.weight
        live = weight[torch.ones(self.quantizer.n_e, dtype=torch.bool).index_fill_(0, dead.to(weight.device), False)]
        weight[dead] = _d2_sample(self.last_z.to(weight.device), live, dead.numel(), self.generator)
        self.restarted += int(dead.numel())
        return int(dead.numel())

    def close(self) -> None:
        self._handle.remove()


def save_taming_checkpoint(model: nn.Module, loss: nn.Module | None, path: str | Path, step: int) -> None:
    """``{'state_dict': model keys + 'loss.*', 'global_step'}`` (the taming Lightning layout)."""
    sd = dict(model.state_dict())
    if loss is not None:
        sd.update({f"loss.{k}": v for k, v in loss.state_dict().items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd, "global_step": int(step)}, path)


def train_vqvae(
    config: Mapping[str, Any],
    output_dir: str | Path | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
    images: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Train the configured model; returns ``{'model', 'loss_fn', 'history': [(step, rec_l1)], 'first',
    'last', 'seconds'}`` where ``rec_l1`` is the mean |x - x^| in [-1, 1] units of the batch.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    config = copy.deepcopy(dict(config))
    if "model" not in config:
        raise ConfigError("the VQ-VAE training config needs a 'model' node")
    model = instantiate_from_config(config["model"], key_path="model")
    if not isinstance(model, VQModel):
        raise ConfigError(f"model must be a VQModel or GumbelVQ, got {type(model).__name__}")
    lossconfig = config["model"].get("params", {}).get("lossconfig")
    loss_fn = instantiate_from_config(lossconfig, key_path="model.params.lossconfig") if lossconfig else None
    cfg = CodecSolverConfig.from_mapping(config.get("solver"))
    if max_steps is not None:
        cfg = replace(cfg, max_steps=int(max_steps))
    steps = cfg.max_steps
    t_start, t_end = cfg.gumbel_temperature

    if images is None:
        images = load_images(list((config.get("dataloader") or {}).get("train_datasets") or []))
    if cfg.codebook_init == "data":
        _init_codebook_from_data(model, images, gen)

    restarter = None
    restart_until = int(cfg.dead_code_restart_until * steps)
    if cfg.dead_code_restart > 0 and isinstance(model.quantize, VectorQuantizer):
        restarter = DeadCodeRestarter(model.quantize, cfg.dead_code_restart, gen)

    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.base_lr, betas=cfg.betas)  # lr set at every step below
    disc = getattr(loss_fn, "discriminator", None)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.base_lr, betas=cfg.betas) if disc is not None else None
    history: list[tuple[int, float]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train_vqvae", dynamic_ncols=True)
    t0 = time.time()
    for step in range(steps):
        lr = codec_learning_rate(step, cfg)
        for optimizer in (opt, opt_d):
            if optimizer is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr
        if isinstance(model.quantize, GumbelQuantize):  # cosine anneal of the Gumbel temperature
            frac = step / max(steps - 1, 1)
            model.quantize.temperature = t_end + 0.5 * (t_start - t_end) * (1 + math.cos(math.pi * frac))
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen)
        x = images[idx] / 127.5 - 1.0
        xrec, qloss = model(x)
        if loss_fn is not None:
            loss, _ = loss_fn(qloss, x, xrec, 0, step, last_layer=model.get_last_layer())
        else:
            loss = (x - xrec).abs().mean() + qloss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if restarter is not None and step < restart_until:
            restarter.step(step)
        if opt_d is not None and step >= loss_fn.discriminator_iter_start:
            d_loss, _ = loss_fn(qloss.detach(), x, xrec.detach(), 1, step)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        rec = (x - xrec).abs().mean().item()
        if step % cfg.log_frequency == 0 or step == steps - 1:
            history.append((step, rec))
        if bar is not None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(rec_l1=f"{rec:.4f}", loss=f"{loss.item():.4f}")
    if bar is not None:
        bar.close()
    if restarter is not None:
        restarter.close()
    model.eval()

    if output_dir is not None:
        output_dir = Path(output_dir)
        ckpt = output_dir / "checkpoint" / "last.pth"
        save_taming_checkpoint(model, loss_fn, ckpt, steps)
        model_yaml = output_dir / "configs" / "model.yaml"
        save_yaml_config({"model": config["model"]}, model_yaml)
        codec_target = "TamingGumbelVQVAE" if isinstance(model, GumbelVQ) else "TamingVQVAE"
        with torch.no_grad():
            grid = model.encode_to_indices(images[:1] / 127.5 - 1.0).shape[1:]
        save_yaml_config({"content_codec_config": {
            "target": f"vqdiff.modeling.codecs.image.taming_vqvae.{codec_target}",
            "params": {"trainable": False, "token_shape": [int(grid[0]), int(grid[1])],
                       "config_path": str(model_yaml), "ckpt_path": str(ckpt),
                       "num_tokens": model.n_embed, "quantize_number": 0, "mapping_path": None},
        }}, output_dir / "configs" / "codec.yaml")
    return {"model": model, "loss_fn": loss_fn, "history": history, "first": history[0][1],
            "last": history[-1][1], "seconds": time.time() - t0,
            "restarted_codes": restarter.restarted if restarter is not None else 0}
