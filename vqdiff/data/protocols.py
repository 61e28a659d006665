"""What the trainer and the token cache expect of a data set, written down (``typing.Protocol``).

A reader is a ``torch.utils.data.Dataset`` (or ``IterableDataset``) whose items follow the convention of
``docs/data.md``; every hook below is optional, and the code that uses one checks for it with ``isinstance``
against these protocols (they are ``runtime_checkable``: the check is that the attribute is there). A new
reader implements the ones it needs:

==========================  ====================================================  ===========================
hook                        used by                                               implemented by
==========================  ====================================================  ===========================
``set_epoch(epoch)``        ``token_cache.set_dataset_epoch`` (each epoch),       ``TokenCacheDataset``,
                            the solver (on the loader's sampler, by name)         ``ShardStreamDataset``
``resume_after_batches(n)`` ``engine.resumable_loader.loader_skipping`` (resume   ``ShardStreamDataset``
                            inside an epoch of a streamed data set)
``image_groups()``          ``token_cache_writer`` (encode each image once, keep  COCO, CUB-200, ImageNet,
                            every caption)                                        the folder readers
``preprocessor``            ``token_cache_writer`` / ``token_shards`` (its crop   ``ImageFileDataset``,
                            size; a ``DalleTransformerPreprocessor`` to cache)    ``WebShardsImageText``
``drop_caption_rate``       ``token_cache_writer`` (turned off while encoding,    the caption and label readers
                            recorded for the cache to apply)
``null_label``              ``token_cache_writer`` (the label of a dropped class  ``ImageClassFolder``,
                            condition)                                            ``ImageNetDataset``
==========================  ====================================================  ===========================
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

from .image_groups import ImageGroups

__all__ = ["EpochAware", "ResumableStream", "GroupedImages", "HasPreprocessor", "CaptionDropout", "NullLabel"]


@runtime_checkable
class EpochAware(Protocol):
    """Reshuffles (or redraws its per-epoch choices) for each epoch; called before the epoch's first batch."""

    def set_epoch(self, epoch: int) -> None: ...


@runtime_checkable
class ResumableStream(Protocol):
    """A streamed (iterable) data set that can start its next iteration after ``batches`` batches of the current
    epoch, so a resumed run sees the batches it would have seen (0: from the epoch's start)."""

    def resume_after_batches(self, batches: int) -> None: ...


@runtime_checkable
class GroupedImages(Protocol):
    """Shows the token-cache writer its distinct images and every condition of each (:class:`ImageGroups`)."""

    def image_groups(self) -> ImageGroups: ...


@runtime_checkable
class HasPreprocessor(Protocol):
    """Its images pass through ``preprocessor`` (None: kept at their own size); the token cache needs a
    ``DalleTransformerPreprocessor`` (its ``size``) to encode them."""

    preprocessor: Optional[Any]


@runtime_checkable
class CaptionDropout(Protocol):
    """Drops the condition (caption to ``''``, label to ``null_label``) with this probability in the train phase
    (learnable classifier-free guidance, arXiv 2205.16007 Sec. 3.2)."""

    drop_caption_rate: float


@runtime_checkable
class NullLabel(Protocol):
    """The class label that stands for "no class" (the dropped condition of a class-conditional reader)."""

    null_label: Optional[int]
