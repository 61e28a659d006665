"""``TextFeatureCache``: a frozen text tower's features kept per caption, so the tower runs once per caption.

VQ-Diffusion's condition embedding (the CLIP text tower, arXiv 2111.14822 Sec. 4.1) is frozen: the features
of one tokenised caption are the same at every step. A training run over a small caption set (the shapes demo:
48 combinations x 7 partial captions) would otherwise run the tower on every row of every batch. The cache
maps a caption's token ids (one row of ``condition_token``) to its features, least recently used first out,
at most ``max_entries`` captions; the tower runs only on the rows of a batch it has not seen, in one call.

Exactness: a row's features are the tower's output for that row. When a batch has no row the cache holds and
no repeated row, the tower runs on the batch as it is, and a batch read back from the cache was computed as
such a batch; a row computed in a smaller batch (repeated or partly known rows) may differ from the
uncached batch's in the last bits, where the CPU/GPU matrix kernels depend on the batch size.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Union

import torch

__all__ = ["TextFeatureCache", "cached_embedding"]

Features = Union[torch.Tensor, tuple]


class TextFeatureCache:
    """A bounded LRU of ``token ids (L,) -> features`` for a frozen text tower.

    Args:
        max_entries: most captions kept (each ``L x D`` floats: 77 x 512 fp32 is 154 KiB), >= 1.

    ``cache(tokens (B, L), embed)`` returns ``embed(tokens)`` — a (B, ...) tensor, or a tuple of them — with
    ``embed`` called only on the rows not held (once each, in batch order). Counters: ``hits``, ``misses``,
    ``tower_calls``. Not a module: nothing of it is in a state dict.
    """

    def __init__(self, max_entries: int):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"text feature cache size must be an int >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self._store: OrderedDict[bytes, tuple[torch.Tensor, ...]] = OrderedDict()
        self.hits = self.misses = self.tower_calls = 0
        self._is_tuple = False

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        """Forget every caption (after the tower's weights change)."""
        self._store.clear()

    @staticmethod
    def _keys(tokens: torch.Tensor) -> list[bytes]:
        rows = tokens.detach().to("cpu", torch.int64).contiguous().numpy()  # (B, L)
        return [row.tobytes() for row in rows]

    def __call__(self, tokens: torch.Tensor, embed: Callable[[torch.Tensor], Features]) -> Features:
        if tokens.dim() != 2:
            raise ValueError(f"the text feature cache takes token ids (B, L), got shape {tuple(tokens.shape)}")
        keys = self._keys(tokens)
        new_rows: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in self._store and key not in new_rows:
                new_rows[key] = i
        is_tuple = False
        if new_rows:
            index = list(new_rows.values())
            # (B', L): the batch itself when every row is new and distinct
            out = embed(tokens if len(index) == len(keys) else tokens[index])
            is_tuple = isinstance(out, tuple)
            parts = out if is_tuple else (out,)
            for j, key in enumerate(new_rows):
                self._store[key] = tuple(p[j].detach().clone() for p in parts)
            self.tower_calls += 1
        else:
            is_tuple = self._is_tuple
        self.misses += len(new_rows)
        self.hits += len(keys) - len(new_rows)
        self._is_tuple = is_tuple
        for key in keys:
            self._store.move_to_end(key)
        rows = [self._store[key] for key in keys]
        result = tuple(torch.stack([r[k] for r in rows]) for k in range(len(rows[0])))
        while len(self._store) > self.max_entries:  # after the batch is read: its own rows may be evicted
            self._store.popitem(last=False)
        return result if is_tuple else result[0]


def cached_embedding(cache: "TextFeatureCache | None", embedding: torch.nn.Module, tokens: torch.Tensor) -> Features:
    """``embedding(tokens)``, through ``cache`` when there is one, ``tokens`` are token ids (B, L) and ``embedding``
    is frozen (no parameter with ``requires_grad``: a tower that trains changes its features at every step, so
    it is never cached); class labels (B,) and trainable embeddings go straight to ``embedding``."""
    if cache is None or not torch.is_tensor(tokens) or tokens.dim() != 2 or any(
            p.requires_grad for p in embedding.parameters()):
        return embedding(tokens)
    return cache(tokens, embedding)
