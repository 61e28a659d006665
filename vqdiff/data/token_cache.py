"""Token cache: encode a data set once with a frozen image codec, then train on the stored tokens.

:func:`write_token_cache` (``token_cache_writer``) writes the folder (format: ``token_cache_format``);
:class:`TokenCacheDataset` reads it. Per image the cache keeps the centre crop, ``crops`` random train
crops and every caption; at each access the reader picks, from a generator seeded by ``(seed, epoch,
index)``, one random crop (train phase; the centre crop otherwise), one caption where the official reader
draws one (CUB-200) or the item gave a list of captions (``ShapesDataset(captions='partial')``), and drops
the caption/label for classifier-free guidance with ``drop_caption_rate`` (train phase). Call :func:`set_dataset_epoch` each epoch (the trainer does): the picks of an epoch are a
function of ``(seed, epoch, index)`` alone, so a resumed run reads the same items, in worker processes
too (the epoch lives in shared memory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from .image_groups import RANDOM_CAPTION
from .protocols import EpochAware
from .token_cache_format import (CENTRE_VIEW, FORMAT_VERSION, ITEMS_FILE, META_FILE, SAMPLES_FILE, TOKENS_FILE,
                                 config_sha256, state_dict_sha256)
from .token_cache_writer import leaf_datasets, write_token_cache

__all__ = ["write_token_cache", "TokenCacheDataset", "set_dataset_epoch", "config_sha256", "state_dict_sha256",
           "FORMAT_VERSION"]

TRAIN_PHASE = "train"


def set_dataset_epoch(dataset: Dataset, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on every data set inside ``dataset`` that has one (token caches, shard streams:
    :class:`~vqdiff.data.protocols.EpochAware`)."""
    for leaf in leaf_datasets(dataset):
        if isinstance(leaf, EpochAware):
            leaf.set_epoch(epoch)


class TokenCacheDataset(Dataset):
    """Items ``{'content_token': LongTensor (N,), 'text': str}`` and/or ``{..., 'label': int}`` from a cache.

    The models take ``batch['content_token']`` in place of ``batch['image']`` and skip the encoder.

    Args:
        cache_dir: a folder written by :func:`write_token_cache`.
        drop_caption_rate: in the ``train`` phase, probability of ``''`` (text) / ``null_label`` (label);
            None (default) takes the rate of the data sets the cache was built from, as they would have
            applied it.
        phase: ``'train'`` picks a random crop and applies the dropout; any other phase reads the centre
            crop (the official validation preprocessing) and never drops.
        null_label: the label of a dropped class; None takes the source data set's (else 1000).
        expect_codec_config: when given, its hash must equal the one stored (guards against a cache made
            with another codec).
        seed: seeds the picks; None takes ``torch.initial_seed()`` at construction (train.py: ``--seed`` + rank).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        drop_caption_rate: float | None = None,
        phase: str = TRAIN_PHASE,
        null_label: int | None = None,
        expect_codec_config: Mapping | None = None,
        seed: int | None = None,
    ):
        self.cache_dir = Path(cache_dir)
        if not self.cache_dir.is_dir():
            raise FileNotFoundError(f"token cache not found: '{self.cache_dir}' is not a directory")
        meta_path = self.cache_dir / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"token cache '{self.cache_dir}' is incomplete: '{meta_path}' is missing")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        version = self.meta.get("format_version")
        if version == 1:
            raise ValueError(f"token cache '{self.cache_dir}' has format_version 1: one row per item with one "
                             f"frozen crop, Gumbel draw and caption, and captions possibly dropped when it was "
                             f"built; rebuild it with scripts/build_token_cache.py (format {FORMAT_VERSION})")
        if version != FORMAT_VERSION:
            raise ValueError(f"token cache '{self.cache_dir}': format_version {version!r} is not the supported "
                             f"{FORMAT_VERSION}")
        if expect_codec_config is not None and config_sha256(expect_codec_config) != self.meta["codec_config_sha256"]:
            raise ValueError(f"token cache '{self.cache_dir}' was written with another codec config")
        rate = self.meta.get("drop_caption_rate", 0.0) if drop_caption_rate is None else drop_caption_rate
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"TokenCacheDataset: drop_caption_rate must be in [0, 1], got {rate}")
        self.drop_caption_rate = float(rate)
        self.phase = phase
        source_null = self.meta.get("null_label")
        self.null_label = int(null_label if null_label is not None else (source_null if source_null is not None
                                                                        else 1000))
        self.seed = int(torch.initial_seed() if seed is None else seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        for name in (ITEMS_FILE, TOKENS_FILE, SAMPLES_FILE):
            if not (self.cache_dir / name).is_file():
                raise FileNotFoundError(f"token cache '{self.cache_dir}': '{self.cache_dir / name}' is missing")
        self.items = json.loads((self.cache_dir / ITEMS_FILE).read_text(encoding="utf-8"))
        self._tokens: np.ndarray | None = None  # opened lazily, once per process (DataLoader workers)
        self._samples: np.ndarray | None = None
        self._check_shapes()

    def _check_shapes(self) -> None:
        n_img, n_views, n = int(self.meta["num_images"]), int(self.meta["num_views"]), int(self.meta["num_items"])
        n_tok = int(np.prod(self.meta["token_shape"]))
        if self.tokens.shape != (n_img, n_views, n_tok):
            raise ValueError(f"token cache '{self.cache_dir}': tokens.npy is {self.tokens.shape}, meta says "
                             f"{(n_img, n_views, n_tok)}")
        if self.samples.shape != (n, 2):
            raise ValueError(f"token cache '{self.cache_dir}': samples.npy is {self.samples.shape}, meta says {(n, 2)}")
        for key in ("captions", "labels"):
            if key in self.items and len(self.items[key]) != n_img:
                raise ValueError(f"token cache '{self.cache_dir}': {len(self.items[key])} {key!r} entries for "
                                 f"{n_img} images")

    @property
    def tokens(self) -> np.ndarray:
        """The memory-mapped ``(num_images, num_views, N)`` token array."""
        if self._tokens is None:
            self._tokens = np.load(self.cache_dir / TOKENS_FILE, mmap_mode="r")
        return self._tokens

    @property
    def samples(self) -> np.ndarray:
        """The memory-mapped ``(num_items, 2)`` ``(image, caption index)`` array."""
        if self._samples is None:
            self._samples = np.load(self.cache_dir / SAMPLES_FILE, mmap_mode="r")
        return self._samples

    @property
    def token_shape(self) -> tuple[int, int]:
        return tuple(self.meta["token_shape"])  # type: ignore[return-value]

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the picks are drawn for (shared with DataLoader workers, persistent ones included)."""
        self._epoch.fill_(int(epoch))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tokens"] = state["_samples"] = None  # reopen the maps in the worker rather than pickling them
        return state

    def __len__(self) -> int:
        return int(self.meta["num_items"])

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} cached items")
        index = index % n
        image, caption = (int(v) for v in self.samples[index])
        train = self.phase == TRAIN_PHASE
        n_views = self.tokens.shape[1]
        pick_view = train and n_views > 1 and self.meta["view_kinds"][0] == CENTRE_VIEW
        pick_caption = caption == RANDOM_CAPTION and "captions" in self.items
        may_drop = train and self.drop_caption_rate > 0
        u_view = u_caption = u_drop = 0.0
        if pick_view or pick_caption or may_drop:
            # three uniform draws in a fixed order (view, caption, dropout), from (seed, epoch, index) alone
            u_view, u_caption, u_drop = np.random.default_rng([self.seed, self.epoch, index]).random(3)
        view = 1 + int(u_view * (n_views - 1)) if pick_view else 0
        item: dict[str, Any] = {"content_token": torch.from_numpy(self.tokens[image, view].astype(np.int64))}
        drop = may_drop and u_drop < self.drop_caption_rate
        if "captions" in self.items:
            captions = self.items["captions"][image]
            if pick_caption:
                caption = int(u_caption * len(captions))
            item["text"] = "" if drop else captions[caption]
        if "labels" in self.items:
            item["label"] = self.null_label if drop else int(self.items["labels"][image])
        return item
