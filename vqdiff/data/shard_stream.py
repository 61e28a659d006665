"""Streaming ``.tar`` shards (WebDataset layout) for training: which shards each process and worker reads,
how many samples it yields per epoch, shuffling, resuming, and bad data. Shards are listed and read by
:mod:`vqdiff.data.shard_sources` (URLs opened by ``webdataset``, members grouped into samples by key, a
size cap per member, ``pipe:`` commands only from the config with ``allow_commands``).

The model of an epoch (the same for image shards and token shards):

- ``samples_per_epoch`` is for the whole job, as a map-style data set's length: with ``W`` ranks and a
  batch ``B`` per rank, each rank yields ``samples_per_epoch // (B x W)`` whole batches, so one epoch is
  that many iterations on every rank and the progress bar, ETA, epoch-based saving, validation and
  schedules work unchanged. A rank's batches are dealt to its ``K`` DataLoader workers as evenly as whole
  batches allow.
- Each (rank, worker) pair is one *stream*. Epoch ``e`` permutes the shard list with ``(seed, e)``, then
  rank ``r`` takes every ``W``-th shard from ``r`` (webdataset's ``split_by_node``) and worker ``k`` of it
  every ``K``-th of those (``split_by_worker``): one pass over the streams reads every shard once across
  the job. Fewer shards than ``W x K`` streams is an error naming both numbers.
- A stream reads its shards in order, passes their samples through a shuffle buffer seeded by
  ``(seed, e, stream)`` and stops at its quota. A stream whose shards run out first starts another pass
  over them (its shard order re-drawn, a new buffer), so every epoch has exactly its iterations and a
  pass yields each of its samples once; a quota reached first leaves the rest of the shards unread this
  epoch (each epoch draws a new permutation). With equal shards and ``samples_per_epoch`` equal to the
  data set's size (a multiple of ``B x W x K``), an epoch reads every sample exactly once.
- ``resampled=True``: each stream draws shards with replacement (from ``(seed, e, stream)``), endlessly,
  up to its quota; the shard count may then be below ``W x K``.

Resume: everything a stream yields in epoch ``e`` is a function of ``(seed, e, rank, worker)``. A run
resumed after ``n`` batches of an epoch (``resume_after_batches(n)``, called by the trainer through
:func:`vqdiff.engine.resumable_loader.loader_skipping`) recomputes how many of those batches each worker
had produced (the DataLoader takes batches from its workers in turn) and each worker drops that many
batches of its stream: the resumed epoch yields exactly the batches the interrupted one had not yet
yielded, each with the same samples. Skipped samples are decoded (so the same bad ones are skipped) but
draw no random numbers. With ``num_workers 0`` the order is the same too and, the trainer restoring the
global RNG states, the crops and caption dropout as well: the resumed run is bit for bit the uninterrupted
one. With ``num_workers > 1`` the workers' turns restart at worker 0, so the order of those batches can
differ, and each worker's RNG (seeded anew by the DataLoader) draws other crops.

Bad data is counted (``bad_samples``, per process: each worker keeps its own), skipped and logged with
its shard and key: an undecodable image (PIL's ``DecompressionBombError`` for an image over its pixel
limit included), a member over ``max_member_bytes``, a missing or empty caption, a sample without an image,
a tar that is empty or truncated (the rest of that shard is skipped). A pattern matching no file is an error
naming the pattern, and so are a pass over a stream's shards without any sample and more than
``MAX_BAD_IN_ROW`` bad samples in a row (data that is all bad would otherwise be read forever).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.filters import shuffle as wds_shuffle

from .shard_sources import (DEFAULT_MAX_MEMBER_BYTES, BadSample, ShardCommandError, check_members, iter_shard,
                            resolve_shards)

__all__ = ["BadSample", "ShardCommandError", "ShardStreamDataset", "StreamPlan", "resolve_shards",
           "batches_per_worker", "batches_taken", "iter_shard"]

logger = logging.getLogger(__name__)

MAX_BAD_IN_ROW = 10_000
"""More bad samples in a row than this is an error (a stream of only bad data would otherwise never end)."""


def batches_per_worker(batches: int, workers: int) -> list[int]:
    """``batches`` whole batches dealt to ``workers`` workers: the first ``batches % workers`` get one more."""
    workers = max(1, workers)
    return [batches // workers + (w < batches % workers) for w in range(workers)]


def batches_taken(done: int, counts: Sequence[int]) -> list[int]:
    """How many of the first ``done`` batches of a DataLoader epoch came from each worker, when worker ``w``
    yields ``counts[w]`` batches: the loader takes one batch from each worker in turn, passing over the
    workers that have none left."""
    taken = [0] * len(counts)
    remaining = min(int(done), int(sum(counts)))
    while remaining > 0:
        for w, c in enumerate(counts):
            if remaining > 0 and taken[w] < c:
                taken[w] += 1
                remaining -= 1
    return taken


@dataclass(frozen=True)
class StreamPlan:
    """Where a data set is read: ``world_size`` ranks of ``batch_size`` samples a batch, ``num_workers``
    DataLoader workers each (0 = in the main process, one stream)."""

    batch_size: int = 1
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.world_size <= 0 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")

    @property
    def workers(self) -> int:
        return max(1, self.num_workers)

    @property
    def streams(self) -> int:
        return self.world_size * self.workers


class ShardStreamDataset(IterableDataset):
    """Base of the shard readers: subclasses implement ``decode(sample)`` (raise :class:`BadSample` for
    unusable data; no randomness) and ``make_item(decoded)`` (crops, dropout). See the module doc for the epoch, split, resume and error model.

    Args:
        urls: a brace pattern, glob, list, or shard-list file (see :func:`resolve_shards`).
        samples_per_epoch: samples of one epoch for the whole job (all ranks together).
        shuffle_buffer: samples held by each stream's shuffle buffer (0 = no shuffling inside shards).
            Default 1000: a few shards of img2dataset (10 000 samples each) worth of mixing costs ~1000
            encoded images of memory per worker (tens of MB), as open_clip's default buffer.
        resampled: draw shards with replacement, endlessly (open_clip's ``--dataset-resampled``).
        seed: seeds the shard permutations, the shuffle buffers and resampling.
        allow_commands: take ``pipe:`` URLs written in ``urls`` itself (never from a shard-list file);
            off by default (see :mod:`vqdiff.data.shard_sources`).
        max_member_bytes: a tar member larger than this is not read; its sample is a bad sample.
    """

    def __init__(self, urls: str | Sequence[str], samples_per_epoch: int, shuffle_buffer: int = 1000,
                 resampled: bool = False, seed: int = 0, allow_commands: bool = False,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES):
        super().__init__()
        name = type(self).__name__
        if int(samples_per_epoch) <= 0:
            raise ValueError(f"{name}: samples_per_epoch must be positive, got {samples_per_epoch}")
        if int(shuffle_buffer) < 0:
            raise ValueError(f"{name}: shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if isinstance(max_member_bytes, bool) or int(max_member_bytes) <= 0:
            raise ValueError(f"{name}: max_member_bytes must be a positive number of bytes, got {max_member_bytes!r}")
        if not isinstance(allow_commands, bool):
            raise ValueError(f"{name}: allow_commands must be true or false, got {allow_commands!r}")
        self.urls = urls
        self.max_member_bytes = int(max_member_bytes)
        self.shards = resolve_shards(urls, allow_commands=allow_commands)
        self.samples_per_epoch = int(samples_per_epoch)
        self.shuffle_buffer = int(shuffle_buffer)
        self.resampled = bool(resampled)
        self.seed = int(seed)
        self.plan = StreamPlan()
        self.bad_samples = 0
        self.bad_keys: list[str] = []
        self._state = torch.zeros(2, dtype=torch.int64).share_memory_()  # [epoch, batches to skip]

    # ------------------------------------------------------------------ what the loader and trainer call
    def configure(self, plan: StreamPlan) -> None:
        """Set the batch size, rank, world size and workers (``build_dataloader`` does); checks that there
        are enough shards for the streams and samples for one batch per rank."""
        name = type(self).__name__
        if not self.resampled and len(self.shards) < plan.streams:
            raise ValueError(
                f"{name}: {len(self.shards)} shards for {plan.world_size} ranks x {plan.workers} workers = "
                f"{plan.streams} streams; each stream needs at least one shard. Use fewer workers "
                f"(dataloader.num_workers), more shards, or resampled: true")
        if self.samples_per_epoch < plan.batch_size * plan.world_size:
            raise ValueError(f"{name}: samples_per_epoch {self.samples_per_epoch} is less than one batch "
                             f"({plan.batch_size}) on each of {plan.world_size} ranks")
        self.plan = plan

    def set_epoch(self, epoch: int) -> None:
        """The epoch the shard permutation and shuffles are drawn for (shared with the workers)."""
        self._state[0] = int(epoch)

    def resume_after_batches(self, batches: int) -> None:
        """Make the next iteration start after the first ``batches`` batches of this rank's epoch (0: from
        its start). The trainer calls it at every epoch start."""
        self._state[1] = max(0, int(batches))

    @property
    def epoch(self) -> int:
        return int(self._state[0])

    def rank_batches(self) -> int:
        """Batches this rank yields per epoch."""
        return self.samples_per_epoch // (self.plan.batch_size * self.plan.world_size)

    def __len__(self) -> int:
        """Samples this rank yields per epoch (whole batches): the DataLoader's length is
        ``len(dataset) // batch_size`` iterations."""
        return self.rank_batches() * self.plan.batch_size

    # ------------------------------------------------------------------ to implement
    def decode(self, sample: dict) -> Any:  # pragma: no cover - abstract
        """Check and decode a raw sample without drawing random numbers; BadSample when unusable."""
        raise NotImplementedError

    def make_item(self, decoded: Any) -> dict:  # pragma: no cover - abstract
        """The item of a decoded sample (random crops and dropout happen here, never for skipped ones)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the stream
    def _rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *keys])

    def stream_shards(self, worker: int, workers: int) -> list[str]:
        """The shards of stream ``(rank, worker)`` in epoch ``self.epoch`` (non-resampled)."""
        order = [self.shards[i] for i in self._rng().permutation(len(self.shards))]
        return order[self.plan.rank::self.plan.world_size][worker::workers]

    def _passes(self, stream: int, worker: int, workers: int) -> Iterator[list[str]]:
        """The stream's shards, pass after pass: its share of the epoch's permutation, then the same shards
        re-ordered for each further pass; resampled: one endless pass of shards drawn with replacement."""
        if self.resampled:
            yield self._drawn_shards(self._rng(stream, 1))
            return
        mine = self.stream_shards(worker, workers)
        if not mine:
            raise ValueError(f"{type(self).__name__}: stream {stream} has no shard ({len(self.shards)} shards "
                             f"for {self.plan.world_size} ranks x {workers} workers)")
        yield mine
        for p in range(1, 2**62):  # further passes when the quota outlasts the shards
            yield [mine[i] for i in self._rng(stream, 2, p).permutation(len(mine))]

    def log_tar_error(self, url: str, last_key: Any, exn: Exception) -> None:
        self.bad_samples += 1
        where = f"after key '{last_key}'" if last_key is not None else "before its first sample"
        self.bad_keys.append(f"{url}:{last_key}")
        logger.warning("%s: skipping the rest of shard '%s' (%s): %s: %s (%d bad so far in this process)",
                       type(self).__name__, url, where, type(exn).__name__, exn, self.bad_samples)

    def _drawn_shards(self, rng: np.random.Generator) -> Iterator[str]:
        while True:
            yield self.shards[int(rng.integers(len(self.shards)))]

    def _raw_samples(self, passes: Iterator[Any], stream: int) -> Iterator[dict]:
        """The samples of each pass in turn, each pass through its own shuffle buffer (so that a pass
        yields each of its samples once)."""
        for p, shards in enumerate(passes):
            samples = self._pass_samples(shards)
            if self.shuffle_buffer > 1:
                seed = int(self._rng(stream, 3, p).integers(2**62))
                samples = wds_shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=random.Random(seed))(samples)
            count = 0
            for sample in samples:
                count += 1
                yield sample
            if count == 0:
                raise ValueError(f"{type(self).__name__}: no sample in a whole pass over the shards "
                                 f"{list(shards)[:4]}{' ...' if len(shards) > 4 else ''} of {self.urls!r}")

    def _pass_samples(self, shards: Any) -> Iterator[dict]:
        empty_in_row = 0
        for url in shards:
            count = 0
            for sample in iter_shard(url, self.log_tar_error, self.max_member_bytes):
                count += 1
                yield sample
            if count == 0:
                logger.warning("%s: shard '%s' has no samples", type(self).__name__, url)
                empty_in_row += 1
                if empty_in_row >= 10 * len(self.shards):  # resampling from shards that are all empty
                    raise ValueError(f"{type(self).__name__}: {empty_in_row} shards in a row without a sample "
                                     f"in {self.urls!r}")
            else:
                empty_in_row = 0

    def _decoded(self, raw: Iterator[dict]) -> Iterator[Any]:
        """The decoded good samples of ``raw``; bad ones counted, logged and skipped."""
        bad_in_row = 0
        for sample in raw:
            try:
                check_members(sample)
                decoded = self.decode(sample)
            except BadSample as err:
                bad_in_row += 1
                if bad_in_row > MAX_BAD_IN_ROW:
                    raise ValueError(f"{type(self).__name__}: more than {MAX_BAD_IN_ROW} bad samples in a row "
                                     f"(the last: '{sample.get('__key__')}' of '{sample.get('__url__')}': {err}); "
                                     f"check the data and the reader's options") from err
                self.bad_samples += 1
                self.bad_keys.append(f"{sample.get('__url__')}:{sample.get('__key__')}")
                logger.warning("%s: skipping sample '%s' of shard '%s': %s (%d bad so far in this process)",
                               type(self).__name__, sample.get("__key__"), sample.get("__url__"), err,
                               self.bad_samples)
                continue
            bad_in_row = 0
            yield decoded

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = self.plan.rank * workers + worker
        counts = batches_per_worker(self.rank_batches(), workers)
        skip = batches_taken(int(self._state[1]), counts)[worker]
        quota = (counts[worker] - skip) * self.plan.batch_size
        if quota <= 0:
            return
        raw = self._raw_samples(self._passes(stream, worker, workers), stream)
        items = self._decoded(raw)
        for _ in range(skip * self.plan.batch_size):  # decoded (to skip the same bad samples), no item made
            next(items)
        for _ in range(quota):
            yield self.make_item(next(items))

