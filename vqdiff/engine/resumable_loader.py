"""Resuming inside an epoch: a data loader that starts after the batches an interrupted run already used.

The checkpoint stores ``data_state = {epoch, batches_done}``; the solver re-seeds the epoch's sampler
exactly as the first run did, then iterates :func:`loader_skipping` ``(loader, batches_done)``, which
draws the same index order and drops its first ``batches_done x batch_size`` indices without loading them.
A streamed data set (an IterableDataset with ``resume_after_batches``, e.g. the shard readers) has no
sampler: it is told to start after ``batches_done`` batches itself (see ``vqdiff.data.shard_stream``).
"""

from __future__ import annotations

from typing import Iterator

from torch.utils.data import DataLoader, IterableDataset, Sampler

from vqdiff.data.protocols import ResumableStream

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
    starts after ``batches`` batches; ``loader`` itself when ``batches <= 0``. A streamed data set is
    told to skip (or, with 0, not to skip) through its ``resume_after_batches`` (``data.protocols.ResumableStream``)
    and ``loader`` returned."""
    if isinstance(loader.dataset, IterableDataset):
        if isinstance(loader.dataset, ResumableStream):
            loader.dataset.resume_after_batches(max(0, int(batches)))
            return loader
        if batches > 0:
            raise ValueError(f"cannot resume inside an epoch of {type(loader.dataset).__name__}: it is an "
                             f"IterableDataset without resume_after_batches(batches)")
        return loader
    if batches <= 0:
        return loader
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=SkipSampler(loader.sampler, batches * loader.batch_size),
        num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
        drop_last=loader.drop_last, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
    )
