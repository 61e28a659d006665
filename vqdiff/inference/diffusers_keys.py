"""Parameter-name maps between vqdiff (official VQ-Diffusion names) and diffusers / transformers.

One map per component, written once and used in both directions: :mod:`.diffusers_export` renames our
tensors to diffusers' names, :mod:`.diffusers_import` looks each of our names up in a diffusers folder.
A map takes one of our keys and returns the diffusers key(s) it becomes, or ``None`` for a key
diffusers does not store (it keeps its constructed value on import). A key mapped to several
diffusers keys is split along dim 0 into that many equal chunks (CLIP's fused ``in_proj``).

* network (keys under ``transformer.transformer.``) -> ``Transformer2DModel``: ``content_emb`` ->
  ``latent_image_embedding``; block ``ln1``/``attn1``/``ln1_1``/``attn2``/``ln2``/``mlp.{0,2}`` ->
  ``norm1``/``attn1``/``norm2``/``attn2``/``norm3``/``ff.net.{0.proj,2}``; attention
  ``key/query/value/proj`` -> ``to_k/to_q/to_v/to_out.0``; ``to_logits.{0,1}`` -> ``norm_out``/``out``;
  the unused causal ``attn2.mask`` buffer is not stored.
* codec (keys under ``content_codec.``) -> ``VQModel``: taming ``down.i.block.j`` ->
  ``down_blocks.i.resnets.j``, ``mid.block_{1,2}``/``mid.attn_1`` -> ``mid_block``, decoder ``up.i`` ->
  ``up_blocks.{L-1-i}``, 1x1-conv attention -> linear ``to_q/to_k/to_v/to_out.0`` (reshaped),
  ``quantize`` codebook -> ``quantize.embedding.weight``.
* CLIP text tower (keys under ``transformer.condition_emb.``) -> ``transformers.CLIPTextModel``
  (``text_model.`` prefix): ``resblocks.i.attn.in_proj_*`` -> ``self_attn.{q,k,v}_proj``,
  ``ln_1/ln_2/mlp.c_fc/mlp.c_proj`` -> ``layer_norm1/layer_norm2/mlp.fc1/mlp.fc2``, ``ln_final`` ->
  ``final_layer_norm``; ``text_projection`` is not stored (VQ-Diffusion uses every position's
  ``ln_final`` feature, never the projected one).
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Optional

import torch

__all__ = [
    "KeyMap",
    "DiffusersKeyError",
    "network_key",
    "codec_key",
    "clip_text_key",
    "to_diffusers",
    "from_diffusers",
]

KeyMap = Callable[[str], Optional[tuple[str, ...]]]

_ATTN = {"key": "to_k", "query": "to_q", "value": "to_v", "proj": "to_out.0"}
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_CODEBOOKS = ("quantize.embedding.weight", "quantize.embed.weight", "quantize.embedding")


class DiffusersKeyError(KeyError):
    """A tensor has no counterpart on the other side (the message names the key and the component)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------------------
# the three maps
# --------------------------------------------------------------------------------------------------
def network_key(key: str) -> Optional[tuple[str, ...]]:
    """Our ``Text2ImageTransformer`` key -> its ``Transformer2DModel`` key (``None``: not stored)."""
    m = re.fullmatch(r"content_emb\.(emb|height_emb|width_emb)\.weight", key)
    if m:
        return (f"latent_image_embedding.{m.group(1)}.weight",)
    m = re.fullmatch(r"to_logits\.([01])\.(weight|bias)", key)
    if m:
        return (f"{'norm_out' if m.group(1) == '0' else 'out'}.{m.group(2)}",)
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if not m:
        raise DiffusersKeyError(f"network key '{key}' has no Transformer2DModel equivalent")
    i, rest = m.groups()
    dst = f"transformer_blocks.{i}."
    if rest == "attn2.mask":
        return None  # the official causal-mask buffer: never used by cross attention
    m = re.fullmatch(r"(ln1|ln1_1)\.(emb\.weight|linear\.weight|linear\.bias)", rest)
    if m:
        return (dst + ("norm1" if m.group(1) == "ln1" else "norm2") + "." + m.group(2),)
    m = re.fullmatch(r"(attn1|attn2)\.(key|query|value|proj)\.(weight|bias)", rest)
    if m:
        return (f"{dst}{m.group(1)}.{_ATTN[m.group(2)]}.{m.group(3)}",)
    m = re.fullmatch(r"(ln2|mlp\.0|mlp\.2)\.(weight|bias)", rest)
    if m:
        name = {"ln2": "norm3", "mlp.0": "ff.net.0.proj", "mlp.2": "ff.net.2"}[m.group(1)]
        return (f"{dst}{name}.{m.group(2)}",)
    raise DiffusersKeyError(f"network key '{key}' has no Transformer2DModel equivalent")


def _taming_key(key: str, n_levels: int, decoder: bool) -> Optional[str]:
    """The diffusers name of one taming encoder/decoder key (without ``encoder.``/``decoder.``)."""
    simple = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out"}
    head, _, rest = key.partition(".")
    if head in simple:
        return f"{simple[head]}.{rest}"
    m = re.fullmatch(r"mid\.(block_1|block_2|attn_1)\.(\w+)\.(\w+)", key)
    if m:
        part, layer, p = m.groups()
        if part == "attn_1":
            return f"mid_block.attentions.0.{_VAE_ATTN[layer]}.{p}"
        return f"mid_block.resnets.{int(part[-1]) - 1}.{_RESNET[layer]}.{p}"
    m = re.fullmatch(r"(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(\w+)\.(\w+)", key)
    if m:
        _, lvl, kind, j, layer, p = m.groups()
        lvl = n_levels - 1 - int(lvl) if decoder else int(lvl)
        group = "up_blocks" if decoder else "down_blocks"
        table = _RESNET if kind == "block" else _VAE_ATTN
        return f"{group}.{lvl}.{'resnets' if kind == 'block' else 'attentions'}.{j}.{table[layer]}.{p}"
    m = re.fullmatch(r"(down|up)\.(\d+)\.(downsample|upsample)\.conv\.(\w+)", key)
    if m:
        _, lvl, _, p = m.groups()
        lvl = n_levels - 1 - int(lvl) if decoder else int(lvl)
        group, sampler = ("up_blocks", "upsamplers") if decoder else ("down_blocks", "downsamplers")
        return f"{group}.{lvl}.{sampler}.0.conv.{p}"
    return None


def codec_key(n_levels: int) -> KeyMap:
    """Map of a taming codec with ``enc``/``dec`` (``n_levels`` resolution levels) to ``VQModel`` keys.

    The codebook is taken from ``enc.quantize`` only (``dec.quantize`` is the same module); EMA
    statistics (``cluster_size``, ``embedding_avg``) and Gumbel logits (``quantize.proj``) are not stored.
    """

    def key_map(key: str) -> Optional[tuple[str, ...]]:
        side, _, rest = key.partition(".")
        if side not in ("enc", "dec"):
            raise DiffusersKeyError(f"codec key '{key}' is neither under 'enc.' nor 'dec.'")
        if rest.startswith("quantize."):
            return ("quantize.embedding.weight",) if side == "enc" and rest in _CODEBOOKS else None
        if rest.startswith(("quant_conv.", "post_quant_conv.")):
            return (rest,)
        part = "encoder" if side == "enc" else "decoder"
        if not rest.startswith(part + "."):
            raise DiffusersKeyError(f"codec key '{key}' has no VQModel equivalent")
        name = _taming_key(rest[len(part) + 1:], n_levels, decoder=side == "dec")
        if name is None:
            raise DiffusersKeyError(f"codec key '{key}' has no VQModel equivalent")
        return (f"{part}.{name}",)

    return key_map


def clip_text_key(key: str) -> Optional[tuple[str, ...]]:
    """Our CLIP text key (OpenAI names) -> ``CLIPTextModel`` key(s); ``in_proj`` splits into q, k, v."""
    top = {
        "token_embedding.weight": "embeddings.token_embedding.weight",
        "positional_embedding": "embeddings.position_embedding.weight",
        "ln_final.weight": "final_layer_norm.weight",
        "ln_final.bias": "final_layer_norm.bias",
    }
    if key in top:
        return ("text_model." + top[key],)
    if key == "text_projection":
        return None
    m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key)
    if m:  # the fused (3D, D) projection: rows [q; k; v]
        i, p = m.groups()
        return tuple(f"text_model.encoder.layers.{i}.self_attn.{x}_proj.{p}" for x in ("q", "k", "v"))
    m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", key)
    if m:
        i, layer, p = m.groups()
        names = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
        if layer in names:
            return (f"text_model.encoder.layers.{i}.{names[layer]}.{p}",)
    raise DiffusersKeyError(f"CLIP text key '{key}' has no CLIPTextModel equivalent")


# --------------------------------------------------------------------------------------------------
# applying a map
# --------------------------------------------------------------------------------------------------
def to_diffusers(state_dict: Mapping[str, torch.Tensor], key_map: KeyMap) -> dict[str, torch.Tensor]:
    """Rename (and split) our tensors to diffusers' names; float64 becomes float32, 1x1 convs of
    attention become linear weights. Two of our keys giving the same diffusers key must be equal."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        names = key_map(key)
        if names is None:
            continue
        value = value.detach().float() if value.is_floating_point() else value.detach()
        parts = value.chunk(len(names), dim=0) if len(names) > 1 else (value,)
        for name, part in zip(names, parts):
            if re.search(r"attentions\.\d+\.to_(q|k|v|out\.0)\.weight$", name) and part.ndim == 4:
                part = part[:, :, 0, 0]  # taming's 1x1-conv attention -> diffusers' linear layers
            out[name] = part.contiguous()
    return out


def from_diffusers(
    own: Mapping[str, torch.Tensor],
    theirs: Mapping[str, torch.Tensor],
    key_map: KeyMap,
    component: str,
    prefix: str = "",
) -> dict[str, torch.Tensor]:
    """Our state dict (keys and shapes of ``own``) filled from a diffusers one through ``key_map``.

    Keys the map leaves out keep their value in ``own``. Diffusers tensors are reshaped to our shape
    (linear -> 1x1 conv) and cast to our dtype.

    Raises:
        DiffusersKeyError: a key of ours is absent from ``theirs``, or ``theirs`` has a tensor no key
            of ours uses (both name ``component`` and the key).
        ValueError: a tensor's size differs from ours.
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key, mine in own.items():
        names = key_map(key)
        if names is None:
            out[prefix + key] = mine
            continue
        missing = [n for n in names if n not in theirs]
        if missing:
            raise DiffusersKeyError(f"{component}: '{missing[0]}' (for our '{prefix}{key}') is not in its weights")
        value = torch.cat([theirs[n] for n in names], dim=0) if len(names) > 1 else theirs[names[0]]
        if value.numel() != mine.numel():
            raise ValueError(
                f"{component}: '{names[0]}' has shape {tuple(value.shape)}, our '{prefix}{key}' is {tuple(mine.shape)}"
            )
        out[prefix + key] = value.reshape(mine.shape).to(mine.dtype)
        used.update(names)
    extra = sorted(set(theirs) - used)
    if extra:
        raise DiffusersKeyError(
            f"{component}: {len(extra)} weight(s) have no place in the vqdiff model, e.g. '{extra[0]}'"
        )
    return out
