"""Training a taming-style VQ-VAE / VQGAN with the objective of :mod:`.losses` (a small, single-process
loop for the synthetic shapes and users' own small data sets; ``scripts/train_vqvae.py`` is its CLI).

Config layout (YAML)::

    model:      {target: VQModel | GumbelVQ (taming or vqdiff path), params: {ddconfig, n_embed, embed_dim,
                 lossconfig: {target: VQLPIPSWithDiscriminator, params: …}, …}}
    solver:     {base_lr, max_steps, batch_size, log_frequency, betas, gumbel_temperature: [start, end],
                 codebook_init: data|none}
    dataloader: {train_datasets: [{target, params}]}   # items {'image': (3, H, W) in [0, 255]}

Outputs (``output_dir``): ``checkpoint/last.pth`` = ``{'state_dict': model (+ 'loss.*'), 'global_step'}``
in the taming layout, ``configs/model.yaml`` (the taming YAML: ``model`` node) and
``configs/codec.yaml`` (a ``content_codec_config`` for :class:`TamingVQVAE` / :class:`TamingGumbelVQVAE`).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from vqdiff.utils.config import ConfigError, instantiate_from_config, save_yaml_config

from .quantizers import GumbelQuantize, VectorQuantizer
from .vqgan import GumbelVQ, VQModel

__all__ = ["load_images", "train_vqvae", "save_taming_checkpoint"]


def load_images(dataset_configs: list[Mapping[str, Any]]) -> torch.Tensor:
    """Render every item's ``'image'`` of the configured data sets into one ``(N, 3, H, W)`` tensor."""
    images = []
    for i, node in enumerate(dataset_configs):
        ds = instantiate_from_config(node, key_path=f"dataloader.train_datasets[{i}]")
        images += [ds[j]["image"] for j in range(len(ds))]
    if not images:
        raise ConfigError("dataloader.train_datasets yields no images")
    return torch.stack(images).float()


@torch.no_grad()
def _init_codebook_from_data(model: VQModel, images: torch.Tensor, generator: torch.Generator) -> None:
    """Set the VQ codebook to randomly chosen encoder outputs (avoids the dead codes of a tiny init)."""
    if not isinstance(model.quantize, VectorQuantizer):
        return
    idx = torch.randperm(images.shape[0], generator=generator)[:64]
    z = model.encode_to_prequant(images[idx] / 127.5 - 1.0)
    z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    pick = torch.randint(0, z.shape[0], (model.quantize.n_e,), generator=generator)
    model.quantize.embedding.weight.copy_(z[pick] + 0.01 * torch.randn(z[pick].shape, generator=generator))


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
    solver = dict(config.get("solver") or {})
    steps = int(max_steps if max_steps is not None else solver.get("max_steps", 1000))
    batch_size = int(solver.get("batch_size", 16))
    lr = float(solver.get("base_lr", 1e-3))
    betas = tuple(solver.get("betas", (0.5, 0.9)))
    log_every = int(solver.get("log_frequency", 50))
    t_start, t_end = solver.get("gumbel_temperature", (1.0, 1.0 / 16))

    if images is None:
        images = load_images(list((config.get("dataloader") or {}).get("train_datasets") or []))
    if solver.get("codebook_init", "data") == "data":
        _init_codebook_from_data(model, images, gen)

    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    disc = getattr(loss_fn, "discriminator", None)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=betas) if disc is not None else None
    history: list[tuple[int, float]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train_vqvae", dynamic_ncols=True)
    t0 = time.time()
    for step in range(steps):
        if isinstance(model.quantize, GumbelQuantize):  # cosine anneal of the Gumbel temperature
            frac = step / max(steps - 1, 1)
            model.quantize.temperature = t_end + 0.5 * (t_start - t_end) * (1 + math.cos(math.pi * frac))
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        x = images[idx] / 127.5 - 1.0
        xrec, qloss = model(x)
        if loss_fn is not None:
            loss, _ = loss_fn(qloss, x, xrec, 0, step, last_layer=model.get_last_layer())
        else:
            loss = (x - xrec).abs().mean() + qloss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if opt_d is not None and step >= loss_fn.discriminator_iter_start:
            d_loss, _ = loss_fn(qloss.detach(), x, xrec.detach(), 1, step)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        rec = (x - xrec).abs().mean().item()
        if step % log_every == 0 or step == steps - 1:
            history.append((step, rec))
        if bar is not None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(rec_l1=f"{rec:.4f}", loss=f"{loss.item():.4f}")
    if bar is not None:
        bar.close()
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
            "last": history[-1][1], "seconds": time.time() - t0}
