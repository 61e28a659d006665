"""Codebook remapping ("quantize_number"): a full codebook of ``num_tokens`` codes shrunk to the
``quantize_number`` codes a data set uses, as the official ``help_folder/statistics/taming_vqvae_*.pt``.

A mapping is a LongTensor ``full_to_quantize (num_tokens,)`` giving every codebook index its compact index
in ``0 .. quantize_number-1``; the official maps number the used codes consecutively in increasing
codebook order and send every unused code to 0. Decoding uses the inverse ``quantize_to_full
(quantize_number,)``: for each compact index, the first codebook index mapped to it.

The tensors are plain tensors, not buffers: they are not in any checkpoint (the official code keeps
them outside the state dict too).
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["load_token_mapping", "invert_token_mapping", "build_token_mapping", "count_tokens"]


def load_token_mapping(path: str | Path, num_tokens: int | None = None,
                       quantize_number: int | None = None) -> torch.Tensor:
    """Read and check a mapping file; returns ``full_to_quantize`` LongTensor ``(num_tokens,)``.

    Raises:
        FileNotFoundError: naming the path and working directory.
        ValueError: wrong length, dtype or values outside ``0 .. quantize_number-1``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"token mapping not found: '{path}' (resolved from the working directory '{Path.cwd()}' to "
            f"'{path.resolve()}'); set the codec's mapping_path, or quantize_number: 0 for no remapping"
        )
    mapping = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(mapping, torch.Tensor) or mapping.dim() != 1 or mapping.dtype.is_floating_point:
        raise ValueError(f"{path}: a token mapping must be a 1-D integer tensor, got "
                         f"{type(mapping).__name__} {getattr(mapping, 'shape', '')} {getattr(mapping, 'dtype', '')}")
    mapping = mapping.long()
    if num_tokens is not None and mapping.numel() != num_tokens:
        raise ValueError(f"{path}: mapping has {mapping.numel()} entries but num_tokens is {num_tokens}")
    if quantize_number is not None and (int(mapping.min()) < 0 or int(mapping.max()) >= quantize_number):
        raise ValueError(f"{path}: mapping values span {int(mapping.min())}..{int(mapping.max())}, "
                         f"outside 0..{quantize_number - 1} (quantize_number {quantize_number})")
    return mapping


def invert_token_mapping(full_to_quantize: torch.Tensor, quantize_number: int) -> torch.Tensor:
    """``quantize_to_full[i]`` = the first (smallest) codebook index ``j`` with ``full_to_quantize[j] == i``.

    Raises ValueError if some compact index has no codebook index (it could not be decoded).
    """
    k = int(quantize_number)
    n = full_to_quantize.numel()
    big = torch.full((k,), n, dtype=torch.long)
    order = torch.arange(n, dtype=torch.long)
    inverse = big.scatter_reduce(0, full_to_quantize.long(), order, reduce="amin", include_self=True)
    orphans = (inverse == n).nonzero().flatten()
    if orphans.numel():
        raise ValueError(f"token mapping is not onto 0..{k - 1}: compact indices "
                         f"{orphans[:10].tolist()} have no codebook index")
    return inverse


def build_token_mapping(counts: torch.Tensor, min_count: int = 1) -> tuple[torch.Tensor, int]:
    """Mapping from per-code usage ``counts (num_tokens,)``: codes used at least ``min_count`` times get
    consecutive compact ids in increasing codebook order; the others map to 0 (the official convention).

    Returns ``(full_to_quantize (num_tokens,) long, quantize_number)``.
    """
    used = counts >= min_count
    quantize_number = int(used.sum())
    if quantize_number == 0:
        raise ValueError(f"no code is used at least {min_count} times; cannot build a mapping")
    mapping = torch.zeros(counts.numel(), dtype=torch.long)
    mapping[used] = torch.arange(quantize_number, dtype=torch.long)
    return mapping, quantize_number


def count_tokens(tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Histogram of codebook indices ``(…) -> (num_tokens,)`` long."""
    return torch.bincount(tokens.reshape(-1).long(), minlength=num_tokens)[:num_tokens]
