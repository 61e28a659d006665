"""A codec and its training objective as one module the engine's ``Solver`` trains.

The solver calls ``model(batch, return_loss=True, step=it, name=optimizer)`` once per optimizer and
iteration, as taming's Lightning module is called once per ``optimizer_idx``:

- ``name='generator'``: ``x -> encoder -> quantizer -> decoder -> x^`` and the taming loss with
  ``optimizer_idx=0`` (reconstruction + perceptual + codebook + adaptive-weighted GAN term). The
  discriminator's parameters are frozen for this pass (Lightning's ``toggle_optimizer``), so its gradient
  reaches the decoder only.
- ``name='discriminator'``: the reconstruction recomputed without gradient (with the generator's weights
  after its step, as taming does; the quantizer in eval mode, so an EMA codebook is not updated twice) and
  the discriminator loss (``optimizer_idx=1``).

Module names make the state dict the taming layout with a prefix: ``codec.*`` are the ``VQModel`` keys,
``loss.*`` taming's loss keys; :meth:`taming_state_dict` drops the prefix. The buffer ``code_counts`` (codes
chosen since the last dead-code restart, summed over ranks) is checkpointed with the run so a resumed run
restarts the same codes.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from torch import nn

from vqdiff.modeling.codecs.image.quantizers import GumbelQuantize

__all__ = ["CodecTrainingModel"]


class CodecTrainingModel(nn.Module):
    """Args:
        codec: a ``VQModel`` / ``GumbelVQ`` / ``FSQModel``.
        loss: a ``VQLPIPSWithDiscriminator`` (None: ``|x - x^|_1 +`` the quantizer loss, no discriminator).
        max_steps: optimizer steps of the run (the Gumbel temperature anneals over them).
        accumulation: batches per optimizer step (the solver's ``step`` counts batches).
        gumbel_temperature: ``(start, end)`` of the cosine anneal of a Gumbel quantizer's temperature.
    """

    def __init__(self, codec: nn.Module, loss: Optional[nn.Module], max_steps: int, accumulation: int = 1,
                 gumbel_temperature: tuple = (1.0, 1.0 / 16)):
        super().__init__()
        self.codec = codec
        self.loss = loss
        self.max_steps = int(max_steps)
        self.accumulation = int(accumulation)
        self.gumbel_temperature = (float(gumbel_temperature[0]), float(gumbel_temperature[1]))
        self.register_buffer("code_counts", torch.zeros(int(codec.quantize.n_e), dtype=torch.long))
        self.last_z: Optional[torch.Tensor] = None  # (M, C) quantizer inputs of the latest generator pass
        self.last_rec_l1 = float("nan")  # mean |x - x^| (images in [-1, 1]) of the latest generator pass

    # ---- what the solver asks ---------------------------------------------------------------------
    def discriminator_parameters(self) -> list:
        disc = getattr(self.loss, "discriminator", None)
        return list(disc.parameters()) if disc is not None else []

    def parameters_to_optimize(self, name: str = "none") -> list:
        """``generator``: the codec's trainable parameters; ``discriminator``: the PatchGAN's; else both."""
        codec = [p for p in self.codec.parameters() if p.requires_grad]
        if name == "generator":
            return codec
        if name == "discriminator":
            return self.discriminator_parameters()
        return codec + self.discriminator_parameters()

    def taming_state_dict(self) -> dict:
        """``{VQModel keys..., 'loss.*'}``: the taming checkpoint's ``state_dict`` (the same tensors)."""
        out = {}
        for k, v in self.state_dict().items():
            if k.startswith("codec."):
                out[k[len("codec."):]] = v
            elif k.startswith("loss."):
                out[k] = v
        return out

    # ---- one pass ---------------------------------------------------------------------------------
    @staticmethod
    def images(batch: Mapping[str, Any]) -> torch.Tensor:
        """``batch['image']`` ``(B, 3, H, W)`` in ``[0, 255]`` -> float in ``[-1, 1]``."""
        if "image" not in batch:
            raise KeyError(f"a codec training batch needs an 'image' entry; got keys {sorted(batch)}")
        return batch["image"].float() / 127.5 - 1.0

    def _anneal_temperature(self, step: int) -> None:
        """Cosine anneal of the Gumbel temperature from start to end over the run (taming's schedule)."""
        if isinstance(self.codec.quantize, GumbelQuantize):
            start, end = self.gumbel_temperature
            frac = min(step / max(self.max_steps - 1, 1), 1.0)
            self.codec.quantize.temperature = end + 0.5 * (start - end) * (1 + math.cos(math.pi * frac))

    @torch.no_grad()
    def _record_codes(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        counts = torch.bincount(indices.reshape(-1), minlength=self.code_counts.numel())
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        self.code_counts += counts.to(self.code_counts)
        self.last_z = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])

    def forward(self, batch: Mapping[str, Any], return_loss: bool = True, step: int = 0,
                name: str = "generator") -> dict:
        x = self.images(batch)
        global_step = int(step) // self.accumulation
        self._anneal_temperature(global_step)
        if name == "discriminator":
            return self._discriminator_pass(x, global_step)
        if name not in ("generator", "none"):
            raise ValueError(f"unknown optimizer name {name!r}: a codec trains 'generator' and 'discriminator'")
        disc = self.discriminator_parameters()
        for p in disc:
            p.requires_grad_(False)
        try:
            z = self.codec.encode_to_prequant(x)
            quant, qloss, (_, _, indices) = self.codec.quantize(z)
            xrec = self.codec.decode(quant)
            if self.training:
                self._record_codes(z, indices)
            if self.loss is None:
                loss = (x - xrec).abs().mean() + qloss
            else:
                loss, _ = self.loss(qloss, x, xrec, 0, global_step, last_layer=self.codec.get_last_layer())
        finally:
            for p in disc:
                p.requires_grad_(True)
        self.last_rec_l1 = float((x - xrec).detach().abs().mean())
        return {"loss": loss}

    def _discriminator_pass(self, x: torch.Tensor, global_step: int) -> dict:
        if self.loss is None or getattr(self.loss, "discriminator", None) is None:
            raise ValueError("the 'discriminator' optimizer needs a loss with a discriminator")
        quantizer_mode = self.codec.quantize.training
        self.codec.quantize.train(False)
        try:
            with torch.no_grad():
                xrec, qloss = self.codec(x)
        finally:
            self.codec.quantize.train(quantizer_mode)
        d_loss, _ = self.loss(qloss, x, xrec, 1, global_step)
        return {"loss": d_loss}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images (B, 3, H, W) in [0, 255] -> (reconstructions in [0, 255] (clamped), indices (B, h, w))``,
        deterministically (Gumbel: argmax code)."""
        x = images.float() / 127.5 - 1.0
        indices = self.codec.encode_to_indices(x)
        xrec = self.codec.decode_indices(indices).clamp(-1, 1)
        return (xrec + 1) * 127.5, indices
