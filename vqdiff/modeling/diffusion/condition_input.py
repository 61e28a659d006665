"""The text condition as the network reads it: the embedding, the learned null swap and the padding mask.

VQ-Diffusion (arXiv 2111.14822, Sec. 4.1) feeds every one of the ``Lc`` CLIP features of a caption (77 in the
released models) to the cross attention, padding included: a short caption's few words then share the attention
with ``Lc - len`` padding features that are the same in every caption. With ``condition_padding_mask`` (a
``DiffusionTransformer`` option, off by default so the released models keep their numbers) the cross attention
gets a (B, Lc) bool mask, True on the positions it may attend to; the masked positions get a ``-inf`` logit
before the softmax (``layers.CrossAttention``)::

    softmax_j(q k_j^T / sqrt(d) + m_j),  m_j = 0 where the mask is True, -inf where it is False

The mask of a caption follows from its token ids (:func:`padding_mask_from_tokens`): the tokenizer writes
``[SOT] words [EOT]`` then padding, and CLIP's end-of-text token is the largest id of its vocabulary (CLIP's own
pooling takes the feature at the row's argmax for that reason), so the positions up to and including the row's
largest id are the caption. The start token is always valid, so no row is fully masked. Embeddings given
without tokens (``condition_embed``) and the learned null text ``empty_text_embed`` have no padding: their mask
is all True, written as None (no mask at all). Guidance's null branch of ``''`` or of a negative prompt is
embedded from tokens, so it gets their mask, as the dropped captions had in training.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from vqdiff.modeling.embeddings.text_feature_cache import cached_embedding

__all__ = ["padding_mask_from_tokens", "training_condition", "stack_masks"]


def padding_mask_from_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """(B, Lc) CLIP token ids -> (B, Lc) bool, True up to and including the end-of-text token (the row's
    largest id, the first one when it repeats) and False on the padding after it."""
    if tokens.dim() != 2:
        raise ValueError(f"a padding mask is made from token ids (B, Lc), got shape {tuple(tokens.shape)}")
    end = tokens.argmax(dim=1, keepdim=True)  # (B, 1): the EOT position
    positions = torch.arange(tokens.shape[1], device=tokens.device)[None]  # (1, Lc)
    return positions <= end


def training_condition(diffusion: Any, input: Mapping) -> tuple[Any, Optional[torch.Tensor]]:
    """The training / validation condition of ``DiffusionTransformer.forward``: ``(cond_emb, cond_mask)``.

    ``cond_emb``: the frozen embedding of ``input['condition_token']`` (through the text feature cache), fp32,
    with the rows of empty captions (``condition_mask[:, 2]`` False: only start and end tokens) swapped for the
    learned null text when ``learnable_cf`` (Improved VQ-Diffusion, arXiv 2205.16007 Sec. 3.2); or
    ``input['condition_embed_token']`` for models that take the embedding itself.
    ``cond_mask``: (B, Lc) bool from the token ids when ``condition_padding_mask`` is on (all True on the
    swapped rows), else None.
    """
    if diffusion.condition_emb is None:
        emb = input.get("condition_embed_token")
        return (emb.float() if torch.is_tensor(emb) and emb.is_floating_point() else emb), None
    tokens = input["condition_token"]
    with torch.autocast(diffusion.device.type, enabled=False), torch.no_grad():
        cond_emb = cached_embedding(diffusion.condition_feature_cache, diffusion.condition_emb, tokens)
    cond_mask = diffusion.condition_mask(tokens)
    if torch.is_tensor(cond_emb) and cond_emb.is_floating_point():
        cond_emb = cond_emb.float()
        if diffusion.learnable_cf and input.get("condition_mask") is not None:
            empty = ~input["condition_mask"][:, 2].bool()  # caption = only start + end tokens
            cond_emb = torch.where(
                empty[:, None, None], diffusion.empty_text_embed.to(cond_emb.dtype).unsqueeze(0), cond_emb
            )
            if cond_mask is not None:  # the learned null text has no padding
                cond_mask = cond_mask | empty.to(cond_mask.device)[:, None]
    return cond_emb, cond_mask


def stack_masks(cond_mask: Optional[torch.Tensor], null_mask: Optional[torch.Tensor], cond_rows: int,
                null_rows: int, length: int, device: torch.device) -> Optional[torch.Tensor]:
    """The mask of guidance's batched call, stacked as ``composable_guidance.stack_branches`` stacks the
    condition: the ``cond_rows`` (P B) rows part by part, then the ``null_rows`` (B) null rows: ((P + 1) B, Lc);
    a missing side is all True, and None when both are missing (no mask)."""
    if cond_mask is None and null_mask is None:
        return None
    if cond_mask is None:
        cond_mask = torch.ones(cond_rows, length, dtype=torch.bool, device=device)
    if null_mask is None:
        null_mask = torch.ones(null_rows, length, dtype=torch.bool, device=device)
    null_mask = null_mask.to(cond_mask.device)
    if null_mask.shape[0] == 1 and null_rows != 1:
        null_mask = null_mask.expand(null_rows, -1)
    if cond_mask.shape != (cond_rows, length) or null_mask.shape != (null_rows, length):
        raise ValueError(f"condition masks of shapes {tuple(cond_mask.shape)} and {tuple(null_mask.shape)} for "
                         f"{cond_rows} condition rows and {null_rows} null rows of length {length}")
    return torch.cat([cond_mask, null_mask], dim=0)
