"""Consistency checks between the parts of a VQ-Diffusion model, run when the model is built.

Each part of a model config is valid on its own but the parts must agree: the image codec's token grid
``token_shape`` (h, w) gives the sequence length N = h*w of the transformer (``content_seq_len``), its
codebook size K (``quantize_number``, or ``num_tokens`` when ``quantize_number`` is 0) is the content
embedding's ``num_embed``, and the text embedding's output width is the network's ``condition_dim``.
A disagreement would otherwise surface as an index or shape error at the first training step (after
the data were read); here it is a :class:`~vqdiff.utils.config.ConfigError` naming both keys and both
values.  Parts the checks cannot inspect (test doubles, research forks without the attribute) are
skipped, never guessed.

The text codec and the network must agree too (:func:`check_text_condition`): the token rows' length
``context_length`` is the cross attention's ``condition_seq_len`` (and fits the CLIP tower's positions), and a
model that masks the text padding needs rows framed by start and end tokens.

Class labels are checked where they enter the model (:func:`check_class_labels`).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from vqdiff.utils.config import ConfigError

__all__ = ["check_model_consistency", "check_text_condition", "check_class_labels"]

_CODEC = "model.params.content_codec_config.params"
_DIFF = "model.params.diffusion_config.params"
_NET = _DIFF + ".transformer_config.params"
_CEMB = _DIFF + ".content_emb_config.params"
_COND = _DIFF + ".condition_emb_config.params"
_TEXT = "model.params.condition_codec_config.params"


def _transformer_params(diffusion_config: Any) -> Mapping:
    """``diffusion_config.params.transformer_config.params`` when it is a config mapping, else ``{}``."""
    if not isinstance(diffusion_config, Mapping):
        return {}
    net = (diffusion_config.get("params") or {}).get("transformer_config")
    if not isinstance(net, Mapping):
        return {}
    return net.get("params") or {}


def _codec_k_key(codec: nn.Module) -> str:
    q = getattr(codec, "quantize_number", None)
    if q is not None and int(q) == 0 and getattr(codec, "num_tokens", None) is not None:
        return f"{_CODEC}.num_tokens (quantize_number is 0)"
    if q is not None:
        return f"{_CODEC}.quantize_number"
    return f"{_CODEC} (codebook size, get_number_of_tokens())"


def _text_feature_width(cond_emb: Any) -> Optional[int]:
    """Last-dim width of the text features a condition embedding returns, when it can be told.

    A CLIP text embedding returns the ``ln_final`` features (``config.width``) unless
    ``pick_last_embedding`` (then the projection width ``config.embed_dim``), doubled by the official
    ``embed_dim: 1024`` concatenation; other modules report ``embed_dim`` (or nothing: skipped).
    """
    if cond_emb is None:
        return None
    config = getattr(cond_emb, "config", None)
    if config is not None and hasattr(config, "width") and hasattr(cond_emb, "pick_last_embedding"):
        width = int(config.embed_dim) if cond_emb.pick_last_embedding else int(config.width)
        return width * 2 if getattr(cond_emb, "_concat_twice", False) else width
    width = getattr(cond_emb, "embed_dim", None)
    return int(width) if isinstance(width, int) else None


def check_model_consistency(
    content_codec: Optional[nn.Module],
    diffusion: Optional[nn.Module],
    diffusion_config: Any = None,
    text_condition: bool = False,
) -> None:
    """Raise :class:`ConfigError` when the codec, the content embedding and the network disagree.

    Args:
        content_codec: the built image codec (``token_shape``, ``get_number_of_tokens()``).
        diffusion: the built ``DiffusionTransformer`` (``content_seq_len``, ``num_classes`` = K + 1,
            ``transformer.content_emb.spatial_size``, ``condition_emb.embed_dim``, ``condition_dim``).
        diffusion_config: the diffusion config (for ``transformer_config.params.content_spatial_size``,
            which the network does not keep); None or a built module skips that check.
        text_condition: also check the text embedding width against ``condition_dim`` (DALLE).

    Checks (each message names both keys and both values):
        * token_shape h*w == content_seq_len;
        * content_spatial_size == token_shape (and its product == content_seq_len);
        * content_emb spatial_size H*W >= content_seq_len (the official ImageNet/FFHQ models use a
          32x32 grid for 256 tokens, so a larger grid is allowed);
        * codec codebook size == content_emb_config num_embed;
        * condition embedding width == condition_dim (text models).
    """
    if diffusion is None:
        return
    seq_len = getattr(diffusion, "content_seq_len", None)
    net_params = _transformer_params(diffusion_config)
    shape = getattr(content_codec, "token_shape", None) if content_codec is not None else None
    if seq_len is not None and shape is not None and len(tuple(shape)) == 2:
        h, w = (int(s) for s in shape)
        if h * w != int(seq_len):
            raise ConfigError(
                f"{_CODEC}.token_shape is {[h, w]} ({h}*{w} = {h * w} tokens) but {_NET}.content_seq_len is "
                f"{int(seq_len)}: the transformer must take exactly the codec's tokens (set content_seq_len to "
                f"{h * w}, or token_shape to the codec's real grid)"
            )
        css = net_params.get("content_spatial_size")
        if isinstance(css, Sequence) and not isinstance(css, str) and len(css) == 2:
            css_l = [int(css[0]), int(css[1])]
            if css_l != [h, w]:
                raise ConfigError(
                    f"{_CODEC}.token_shape is {[h, w]} but {_NET}.content_spatial_size is {css_l}: both are "
                    f"the (h, w) grid of image tokens and must be equal"
                )
    if seq_len is not None and shape is None:
        css = net_params.get("content_spatial_size")
        if isinstance(css, Sequence) and not isinstance(css, str) and len(css) == 2:
            if int(css[0]) * int(css[1]) != int(seq_len):
                raise ConfigError(
                    f"{_NET}.content_spatial_size is {[int(css[0]), int(css[1])]} "
                    f"({int(css[0]) * int(css[1])} tokens) but {_NET}.content_seq_len is {int(seq_len)}"
                )

    content_emb = getattr(getattr(diffusion, "transformer", None), "content_emb", None)
    grid = getattr(content_emb, "spatial_size", None)
    if seq_len is not None and grid is not None:
        H, W = (int(s) for s in grid)
        if H * W < int(seq_len):
            raise ConfigError(
                f"{_CEMB}.spatial_size is {[H, W]} ({H}*{W} = {H * W} positions) but {_NET}.content_seq_len "
                f"is {int(seq_len)}: the position grid must hold the whole token sequence (H*W >= "
                f"content_seq_len)"
            )

    num_classes = getattr(diffusion, "num_classes", None)  # K + 1 ([MASK])
    if content_codec is not None and num_classes is not None and hasattr(content_codec, "get_number_of_tokens"):
        try:
            k_codec = int(content_codec.get_number_of_tokens())
        except (NotImplementedError, AttributeError, TypeError):
            k_codec = None
        k_emb = int(num_classes) - 1
        if k_codec is not None and k_codec != k_emb:
            raise ConfigError(
                f"{_codec_k_key(content_codec)} gives {k_codec} image tokens but {_CEMB}.num_embed is {k_emb}: "
                f"the content embedding and the output head need one row per codec token (set num_embed to "
                f"{k_codec})"
            )

    if text_condition:
        cond_emb = getattr(diffusion, "condition_emb", None)
        width = _text_feature_width(cond_emb)
        cond_dim = getattr(diffusion, "condition_dim", None)
        if isinstance(width, int) and cond_dim is not None and int(width) != int(cond_dim):
            raise ConfigError(
                f"{_COND} builds a text embedding of width {int(width)} ({type(cond_emb).__name__}, from its "
                f"weights) but {_NET}.condition_dim is {int(cond_dim)}: the cross-attention reads "
                f"condition_dim features (set condition_dim to {int(width)})"
            )


def check_text_condition(condition_codec: Optional[nn.Module], diffusion: Optional[nn.Module]) -> None:
    """Raise :class:`ConfigError` when the text codec's token rows do not fit the network.

    Checks (each message names both keys and both values; parts without the attributes are skipped):
        * codec ``context_length`` == network ``condition_seq_len`` (the learned null text and the cross
          attention are built for that many positions);
        * ``context_length`` <= the CLIP tower's positions (``positional_embedding`` rows);
        * with ``condition_padding_mask``: the codec frames each caption with start and end tokens
          (``add_start_and_end``) and pads with an id below the end token's, the largest of the vocabulary,
          since the mask ends at each row's largest id (``condition_input.padding_mask_from_tokens``).
    """
    length = getattr(condition_codec, "context_length", None)
    if condition_codec is None or diffusion is None or not isinstance(length, int):
        return
    seq_len = getattr(diffusion, "condition_seq_len", None)
    if seq_len is not None and int(seq_len) != length:
        raise ConfigError(
            f"{_TEXT}.context_length is {length} but {_NET}.condition_seq_len is {int(seq_len)}: the network "
            f"attends to exactly the codec's token rows (set both to the same length, e.g. {length})"
        )
    positions = getattr(getattr(diffusion, "condition_emb", None), "positional_embedding", None)
    if torch.is_tensor(positions) and positions.shape[0] < length:
        raise ConfigError(
            f"{_TEXT}.context_length is {length} but the text tower of {_COND} has {positions.shape[0]} "
            f"positions: a token row cannot be longer (set context_length <= {positions.shape[0]})"
        )
    if not getattr(diffusion, "condition_padding_mask", False):
        return
    if getattr(condition_codec, "add_start_and_end", True) is not True:
        raise ConfigError(
            f"{_DIFF}.condition_padding_mask is True but {_TEXT}.add_start_and_end is not: the mask ends at "
            "each caption's end-of-text token, so the codec must write start and end tokens"
        )
    encoder = getattr(getattr(condition_codec, "tokenizer", None), "encoder", None)
    pad = getattr(condition_codec, "pad_value", None)
    if isinstance(encoder, Mapping) and "<|endoftext|>" in encoder and isinstance(pad, int):
        eot = int(encoder["<|endoftext|>"])
        if eot != max(encoder.values()) or pad >= eot:
            raise ConfigError(
                f"{_DIFF}.condition_padding_mask is True but the end-of-text id {eot} is not the largest id "
                f"above {_TEXT}.pad_value {pad} and every word: the mask ends at each row's largest id (CLIP's "
                "end-of-text rule); use the CLIP tokenizer with pad_value 0"
            )


def check_class_labels(labels: torch.Tensor, null_label: int, what: str = "class label") -> None:
    """Raise ``ValueError`` unless every label is in ``[0, null_label]``.

    ``null_label`` is the number of real classes (``condition_emb_config.params.num_embed``, 1000 for
    ImageNet); the label ``null_label`` itself is the "no class" label of classifier-free guidance.
    """
    if labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi > int(null_label):
        bad = labels[(labels < 0) | (labels > int(null_label))].reshape(-1)[:5].tolist()
        raise ValueError(
            f"{what} out of range: got {bad}; labels must be in [0, {int(null_label) - 1}] for the "
            f"{int(null_label)} classes ({_COND}.num_embed = {int(null_label)}), or {int(null_label)} for "
            f"'no class'"
        )
