"""Captioned images from WebDataset ``.tar`` shards in the ``img2dataset`` layout (CC3M, CC12M, LAION).

Each shard holds samples ``<key>.jpg`` (or ``.jpeg``, ``.png``, ``.webp``), ``<key>.txt`` (the caption)
and optionally ``<key>.json`` (img2dataset's metadata, not read); keys have no dots. Reading, splitting
by rank and worker, ``samples_per_epoch``, shuffling, resuming and bad data: see
:mod:`vqdiff.data.shard_stream`.

Items: ``{'image': float32 (3, S, S) in [0, 255], 'text': str}`` as the COCO / CUB-200 readers (the
caption lower-cased and stripped; ``''`` with probability ``drop_caption_rate`` for learnable
classifier-free guidance, IVQD Sec. 3.2, process-global NumPy RNG).
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .image_files import IMAGE_EXTENSIONS, build_preprocessor
from .shard_sources import DEFAULT_MAX_MEMBER_BYTES
from .shard_stream import BadSample, ShardStreamDataset

__all__ = ["WebShardsImageText", "SHARD_IMAGE_KEYS", "decode_image", "sample_caption"]

SHARD_IMAGE_KEYS = tuple(ext[1:] for ext in IMAGE_EXTENSIONS)
"""A shard sample's image keys: the one extension list (``image_files.IMAGE_EXTENSIONS``) without the dot, in its
order (the first present is the image)."""


def decode_image(sample: Mapping[str, Any]) -> Image.Image:
    """The sample's image (its first ``SHARD_IMAGE_KEYS`` entry), fully decoded as RGB; BadSample when
    it has none or it cannot be decoded."""
    ext = next((e for e in SHARD_IMAGE_KEYS if e in sample), None)
    if ext is None:
        raise BadSample(f"no image (.{'/.'.join(SHARD_IMAGE_KEYS)}); it has {sorted(k for k in sample if not k.startswith('__'))}")
    try:
        with Image.open(io.BytesIO(sample[ext])) as im:
            im.load()
            return im.convert("RGB")
    except Exception as err:  # PIL raises many types for broken files; DecompressionBombError is none of OSError/ValueError
        raise BadSample(f"cannot decode its .{ext} image: {type(err).__name__}: {err}") from err


def sample_caption(sample: Mapping[str, Any], caption_key: str = "txt") -> str:
    """The sample's caption (UTF-8, stripped); BadSample when it is missing, empty or not UTF-8."""
    if caption_key not in sample:
        raise BadSample(f"missing caption (.{caption_key})")
    try:
        text = sample[caption_key].decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise BadSample(f"caption .{caption_key} is not UTF-8: {err}") from err
    if not text:
        raise BadSample(f"empty caption (.{caption_key})")
    return text


class WebShardsImageText(ShardStreamDataset):
    """Text-to-image items streamed from ``img2dataset`` shards.

    Args:
        urls: brace pattern, glob, list or shard-list file (local paths, or URLs webdataset opens).
        samples_per_epoch: samples of one epoch for the whole job (e.g. 3_318_333 for CC3M's train split
            as img2dataset downloads it, fewer when some URLs failed: use its stats' ``successes``).
        im_preprocessor_config: the preprocessor node (``DalleTransformerPreprocessor``); None keeps the size.
        drop_caption_rate: probability of ``''`` as the caption (learnable classifier-free guidance).
        caption_key: the extension of the caption file (``txt``).
        shuffle_buffer, resampled, seed, allow_commands, max_member_bytes: see
            :class:`~vqdiff.data.shard_stream.ShardStreamDataset`.
    """

    def __init__(self, urls: str | Sequence[str], samples_per_epoch: int,
                 im_preprocessor_config: Mapping | None = None, drop_caption_rate: float = 0.0,
                 caption_key: str = "txt", shuffle_buffer: int = 1000, resampled: bool = False, seed: int = 0,
                 allow_commands: bool = False, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES):
        super().__init__(urls, samples_per_epoch, shuffle_buffer=shuffle_buffer, resampled=resampled, seed=seed,
                         allow_commands=allow_commands, max_member_bytes=max_member_bytes)
        if not 0.0 <= float(drop_caption_rate) <= 1.0:
            raise ValueError(f"WebShardsImageText: drop_caption_rate must be in [0, 1], got {drop_caption_rate}")
        self.drop_caption_rate = float(drop_caption_rate)
        self.caption_key = str(caption_key)
        self.preprocessor = build_preprocessor(im_preprocessor_config)

    def decode(self, sample: dict) -> tuple[Image.Image, str]:
        text = sample_caption(sample, self.caption_key)  # the cheap check first
        return decode_image(sample), text

    def make_item(self, decoded: tuple[Image.Image, str]) -> dict:
        img, text = decoded
        if self.preprocessor is None:
            image = torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32))
        else:
            image = self.preprocessor(img)
        if self.drop_caption_rate > 0 and np.random.random() < self.drop_caption_rate:
            return {"image": image, "text": ""}
        return {"image": image, "text": text.lower()}
