"""Codebook health: how much of an image codec's codebook a data set (or a training run) really uses.

From the per-code counts ``c_k`` (k = 0 .. K-1, total ``n``) with frequencies ``p_k = c_k / n``:

* entropy ``H = -sum_k p_k log p_k`` (nats; ``0 log 0 = 0``) and perplexity ``exp(H)``, the effective
  number of codes (K when uniform, 1 when one code is used);
* dead codes: never used (count < ``min_count``); usage = used / K;
* top codes: the most frequent codes with their counts and shares.

The counts also give the remapping file of the official ``quantize_number`` scheme
(``help_folder/statistics/taming_vqvae_*.pt``): :func:`build_mapping_from_counts` (it reuses
``codecs.image.token_mapping.build_token_mapping``). For a codec that already remaps, counting uses its
full codebook indices (:func:`raw_codes`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch

from vqdiff.modeling.codecs.image.token_mapping import build_token_mapping, count_tokens, invert_token_mapping

__all__ = [
    "usage_statistics",
    "raw_codes",
    "count_codec_tokens",
    "build_mapping_from_counts",
    "save_mapping",
    "check_mapping_round_trip",
    "codebook_size",
    "CodebookUsageHook",
]


def usage_statistics(counts: torch.Tensor, top: int = 10, min_count: int = 1) -> dict:
    """Statistics of per-code counts ``(K,)``: ``num_codes``, ``total``, ``used``, ``dead`` (count),
    ``dead_codes`` (list), ``usage`` (used / K), ``entropy`` (nats), ``entropy_bits``, ``perplexity``,
    ``max_perplexity`` (K), ``top_codes`` [(code, count, share)] most frequent first (ties: lower code)."""
    counts = torch.as_tensor(counts).reshape(-1).long()
    if counts.numel() == 0:
        raise ValueError("counts is empty: the codebook needs at least one code")
    if bool((counts < 0).any()):
        raise ValueError("counts must be non-negative")
    K, total = counts.numel(), int(counts.sum())
    used_mask = counts >= int(min_count)
    if total > 0:
        p = counts.double() / total
        nz = p[p > 0]
        entropy = float(-(nz * nz.log()).sum())
    else:
        entropy = 0.0
    order = sorted(range(K), key=lambda k: (-int(counts[k]), k))[: max(0, int(top))]
    top_codes = [(k, int(counts[k]), (int(counts[k]) / total) if total else 0.0) for k in order if counts[k] > 0]
    used = int(used_mask.sum())
    return {
        "num_codes": K,
        "total": total,
        "used": used,
        "dead": K - used,
        "dead_codes": (~used_mask).nonzero().flatten().tolist(),
        "usage": used / K,
        "entropy": entropy,
        "entropy_bits": entropy / math.log(2),
        "perplexity": math.exp(entropy) if total else 0.0,
        "max_perplexity": float(K),
        "top_codes": top_codes,
    }


def raw_codes(codec, images: torch.Tensor) -> torch.Tensor:
    """Full-codebook indices ``(B, N)`` of ``images`` (B, 3, H, W) in [0, 255], before any remapping.

    For the taming codecs (``enc``, ``preprocess``, ``quantize_number``) remapping is bypassed; other
    codecs' ``get_tokens`` is used as is."""
    if getattr(codec, "quantize_number", 0) and hasattr(codec, "enc") and hasattr(codec, "preprocess"):
        with torch.no_grad():
            return codec.enc(codec.preprocess(images))
    return codec.get_tokens(images)["token"]


def codebook_size(codec, raw: bool = True) -> int:
    """Codes counted for ``codec``: ``num_tokens`` (the full codebook) when ``raw``, else K."""
    if raw and getattr(codec, "num_tokens", None):
        return int(codec.num_tokens)
    return int(codec.get_number_of_tokens())


@torch.no_grad()
def count_codec_tokens(
    codec,
    images: Iterable[Any],
    *,
    raw: bool = True,
    key: str = "image",
    max_images: Optional[int] = None,
) -> torch.Tensor:
    """Per-code counts ``(num_codes,)`` long of a codec over ``images``: an iterable of (B, 3, H, W)
    tensors, of batches (dicts with ``key``), or a data set of items with ``key``/``(3, H, W)`` tensors
    (a ``Dataset`` is read in batches of 32). ``raw`` counts full-codebook indices (for building a remapping)."""
    num = codebook_size(codec, raw)
    counts = torch.zeros(num, dtype=torch.long)
    seen = 0
    limit = float("inf") if max_images is None else int(max_images)
    for batch in _batches(images, key):
        if seen >= limit:
            break
        if seen + batch.shape[0] > limit:
            batch = batch[: int(limit - seen)]
        codes = raw_codes(codec, batch) if raw else codec.get_tokens(batch)["token"]
        counts += count_tokens(codes.cpu(), num)
        seen += batch.shape[0]
    return counts


def _batches(images: Any, key: str, batch_size: int = 32):
    if torch.is_tensor(images):
        yield images if images.dim() == 4 else images.unsqueeze(0)
        return
    if hasattr(images, "__getitem__") and hasattr(images, "__len__") and not isinstance(images, (list, tuple)):
        n = len(images)
        for s in range(0, n, batch_size):
            items = [images[i] for i in range(s, min(n, s + batch_size))]
            yield torch.stack([it[key] if isinstance(it, dict) else it for it in items]).float()
        return
    for item in images:
        if isinstance(item, dict):
            if key not in item:
                raise KeyError(f"a batch has no '{key}' entry; keys: {', '.join(map(str, item))}")
            item = item[key]
        if isinstance(item, (list, tuple)):
            item = torch.stack(list(item))
        yield (item if item.dim() == 4 else item.unsqueeze(0)).float()


def build_mapping_from_counts(counts: torch.Tensor, min_count: int = 1, round_trip: bool = True) -> tuple[torch.Tensor, int]:
    """``(full_to_quantize (num_tokens,), quantize_number)`` keeping the codes used >= ``min_count``
    times: consecutive ids in codebook order, unused codes -> 0 (the official file format).

    The official decoder maps compact id i back to the FIRST codebook index mapped to i, so when code 0
    is unused, compact 0 would decode to the dead code 0 instead of the first used code. With
    ``round_trip`` (default) code 0 is then kept as an extra compact id 0, so that every used code
    survives ``full -> compact -> full``; ``round_trip=False`` gives the plain official construction.
    """
    counts = torch.as_tensor(counts).long().clone()
    if round_trip and counts.numel() and bool((counts >= min_count).any()) and int(counts[0]) < min_count:
        counts[0] = int(min_count)
    return build_token_mapping(counts, min_count)


def save_mapping(path: Union[str, Path], mapping: torch.Tensor) -> Path:
    """Save a mapping for a codec's ``mapping_path`` (a LongTensor file); folders created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(mapping.long().cpu(), path)
    return path


class CodebookUsageHook:
    """Accumulates token usage during training or evaluation.

    ``hook.update(tokens)`` with any LongTensor of codes in ``0 .. num_codes-1`` (e.g. the batch's
    ``content_token``; [MASK] or other ids >= num_codes are ignored and counted in ``ignored``);
    ``hook.report()`` -> :func:`usage_statistics` of everything seen since the last ``reset()``;
    ``hook.build_mapping(min_count)`` -> the remapping of the used codes.
    """

    def __init__(self, num_codes: int, top: int = 10, min_count: int = 1):
        if int(num_codes) < 1:
            raise ValueError(f"num_codes must be >= 1, got {num_codes}")
        self.num_codes = int(num_codes)
        self.top = int(top)
        self.min_count = int(min_count)
        self.counts = torch.zeros(self.num_codes, dtype=torch.long)
        self.ignored = 0
        self.updates = 0

    def reset(self) -> None:
        self.counts.zero_()
        self.ignored = 0
        self.updates = 0

    @torch.no_grad()
    def update(self, tokens: torch.Tensor) -> None:
        t = torch.as_tensor(tokens).detach().reshape(-1).long().cpu()
        ok = (t >= 0) & (t < self.num_codes)
        self.ignored += int((~ok).sum())
        self.counts += torch.bincount(t[ok], minlength=self.num_codes)
        self.updates += 1

    def report(self) -> dict:
        out = usage_statistics(self.counts, top=self.top, min_count=self.min_count)
        out["ignored"] = self.ignored
        out["updates"] = self.updates
        return out

    def summary(self) -> str:
        """One log line: used/K, perplexity, dead codes."""
        r = self.report()
        return (f"codebook: {r['used']}/{r['num_codes']} codes used ({100 * r['usage']:.1f}%), perplexity "
                f"{r['perplexity']:.1f}, {r['dead']} dead, {r['total']} tokens")

    def build_mapping(self, min_count: Optional[int] = None) -> tuple[torch.Tensor, int]:
        return build_mapping_from_counts(self.counts, self.min_count if min_count is None else min_count)

    def state_dict(self) -> dict:
        return {"counts": self.counts.clone(), "ignored": self.ignored, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        counts = torch.as_tensor(state["counts"]).long()
        if counts.numel() != self.num_codes:
            raise ValueError(f"state has {counts.numel()} counts but the hook has {self.num_codes} codes")
        self.counts = counts.clone()
        self.ignored = int(state.get("ignored", 0))
        self.updates = int(state.get("updates", 0))


def check_mapping_round_trip(mapping: torch.Tensor, quantize_number: int, codes: torch.Tensor) -> bool:
    """True when every code of ``codes`` (full indices, all mapped) survives full -> compact -> full."""
    inverse = invert_token_mapping(mapping, quantize_number)
    return bool(torch.equal(inverse[mapping[codes]], codes))
