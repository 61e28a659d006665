"""The ``Tokenize`` text codec: captions -> fixed-length CLIP token rows and their mask.

Each caption becomes ``[SOT] + BPE(caption.lower()) + [EOT]`` (start/end only with
``add_start_and_end``), padded with ``pad_value`` to ``context_length`` (77 for CLIP). A caption with
more tokens keeps its first ``context_length`` tokens and its last token (EOT) in the final slot, as
the official code; a warning says how many captions of the batch were cut.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import torch

from vqdiff.modeling.codecs.base_codec import BaseCodec
from vqdiff.utils.config import instantiate_from_config

__all__ = ["DEFAULT_TOKENIZER_CONFIG", "tokenize", "Tokenize"]

DEFAULT_TOKENIZER_CONFIG: dict[str, Any] = {
    "target": "vqdiff.modeling.codecs.text.bpe.SimpleTokenizer",
    "params": {"end_idx": 49152},
}


def _as_text_list(texts: str | bytes | Sequence[str | bytes]) -> list[str]:
    if isinstance(texts, (str, bytes, bytearray)):
        texts = [texts]
    out: list[str] = []
    for i, t in enumerate(texts):
        if isinstance(t, (bytes, bytearray)):
            t = bytes(t).decode("utf-8", errors="replace")
        if not isinstance(t, str):
            raise TypeError(f"caption {i} must be str or bytes, got {type(t).__name__}: {t!r}")
        out.append(t)
    return out


def tokenize(
    texts: str | bytes | Sequence[str | bytes],
    tokenizer: Any,
    context_length: int = 77,
    add_start_and_end: bool = True,
    with_mask: bool = True,
    pad_value: int = 0,
    just_token: bool = False,
) -> dict[str, torch.Tensor] | list[list[int]]:
    """Captions -> ``{'token': LongTensor (B, context_length), 'mask': BoolTensor (B, context_length)}``.

    ``mask`` is True on the caption's tokens (start and end included) and False on padding; it is only
    returned with ``with_mask``. ``just_token`` returns the unpadded id lists instead.
    """
    texts = _as_text_list(texts)
    sot = [tokenizer.encoder["<|startoftext|>"]] if add_start_and_end else []
    eot = [tokenizer.encoder["<|endoftext|>"]] if add_start_and_end else []
    rows = [sot + tokenizer.encode(t.lower()) + eot for t in texts]
    if just_token:
        return rows
    token = torch.full((len(rows), context_length), pad_value, dtype=torch.long)
    mask = torch.zeros(len(rows), context_length, dtype=torch.bool)
    n_cut = 0
    for i, ids in enumerate(rows):
        if len(ids) > context_length:
            n_cut += 1
            ids = ids[: context_length - 1] + ids[-1:]  # keep the last (end) token in the last slot
        if ids:
            token[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = True
    if n_cut:
        warnings.warn(
            f"{n_cut} of {len(rows)} caption(s) had more than {context_length} tokens and were truncated "
            f"(the end token kept)",
            stacklevel=2,
        )
    out = {"token": token}
    if with_mask:
        out["mask"] = mask
    return out


class Tokenize(BaseCodec):
    """Text codec wrapping a BPE tokenizer (the official ``Tokenize``; CLIP: 77 tokens, start and end).

    Args:
        context_length: row length L of the token tensor (77 for CLIP, 256 for DALL-E's tokenizer).
        add_start_and_end: frame each caption with ``<|startoftext|>`` / ``<|endoftext|>``.
        just_token: ``get_tokens`` returns the unpadded id lists.
        with_mask: also return ``mask`` (B, L) bool, True on real tokens.
        pad_value: id written after the caption (0 in every official config).
        clip_embedding: also embed the tokens with ``condition_emb_config`` (``'embed_token'`` and, when
            that embedding has ``additional_last_embedding``, ``'last_embed'``).
        condition_emb_config: the embedding's config, required with ``clip_embedding``.
        tokenizer_config: ``target``/``params`` of the tokenizer (``SimpleTokenizer``; its ``params`` may
            hold ``bpe_path``).
    """

    def __init__(
        self,
        context_length: int = 256,
        add_start_and_end: bool = False,
        just_token: bool = False,
        with_mask: bool = True,
        pad_value: int = 0,
        clip_embedding: bool = False,
        condition_emb_config: Mapping | None = None,
        tokenizer_config: Mapping | None = None,
    ):
        super().__init__()
        if not isinstance(context_length, int) or context_length < 1:
            raise ValueError(f"context_length must be a positive int, got {context_length!r}")
        if add_start_and_end and context_length < 2:
            raise ValueError(f"context_length={context_length} leaves no room for start and end tokens")
        self.context_length = context_length
        self.add_start_and_end = add_start_and_end
        self.just_token = just_token
        self.with_mask = with_mask
        self.pad_value = pad_value
        self.clip_embedding = clip_embedding
        self.trainable = False
        self.condition_emb = None
        if clip_embedding:
            if condition_emb_config is None:
                raise ValueError("Tokenize: clip_embedding=True needs 'condition_emb_config'")
            self.condition_emb = instantiate_from_config(condition_emb_config)
        self.tokenizer = instantiate_from_config(
            dict(tokenizer_config) if tokenizer_config is not None else {
                "target": DEFAULT_TOKENIZER_CONFIG["target"],
                "params": dict(DEFAULT_TOKENIZER_CONFIG["params"]),
            }
        )

    def extra_repr(self) -> str:
        return (
            f"context_length={self.context_length}, add_start_and_end={self.add_start_and_end}, "
            f"with_mask={self.with_mask}, pad_value={self.pad_value}"
        )

    def check_length(self, token: Sequence[int]) -> bool:
        return len(token) <= self.context_length

    def get_number_of_tokens(self) -> int:
        return len(self.tokenizer.encoder)

    def get_tokens(self, text: str | bytes | Sequence[str | bytes], **kwargs: Any) -> dict:
        """Captions (B) -> ``{'token': (B, L) long, 'mask': (B, L) bool}`` (+ embeddings, see class doc)."""
        out = tokenize(
            text,
            tokenizer=self.tokenizer,
            context_length=self.context_length,
            add_start_and_end=self.add_start_and_end,
            with_mask=self.with_mask,
            pad_value=self.pad_value,
            just_token=self.just_token,
        )
        if not self.clip_embedding or self.just_token:
            return out
        emb = self.condition_emb
        device = next(emb.parameters()).device
        with torch.no_grad():
            result = emb(out["token"].to(device))
        if getattr(emb, "additional_last_embedding", False):
            out["embed_token"], out["last_embed"] = result[0].detach(), result[1].detach()
        else:
            out["embed_token"] = result.detach()
        return out

    def decode(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> list[str]:
        """Token rows (B, L) -> captions: start/end tokens dropped, padding (``mask`` False, or anything
        after the end token) ignored. Text comes back normalised (lower case, one space between pieces)."""
        if tokens.dim() == 1:
            tokens = tokens[None]
        eot = self.tokenizer.encoder["<|endoftext|>"]
        texts = []
        for i, row in enumerate(tokens.tolist()):
            if mask is not None:
                row = [t for t, m in zip(row, mask[i].tolist()) if m]
            elif self.add_start_and_end and eot in row:
                row = row[: row.index(eot) + 1]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts
