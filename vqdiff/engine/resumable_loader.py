"""Resuming inside an epoch: a data loader that starts after the batches an interrupted run already used.

The checkpoint stores ``data_state = {epoch, batches_done}``; the solver re-seeds the epoch's sampler
exactly as the first run did, then iterates :func:`loader_skipping` ``(loader, batches_done)``, which
draws the same index order and drops its first ``batches_done x batch_size`` indices without loading them.
"""

from __future__ import annotations

from typing import Iterator

from torch.utils.data import DataLoader, Sampler

__all__ = ["SkipSampler", "loader_skipping"]


class SkipSampler(Sampler):
    """The indices of ``base`` without its first ``skip`` ones."""

    def __init__(self, base: Sampler, skip: int):
        self.base, self.skip = base, int(skip)

    def __iter__(self) -> Iterator[int]:
        it = iter(self.base)
        for _ in range(self.skip):
            next(it, None)
        yield from it

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)  # type: ignore[arg-type]


def loader_skipping(loader: DataLoader, batches: int) -> DataLoader:
    """A loader like ``loader`` (same dataset, batch size, workers, collate, generator) whose iteration
    starts after ``batches`` batches; ``loader`` itself when ``batches <= 0``."""
    if batches <= 0:
        return loader
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=SkipSampler(loader.sampler, batches * loader.batch_size),
        num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
        drop_last=loader.drop_last, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
    )
