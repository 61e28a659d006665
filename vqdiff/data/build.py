"""``build_dataloader``: data sets, samplers and loaders from the ``dataloader`` section of a config.

Config keys (official): ``data_root`` (when given, it overrides the ``data_root`` of every data set whose
class takes one), ``batch_size`` (per process), ``num_workers``, ``train_datasets`` and
``validation_datasets`` (lists of ``{target, params}``; more than one is concatenated).

Sampling: the train loader always uses a :class:`~torch.utils.data.DistributedSampler` (with one replica
when not distributed), so the order of epoch ``e`` is a function of ``(seed, e)`` alone: call
``train_loader.sampler.set_epoch(e)`` at the start of each epoch, and a resumed run sees the same batches
as an uninterrupted one. Under ``torch.distributed`` rank ``r`` of ``W`` takes every ``W``-th index of
that same permutation, so the union of the ranks' batches is one global batch.

Streamed data sets (an :class:`~torch.utils.data.IterableDataset` such as the WebDataset shard readers)
get no sampler: they split their shards by rank and worker themselves, after ``configure(StreamPlan)``
tells them the batch size, rank, world size and workers; their length is the samples this rank yields per
epoch, so ``train_iterations`` is the same as for a map-style set of ``samples_per_epoch`` items.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, IterableDataset, SequentialSampler

from .. import distributed as dist_utils
from ..utils.config import ConfigError, instantiate_from_config, resolve_target
from ..utils.seed import worker_init_fn
from .shard_stream import StreamPlan

__all__ = ["build_dataloader", "build_datasets", "collate_batch"]


def collate_batch(items: Sequence[Mapping[str, Any]]) -> dict:
    """Stack tensors (``(B, ...)``), turn numbers into tensors, keep strings (and anything else) as lists."""
    if not items:
        raise ValueError("collate_batch: empty batch")
    keys = list(items[0].keys())
    out: dict[str, Any] = {}
    for key in keys:
        if any(key not in it for it in items):
            raise KeyError(f"collate_batch: key {key!r} is missing from some items of the batch")
        values = [it[key] for it in items]
        first = values[0]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values, 0)
        elif isinstance(first, bool):
            out[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, int):
            out[key] = torch.tensor(values, dtype=torch.long)
        elif isinstance(first, float):
            out[key] = torch.tensor(values, dtype=torch.float32)
        else:
            out[key] = list(values)
    return out


def _accepts(cls: Any, name: str) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_datasets(nodes: Sequence[Mapping] | None, data_root: str | None, key_path: str) -> Dataset | None:
    """Instantiate the list ``nodes``; more than one gives a ConcatDataset; empty/None gives None."""
    if not nodes:
        return None
    if not isinstance(nodes, (list, tuple)):
        raise ConfigError(f"'{key_path}' must be a list of dataset configs, got {type(nodes).__name__}")
    datasets = []
    for i, node in enumerate(nodes):
        node = copy.deepcopy(dict(node))
        node_path = f"{key_path}[{i}]"
        if "target" not in node:
            raise ConfigError(f"'{node_path}': a dataset config needs a 'target'")
        params = dict(node.get("params") or {})
        if data_root is not None and _accepts(resolve_target(node["target"], node_path), "data_root"):
            params["data_root"] = data_root
        node["params"] = params
        datasets.append(instantiate_from_config(node, key_path=node_path))
    if len(datasets) > 1 and any(isinstance(d, IterableDataset) for d in datasets):
        raise ConfigError(f"'{key_path}': a streamed data set ({', '.join(type(d).__name__ for d in datasets)}) "
                          f"must be the only entry; list all of its shards in its urls")
    return datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)


def _stream_loader(dataset: IterableDataset, plan: StreamPlan, drop_last: bool, **loader_kw: Any) -> DataLoader:
    """A loader over a streamed data set: no sampler; the data set splits itself by rank and worker."""
    if not callable(getattr(dataset, "configure", None)):
        raise ConfigError(f"{type(dataset).__name__} is an IterableDataset without configure(StreamPlan): "
                          f"it cannot split itself by rank and worker")
    dataset.configure(plan)
    return DataLoader(dataset, drop_last=drop_last, **loader_kw)


def build_dataloader(
    config: Mapping,
    args: Any = None,
    *,
    distributed: bool | None = None,
    seed: int = 0,
    epoch_generator: torch.Generator | None = None,
    pin_memory: bool | None = None,
) -> dict:
    """Loaders for ``config['dataloader']``.

    Args:
        config: the whole training config (or a mapping with a ``dataloader`` key).
        args: the training arguments (unused here; accepted for the official call signature).
        distributed: use ``torch.distributed``'s rank/world size; ``None`` = whether a group is initialised.
        seed: seed of the train shuffle (and, through torch, of the workers' RNGs).
        epoch_generator: the train loader's ``torch.Generator`` (it draws the workers' base seeds each
            epoch); default: one seeded with ``seed``. The shuffle order itself comes from the sampler.
        pin_memory: default: when CUDA is available.

    Returns:
        ``{'train_loader', 'validation_loader', 'train_iterations', 'validation_iterations'}``; iterations
        are batches per epoch for this process (``-1`` and ``None`` loader when a list is empty).
    """
    if "dataloader" not in config:
        raise ConfigError("config has no 'dataloader' section")
    dl = config["dataloader"]
    for key in ("batch_size", "train_datasets"):
        if key not in dl:
            raise ConfigError(f"'dataloader.{key}' is required")
    batch_size = int(dl["batch_size"])
    if batch_size <= 0:
        raise ConfigError(f"'dataloader.batch_size' must be positive, got {batch_size}")
    num_workers = int(dl.get("num_workers", 0))
    data_root = dl.get("data_root")
    train_set = build_datasets(dl.get("train_datasets"), data_root, "dataloader.train_datasets")
    val_set = build_datasets(dl.get("validation_datasets"), data_root, "dataloader.validation_datasets")
    if train_set is None:
        raise ConfigError("'dataloader.train_datasets' is empty")

    if distributed is None:
        distributed = dist_utils.is_dist_initialized()
    world, rank = (dist_utils.get_world_size(), dist_utils.get_rank()) if distributed else (1, 0)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    loader_kw: dict[str, Any] = dict(
        batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate_batch,
        worker_init_fn=worker_init_fn if num_workers > 0 else None, persistent_workers=num_workers > 0,
    )
    plan = StreamPlan(batch_size=batch_size, rank=rank, world_size=world, num_workers=num_workers)
    generator = epoch_generator if epoch_generator is not None else torch.Generator().manual_seed(int(seed))
    if isinstance(train_set, IterableDataset):
        train_loader = _stream_loader(train_set, plan, True, generator=generator, **loader_kw)
    else:
        if len(train_set) < batch_size * world:
            raise ValueError(f"the train data set has {len(train_set)} items, fewer than one global batch "
                             f"({batch_size} x {world} processes); lower dataloader.batch_size")
        train_sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=int(seed),
                                           drop_last=True)
        train_loader = DataLoader(train_set, sampler=train_sampler, drop_last=True, generator=generator,
                                  **loader_kw)

    val_loader = None
    if isinstance(val_set, IterableDataset):
        val_loader = _stream_loader(val_set, plan, False, **loader_kw)
    elif val_set is not None:
        val_sampler = (DistributedSampler(val_set, num_replicas=world, rank=rank, shuffle=False)
                       if distributed else SequentialSampler(val_set))
        val_loader = DataLoader(val_set, sampler=val_sampler, drop_last=False, **loader_kw)
    return {
        "train_loader": train_loader,
        "validation_loader": val_loader,
        "train_iterations": len(train_loader),
        "validation_iterations": len(val_loader) if val_loader is not None else -1,
    }
