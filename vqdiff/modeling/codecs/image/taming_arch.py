"""The taming-transformers convolutional encoder and decoder (Esser et al., arXiv 2012.09841, Sec. 3.1).

Module and parameter names follow taming's ``diffusionmodules/model.py`` exactly (``conv_in``,
``down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}``, ``down.{i}.attn.{j}.{norm,q,k,v,proj_out}``,
``down.{i}.downsample.conv``, ``mid.{block_1,attn_1,block_2}``, ``up.{i}.…``, ``norm_out``, ``conv_out``), so
a released taming checkpoint loads with ``strict=True``. The same classes also cover the ITHQ
``patch_vqgan`` variant: ``resolution`` and the entries of ``attn_resolutions`` may be ``(H, W)`` pairs
and ``scale_by_2`` picks which levels resample.

Shapes: images ``(B, C_in, H, W)`` in ``[-1, 1]``; latents ``(B, z_channels, H/f, W/f)`` with
``f = 2 ** (number of resampling levels)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Normalize",
    "nonlinearity",
    "ResnetBlock",
    "AttnBlock",
    "Upsample",
    "Downsample",
    "Encoder",
    "Decoder",
]


def Normalize(in_channels: int) -> nn.GroupNorm:  # noqa: N802 (taming's name)
    """GroupNorm with 32 groups and eps 1e-6, as every taming block uses."""
    return nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """Swish, ``x * sigmoid(x)``."""
    return F.silu(x)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected an int or an (H, W) pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> 3x3 conv, twice, plus a (1x1 ``nin_shortcut`` or 3x3 ``conv_shortcut``) skip."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.0,
        temb_channels: int = 0,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels > 0:
            self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(nonlinearity(self.norm1(x)))
        if temb is not None:
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv ``q``, ``k``, ``v`` and ``proj_out``, residual."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        b, c, hh, ww = x.shape
        # (B, C, H, W) -> (B, 1, HW, C): one head over all positions, softmax(q k^T / sqrt(C)) v
        q = self.q(h_).reshape(b, 1, c, hh * ww).transpose(2, 3)
        k = self.k(h_).reshape(b, 1, c, hh * ww).transpose(2, 3)
        v = self.v(h_).reshape(b, 1, c, hh * ww).transpose(2, 3)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        out = out.transpose(2, 3).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then an optional 3x3 ``conv``."""

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """Stride-2 3x3 ``conv`` after zero padding right/bottom by one (taming's asymmetric pad), or avg-pool."""

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


def _level_resamples(num_levels: int, scale_by_2: Sequence[bool] | None) -> list[bool]:
    """Which levels resample: all but the last (taming), or as ``scale_by_2`` says (patch_vqgan)."""
    if scale_by_2 is None:
        return [i != num_levels - 1 for i in range(num_levels)]
    if len(scale_by_2) != num_levels:
        raise ValueError(f"scale_by_2 has {len(scale_by_2)} entries but ch_mult has {num_levels} levels")
    return [bool(s) for s in scale_by_2]


class Encoder(nn.Module):
    """Taming encoder: ``conv_in`` -> per level ``num_res_blocks`` ResnetBlocks (+ AttnBlocks where the
    current resolution is in ``attn_resolutions``) and a Downsample -> mid (block, attention, block) ->
    GroupNorm, swish, ``conv_out`` to ``z_channels`` (``2 * z_channels`` when ``double_z``).

    ``(B, in_channels, H, W) -> (B, z_channels, H / f, W / f)``.
    """

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int = 3,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int | Sequence[int]] = (),
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        in_channels: int,
        resolution: int | Sequence[int],
        z_channels: int,
        double_z: bool = True,
        scale_by_2: Sequence[bool] | None = None,
        **ignore_kwargs,
    ):
        super().__init__()
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = _pair(resolution)
        self.in_channels = in_channels
        attn_at = {_pair(r) for r in attn_resolutions}
        resamples = _level_resamples(self.num_resolutions, scale_by_2)

        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        curr_res = self.resolution
        in_ch_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out,
                                         temb_channels=self.temb_ch, dropout=dropout))
                block_in = block_out
                if curr_res in attn_at:
                    attn.append(AttnBlock(block_in))
            down = nn.Module()
            down.block = block
            down.attn = attn
            if resamples[i_level]:
                down.downsample = Downsample(block_in, resamp_with_conv)
                curr_res = (curr_res[0] // 2, curr_res[1] // 2)
            self.down.append(down)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in,
                                       temb_channels=self.temb_ch, dropout=dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in,
                                       temb_channels=self.temb_ch, dropout=dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels,
                                  kernel_size=3, stride=1, padding=1)
        self.z_resolution = curr_res

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for down in self.down:
            for i_block, block in enumerate(down.block):
                h = block(h)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
            if hasattr(down, "downsample"):
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(nn.Module):
    """Taming decoder, the mirror of :class:`Encoder`: ``conv_in`` from ``z_channels`` -> mid -> per level
    (deepest first) ``num_res_blocks + 1`` ResnetBlocks (+ attention) and an Upsample -> GroupNorm, swish,
    ``conv_out`` to ``out_ch``. ``up`` is indexed like ``down`` (``up.0`` is the full-resolution level).

    ``(B, z_channels, H / f, W / f) -> (B, out_ch, H, W)``.
    """

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int | Sequence[int]] = (),
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        in_channels: int | None = None,
        resolution: int | Sequence[int],
        z_channels: int,
        give_pre_end: bool = False,
        tanh_out: bool = False,
        scale_by_2: Sequence[bool] | None = None,
        **ignore_kwargs,
    ):
        super().__init__()
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = _pair(resolution)
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out
        self.requires_image = False  # patch_vqgan's flag; never true here
        attn_at = {_pair(r) for r in attn_resolutions}
        resamples = _level_resamples(self.num_resolutions, scale_by_2)
        n_up = sum(resamples)

        block_in = ch * ch_mult[-1]
        curr_res = (self.resolution[0] // 2**n_up, self.resolution[1] // 2**n_up)
        self.z_shape = (1, z_channels, curr_res[0], curr_res[1])

        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in,
                                       temb_channels=self.temb_ch, dropout=dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in,
                                       temb_channels=self.temb_ch, dropout=dropout)

        ups: list[nn.Module] = []
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out,
                                         temb_channels=self.temb_ch, dropout=dropout))
                block_in = block_out
                if curr_res in attn_at:
                    attn.append(AttnBlock(block_in))
            up = nn.Module()
            up.block = block
            up.attn = attn
            # taming upsamples at every level but the first; patch_vqgan where scale_by_2 says
            if (scale_by_2 is None and i_level != 0) or (scale_by_2 is not None and resamples[i_level]):
                up.upsample = Upsample(block_in, resamp_with_conv)
                curr_res = (curr_res[0] * 2, curr_res[1] * 2)
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor, **kwargs) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block, block in enumerate(up.block):
                h = block(h)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        if self.give_pre_end:
            return h
        h = self.conv_out(nonlinearity(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h
