"""On-disk format of a token cache (version 2), shared by its writer and its reader.

A cache folder holds:

- ``tokens.npy``: ``(num_images, num_views, N)`` token ids, ``uint16`` when the codec has at most 65 536
  codes, else ``int32``; read memory-mapped. View 0 is the centre crop (the official ``val``
  preprocessing), views ``1 .. num_views-1`` random crops of the official ``train`` preprocessing; a data
  set without :class:`~vqdiff.data.image_groups.ImageGroups` gets one view per item (``view_kinds ['item']``).
- ``samples.npy``: ``(num_items, 2)`` int64 rows ``(image, caption index)``, the samples in the official
  iteration order (COCO: one per caption annotation; CUB-200, ImageNet: one per image); caption index -1
  draws one of the image's captions at each access.
- ``items.json``: ``{"captions": [[str, ...] per image]}`` and/or ``{"labels": [int per image]}``: every
  condition, never dropped (dropout for classifier-free guidance happens when the cache is read).
- ``meta.json`` (written last: a folder without it is incomplete): ``format_version``, ``num_items``,
  ``num_images``, ``num_views``, ``view_kinds``, ``token_shape``, ``num_tokens``, ``dtype``, ``encoding``
  (``sample``: Gumbel codes drawn as in official training, ``argmax``, ``deterministic`` for nearest-code
  quantizers, ``unknown``), ``seed`` (crops and draws), ``drop_caption_rate`` and ``null_label`` of the
  source data sets (applied by the reader), ``bad_images``, ``codec_class``, ``codec_config_sha256``,
  ``codec_weights_sha256``, ``dataset_class``.

Version 1 caches (one row per item: one frozen crop, draw and caption, and captions dropped at build
time) are refused with a message saying to rebuild them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Mapping

import numpy as np
import torch

__all__ = ["FORMAT_VERSION", "TOKENS_FILE", "SAMPLES_FILE", "ITEMS_FILE", "META_FILE", "CENTRE_VIEW",
           "RANDOM_CROP_VIEW", "ITEM_VIEW", "config_sha256", "state_dict_sha256", "token_dtype"]

FORMAT_VERSION = 2
TOKENS_FILE, SAMPLES_FILE, ITEMS_FILE, META_FILE = "tokens.npy", "samples.npy", "items.json", "meta.json"
CENTRE_VIEW, RANDOM_CROP_VIEW, ITEM_VIEW = "centre", "random_crop", "item"


def config_sha256(config: Mapping | None) -> str | None:
    """SHA-256 of a config node written as sorted-key JSON (``None`` for ``None``)."""
    if config is None:
        return None
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over the names and bytes of every tensor of ``module.state_dict()``."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode("utf-8"))
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def token_dtype(num_tokens: int) -> np.dtype:
    """``uint16`` when every id fits, else ``int32``."""
    return np.dtype(np.uint16) if num_tokens <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)
