"""The taming VQGAN training objective (Esser et al., arXiv 2012.09841, Eqs. 4-7).

``L = L_rec + L_codebook + lambda * L_GAN`` with

- ``L_rec = |x - x^|_1`` (or squared) ``+ perceptual_weight * LPIPS(x, x^)`` (perceptual part only when
  the user gives VGG16 / LPIPS weights by path: nothing is ever downloaded);
- ``L_codebook`` = the quantizer's loss (codebook + commitment, or the Gumbel KL), times ``codebook_weight``;
- ``L_GAN = -mean D(x^)`` from a PatchGAN discriminator trained with the hinge (or vanilla) loss;
- adaptive ``lambda = disc_weight * ||grad_{last} L_rec|| / (||grad_{last} L_GAN|| + 1e-4)`` (Eq. 7),
  clamped to ``[0, 1e4]``, and the GAN terms switched on from ``disc_start`` steps.

Module names follow taming (``discriminator.main.*``, ``perceptual_loss.*``), so a taming checkpoint's
``loss.*`` keys have the same layout.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DummyLoss",
    "NLayerDiscriminator",
    "hinge_d_loss",
    "vanilla_d_loss",
    "VGGPerceptualLoss",
    "VQLPIPSWithDiscriminator",
    "adopt_weight",
]

logger = logging.getLogger(__name__)


class DummyLoss(nn.Module):
    """taming's placeholder loss of the released inference YAMLs: holds nothing."""

    def __init__(self, **ignore_kwargs: Any):
        super().__init__()


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """``value`` before ``threshold`` steps, ``weight`` after (the discriminator start)."""
    return value if global_step < threshold else weight


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``(mean relu(1 - D(x)) + mean relu(1 + D(x^))) / 2``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``(mean softplus(-D(x)) + mean softplus(D(x^))) / 2``."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix, arXiv 1611.07004): 4x4 convs, stride 2 for ``n_layers`` levels,
    BatchNorm and LeakyReLU(0.2); ``(B, C, H, W) -> logits (B, 1, H', W')``. Layers in ``main``."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False),
                   nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class VGGPerceptualLoss(nn.Module):
    """LPIPS-style distance (Zhang et al., arXiv 1801.03924, Eq. 1) on torchvision VGG16 features.

    ``d(x, y) = sum_l mean_{hw} || w_l * (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|) ||^2`` over relu1_2 … relu5_3;
    ``w_l`` are the LPIPS linear heads when ``lpips_path`` is given (the ``lpips`` package's ``vgg.pth``,
    keys ``lin{l}.model.1.weight``), else all ones. ``vgg_path`` is a torchvision ``vgg16`` state dict.
    Inputs in ``[-1, 1]``; returns ``(B, 1, 1, 1)``.
    """

    _SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
    _CHANNELS = (64, 128, 256, 512, 512)

    def __init__(self, vgg_path: str | Path, lpips_path: str | Path | None = None):
        super().__init__()
        from torchvision.models import vgg16

        for p in (vgg_path, lpips_path):
            if p is not None and not Path(p).is_file():
                raise FileNotFoundError(f"perceptual-loss weights not found: '{p}' (nothing is downloaded; "
                                        f"give a local torchvision vgg16 / LPIPS vgg.pth file)")
        net = vgg16(weights=None)
        sd = torch.load(vgg_path, map_location="cpu", weights_only=True)
        result = net.load_state_dict(sd, strict=False)  # the classifier head is optional
        missing = [k for k in result.missing_keys if k.startswith("features.")]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"{vgg_path} is not a torchvision vgg16 state dict: missing "
                               f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}")
        feats = net.features
        self.slices = nn.ModuleList(nn.Sequential(*[feats[i] for i in range(a, b)]) for a, b in self._SLICES)
        lins = [torch.ones(1, c, 1, 1) for c in self._CHANNELS]
        if lpips_path is not None:
            lsd = torch.load(lpips_path, map_location="cpu", weights_only=True)
            lins = [lsd[f"lin{i}.model.1.weight"].float() for i in range(5)]
        for i, w in enumerate(lins):
            self.register_buffer(f"lin{i}", w)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hx, hy = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total = torch.zeros(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)
        for i, block in enumerate(self.slices):
            hx, hy = block(hx), block(hy)
            nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            diff = (nx - ny).pow(2) * getattr(self, f"lin{i}")
            total = total + diff.sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        return total


class VQLPIPSWithDiscriminator(nn.Module):
    """The taming VQGAN loss (see the module docstring); call signature as taming's.

    ``forward(codebook_loss, inputs, reconstructions, optimizer_idx, global_step, last_layer=None,
    cond=None, split='train') -> (loss, log dict)``: ``optimizer_idx`` 0 is the autoencoder's loss, 1 the
    discriminator's.
    """

    def __init__(
        self,
        disc_start: int = 0,
        codebook_weight: float = 1.0,
        pixelloss_weight: float = 1.0,
        disc_num_layers: int = 3,
        disc_in_channels: int = 3,
        disc_factor: float = 1.0,
        disc_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        use_actnorm: bool = False,
        disc_conditional: bool = False,
        disc_ndf: int = 64,
        disc_loss: str = "hinge",
        pixel_loss: str = "l1",
        vgg_path: str | None = None,
        lpips_path: str | None = None,
        use_discriminator: bool = True,
        n_classes: int | None = None,
    ):
        super().__init__()
        if disc_loss not in ("hinge", "vanilla"):
            raise ValueError(f"disc_loss must be 'hinge' or 'vanilla', got {disc_loss!r}")
        if pixel_loss not in ("l1", "l2"):
            raise ValueError(f"pixel_loss must be 'l1' or 'l2', got {pixel_loss!r}")
        if use_actnorm:
            raise ValueError("use_actnorm is not supported; the discriminator uses BatchNorm")
        self.codebook_weight = codebook_weight
        self.pixel_weight = pixelloss_weight
        self.pixel_loss = pixel_loss
        self.perceptual_weight = perceptual_weight
        self.perceptual_loss: nn.Module | None = None
        if perceptual_weight > 0 and vgg_path is not None:
            self.perceptual_loss = VGGPerceptualLoss(vgg_path, lpips_path)
        elif perceptual_weight > 0:
            logger.info("VQLPIPSWithDiscriminator: no vgg_path given, training without the perceptual loss")
        self.discriminator = (NLayerDiscriminator(disc_in_channels, disc_ndf, disc_num_layers)
                              if use_discriminator else None)
        self.discriminator_iter_start = int(disc_start)
        self.disc_loss = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight
        self.disc_conditional = disc_conditional
        self.n_classes = n_classes

    def calculate_adaptive_weight(self, nll_loss: torch.Tensor, g_loss: torch.Tensor,
                                  last_layer: torch.Tensor) -> torch.Tensor:
        """Eq. 7: ``||grad nll|| / (||grad g|| + 1e-4)`` at the decoder's last layer, clamped, detached."""
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
        return torch.clamp(d_weight, 0.0, 1e4).detach() * self.discriminator_weight

    def _disc_input(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if self.disc_conditional:
            if cond is None:
                raise ValueError("disc_conditional is set but no cond was given")
            return torch.cat((x, cond), dim=1)
        return x

    def forward(self, codebook_loss: torch.Tensor, inputs: torch.Tensor, reconstructions: torch.Tensor,
                optimizer_idx: int, global_step: int, last_layer: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, split: str = "train"):
        if self.pixel_loss == "l1":
            rec_loss = (inputs - reconstructions).abs()
        else:
            rec_loss = (inputs - reconstructions).pow(2)
        rec_loss = self.pixel_weight * rec_loss
        p_loss = torch.zeros((), device=inputs.device)
        if self.perceptual_loss is not None:
            p_loss = self.perceptual_loss(inputs, reconstructions)
            rec_loss = rec_loss + self.perceptual_weight * p_loss
        nll_loss = rec_loss.mean()
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        gan_on = self.discriminator is not None and disc_factor > 0

        if optimizer_idx == 0:
            g_loss = torch.zeros((), device=inputs.device)
            d_weight = torch.zeros((), device=inputs.device)
            if gan_on:
                logits_fake = self.discriminator(self._disc_input(reconstructions, cond))
                g_loss = -logits_fake.mean()
                if self.training and last_layer is not None:
                    d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer)
                else:
                    d_weight = torch.tensor(self.discriminator_weight, device=inputs.device)
            loss = nll_loss + d_weight * disc_factor * g_loss + self.codebook_weight * codebook_loss.mean()
            log = {
                f"{split}/total_loss": loss.detach(),
                f"{split}/quant_loss": codebook_loss.detach().mean(),
                f"{split}/nll_loss": nll_loss.detach(),
                f"{split}/rec_loss": (inputs - reconstructions).abs().mean().detach(),
                f"{split}/p_loss": p_loss.detach().mean(),
                f"{split}/d_weight": d_weight.detach(),
                f"{split}/disc_factor": torch.tensor(disc_factor),
                f"{split}/g_loss": g_loss.detach(),
            }
            return loss, log

        if optimizer_idx == 1:
            if self.discriminator is None:
                raise ValueError("optimizer_idx 1 asks for the discriminator loss but use_discriminator is False")
            logits_real = self.discriminator(self._disc_input(inputs.detach(), cond))
            logits_fake = self.discriminator(self._disc_input(reconstructions.detach(), cond))
            d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
            log = {
                f"{split}/disc_loss": d_loss.detach(),
                f"{split}/logits_real": logits_real.detach().mean(),
                f"{split}/logits_fake": logits_fake.detach().mean(),
            }
            return d_loss, log
        raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator), got {optimizer_idx}")
