"""``write_token_cache``: encode a data set once with a frozen image codec (format: ``token_cache_format``).

Two ways to see a data set:

- **By image** (COCO, CUB-200, ImageNet readers with a ``DalleTransformerPreprocessor``: they offer
  ``image_groups()``): each distinct image is loaded once and encoded in ``1 + crops`` views, its centre
  crop (official ``val`` preprocessing) and ``crops`` random crops of the official ``train``
  preprocessing (drawn from ``numpy.random.default_rng([seed, image])``); every caption (or the label) is
  kept, and the samples follow the official iteration (COCO: one per annotation).
- **By item** (any other data set, e.g. the synthetic shapes): one view per item, as ``__getitem__``
  returns it, with its caption and/or label. An item whose ``'text'`` is a list of captions (several
  captions of one image, e.g. ``ShapesDataset(captions='partial')``) keeps them all, and the reader draws
  one per ``(seed, epoch, index)``, as for CUB-200.

Caption/label dropout of the source data sets (``drop_caption_rate``) is switched off while encoding and
recorded in the meta; the reader applies it, per access.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from .build import collate_batch
from .image_files import BadImageError, load_rgb
from .image_groups import RANDOM_CAPTION, ImageGroups
from .preprocess import DalleTransformerPreprocessor
from .protocols import CaptionDropout, GroupedImages, HasPreprocessor, NullLabel
from .token_cache_format import (CENTRE_VIEW, FORMAT_VERSION, ITEM_VIEW, ITEMS_FILE, META_FILE, RANDOM_CROP_VIEW,
                                 SAMPLES_FILE, TOKENS_FILE, config_sha256, state_dict_sha256, token_dtype)

__all__ = ["write_token_cache", "leaf_datasets"]

logger = logging.getLogger(__name__)


def leaf_datasets(dataset: Dataset) -> list[Dataset]:
    """The data sets inside (nested) ``ConcatDataset`` s, in order; ``[dataset]`` otherwise."""
    if isinstance(dataset, ConcatDataset):
        return [leaf for part in dataset.datasets for leaf in leaf_datasets(part)]
    return [dataset]


@dataclass
class SourceDropout:
    """The classifier-free-guidance dropout the source data sets would apply (the reader applies it)."""

    drop_caption_rate: float
    null_label: int | None


@contextlib.contextmanager
def _caption_drop_off(leaves: list[Dataset]) -> Iterator[SourceDropout]:
    """Set every leaf's ``drop_caption_rate`` to 0 for the duration; yields what it was (and the null label):
    the hooks of ``protocols.CaptionDropout`` and ``protocols.NullLabel``."""
    saved = [(d, d.drop_caption_rate) for d in leaves
             if isinstance(d, CaptionDropout) and float(d.drop_caption_rate or 0.0) > 0]
    rates = sorted({float(r) for _, r in saved})
    if len(rates) > 1:
        logger.warning("token cache: the data sets drop captions at different rates %s; the cache records %s",
                       rates, rates[-1])
    nulls = [int(d.null_label) for d in leaves if isinstance(d, NullLabel) and d.null_label is not None]
    try:
        for d, _ in saved:
            d.drop_caption_rate = 0.0
        yield SourceDropout(rates[-1] if rates else 0.0, nulls[0] if nulls else None)
    finally:
        for d, rate in saved:
            d.drop_caption_rate = rate


def _groupable(dataset: Dataset) -> bool:
    """Whether the writer encodes ``dataset`` image by image: it shows its images (``protocols.GroupedImages``)
    and crops them with a ``DalleTransformerPreprocessor`` (``protocols.HasPreprocessor``)."""
    return isinstance(dataset, GroupedImages) and isinstance(dataset, HasPreprocessor) and isinstance(
        dataset.preprocessor, DalleTransformerPreprocessor)


class _ImageViews(Dataset):
    """Row ``r`` = one distinct image of the leaves: ``{'views': (1 + crops, 3, S, S), 'ok': bool}``."""

    def __init__(self, rows: list[tuple[Dataset, int]], crops: int, seed: int):
        self.rows, self.crops, self.seed = rows, int(crops), int(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, row: int) -> dict:
        leaf, index = self.rows[row]
        size = leaf.preprocessor.size
        try:
            img = load_rgb(leaf.image_path(index))
        except BadImageError as err:
            if getattr(leaf, "on_bad_image", "skip") == "raise":
                raise
            logger.warning("token cache: skipping unreadable image: %s", err)
            return {"views": torch.zeros(1 + self.crops, 3, size, size), "ok": False}
        centre = DalleTransformerPreprocessor(size, "val")(img)
        train, rng = DalleTransformerPreprocessor(size, "train"), np.random.default_rng([self.seed, row])
        views = [centre] + [train(img, generator=rng) for _ in range(self.crops)]
        return {"views": torch.stack(views), "ok": True}


class _ItemViews(Dataset):
    """Item ``i`` of any data set as one view: ``{'views': (1, 3, H, W), 'ok': True, 'text'?, 'label'?}``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        if "image" not in item:
            raise KeyError(f"write_token_cache: items of {type(self.dataset).__name__} have no 'image'")
        out = {"views": item["image"][None], "ok": True}
        for key in ("text", "label"):
            if key in item:
                out[key] = item[key]
        return out


def _item_captions(text: Any, index: int) -> list[str]:
    """An item's ``'text'`` as its list of captions: a str is one caption; a list / tuple of str (several
    captions of one image, e.g. ``ShapesDataset(captions='partial')``) is kept whole."""
    if not isinstance(text, (list, tuple)):
        return [str(text)]
    if not text or not all(isinstance(t, str) for t in text):
        raise ValueError(f"write_token_cache: item {index}'s 'text' must be a str or a non-empty list of str, "
                         f"got {text!r}")
    return list(text)


def _merge_groups(leaves: list[Dataset]) -> tuple[list[tuple[Dataset, int]], ImageGroups]:
    """The leaves' image groups as one, image and sample indices offset leaf by leaf."""
    rows: list[tuple[Dataset, int]] = []
    captions: list[list[str]] = []
    labels: list[int] = []
    samples: list[tuple[int, int]] = []
    parts = [leaf.image_groups() for leaf in leaves]
    has_text = [p.captions is not None for p in parts]
    has_label = [p.labels is not None for p in parts]
    if len(set(has_text)) > 1 or len(set(has_label)) > 1:
        raise ValueError("write_token_cache: the concatenated data sets do not all have the same conditions "
                         f"({[type(d).__name__ for d in leaves]})")
    for leaf, part in zip(leaves, parts):
        offset = len(rows)
        rows.extend((leaf, i) for i in part.representative)
        captions.extend(part.captions or [])
        labels.extend(part.labels or [])
        samples.extend((offset + image, cap) for image, cap in part.samples)
    return rows, ImageGroups([i for _, i in rows], captions if has_text[0] else None,
                             labels if has_label[0] else None, samples)


def _encoding_name(codec: Any, for_training: bool, encode_kwargs: Mapping[str, Any]) -> str:
    if not hasattr(codec, "samples_codes"):
        return "unknown"
    if not codec.samples_codes:
        return "deterministic"
    if encode_kwargs.get("sample") is not None:
        return "sample" if encode_kwargs["sample"] else "argmax"
    return codec.train_encode_mode if for_training else codec.encode_mode


@torch.no_grad()
def write_token_cache(
    dataset: Dataset,
    codec: Any,
    out_dir: str | Path,
    batch_size: int = 8,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    codec_config: Mapping | None = None,
    overwrite: bool = False,
    progress: bool = True,
    encode_kwargs: Mapping[str, Any] | None = None,
    crops: int = 4,
    for_training: bool = True,
    seed: int = 0,
) -> Path:
    """Encode ``dataset`` with ``codec.get_tokens`` into the cache folder ``out_dir`` (see the module doc).

    Args:
        dataset: items with ``'image'`` (float32 ``(3, H, W)`` in [0, 255]) and optionally ``'text'`` /
            ``'label'``; or readers offering ``image_groups()`` (encoded by image, with crops).
        codec: an image codec (``get_tokens``, ``get_number_of_tokens()``, ``token_shape``); put in eval mode.
        out_dir: the cache folder (created; an existing complete cache needs ``overwrite=True``).
        batch_size: images per encoder call (each with all its views).
        codec_config: the codec's config node, hashed into the meta so a cache can be matched to its codec.
        encode_kwargs: extra keyword arguments of ``get_tokens`` (e.g. ``sample``, ``generator``).
        crops: random train crops per image besides the centre crop (by-image data sets only).
        for_training: encode as for training (``get_tokens(..., for_training=True)``: Gumbel codecs sample
            as the official training did) rather than with the codec's default (argmax) encoding.
        seed: seeds the crops and, for sampled codes, a generator on ``device``.

    Returns: ``out_dir``.
    """
    out_dir = Path(out_dir)
    if (out_dir / META_FILE).exists() and not overwrite:
        raise FileExistsError(f"token cache '{out_dir}' already exists; pass overwrite=True to replace it")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if crops < 0:
        raise ValueError(f"crops must be >= 0, got {crops}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("write_token_cache: the data set is empty")
    num_tokens = int(codec.get_number_of_tokens())
    token_shape = [int(s) for s in codec.token_shape]
    n_tok = token_shape[0] * token_shape[1]
    dtype = token_dtype(num_tokens)
    device = torch.device(device)
    if isinstance(codec, torch.nn.Module):
        codec.to(device).eval()
    kw = dict(encode_kwargs or {})
    encoding = _encoding_name(codec, for_training, kw)
    if for_training and hasattr(codec, "train_encode_mode"):  # codecs with encode modes (taming wrappers)
        kw["for_training"] = True
    if getattr(codec, "samples_codes", False) and "generator" not in kw:
        kw["generator"] = torch.Generator(device).manual_seed(int(seed))

    leaves = leaf_datasets(dataset)
    by_image = all(_groupable(d) for d in leaves)
    with _caption_drop_off(leaves) as source:
        if by_image:
            rows, groups = _merge_groups(leaves)
            views_ds: Dataset = _ImageViews(rows, crops, seed)
            view_kinds = [CENTRE_VIEW] + [RANDOM_CROP_VIEW] * crops
        else:
            views_ds, groups, view_kinds = _ItemViews(dataset), None, [ITEM_VIEW]
            if crops:
                logger.info("token cache: %s is stored item by item (no image_groups() or no "
                            "DalleTransformerPreprocessor): one view per item, crops=%d not used",
                            type(dataset).__name__, crops)
        n_rows, n_views = len(views_ds), len(view_kinds)  # type: ignore[arg-type]
        tmp_dir = out_dir.with_name(out_dir.name + ".partial")
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
        tmp_dir.mkdir(parents=True)
        tokens = np.lib.format.open_memmap(tmp_dir / TOKENS_FILE, mode="w+", dtype=dtype,
                                           shape=(n_rows, n_views, n_tok))
        texts: list[list[str]] = []  # item path: every caption of each item
        drawn: list[bool] = []  # the item gave a list of captions: one is drawn at each access
        labels: list[int] = []
        bad_rows: list[int] = []
        loader = DataLoader(views_ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=collate_batch)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_rows, desc=f"token cache {out_dir.name}", unit="img")
        row = 0
        for batch in loader:
            views = batch["views"]
            b = views.shape[0]
            images = views.flatten(0, 1).to(device=device, dtype=torch.float32)
            tok = codec.get_tokens(images, **kw)["token"]
            if tok.shape != (images.shape[0], n_tok):
                raise ValueError(f"codec returned tokens of shape {tuple(tok.shape)}, expected "
                                 f"({images.shape[0]}, {n_tok}) for token_shape {token_shape}")
            tok = tok.cpu()
            if int(tok.min()) < 0 or int(tok.max()) >= num_tokens:
                raise ValueError(f"codec returned token ids outside 0..{num_tokens - 1}")
            tokens[row:row + b] = tok.reshape(b, n_views, n_tok).numpy().astype(dtype)
            bad_rows.extend(row + i for i, ok in enumerate(batch["ok"].tolist()) if not ok)
            for t in batch.get("text", []):
                texts.append(_item_captions(t, len(texts)))
                drawn.append(isinstance(t, (list, tuple)))
            labels.extend(int(v) for v in batch.get("label", []))
            row += b
            if bar is not None:
                bar.update(b)
        if bar is not None:
            bar.close()
    tokens.flush()
    del tokens
    if groups is None:
        groups = ImageGroups(list(range(n_rows)), texts or None, labels or None,
                             [(i, 0 if texts and not drawn[i] else RANDOM_CAPTION) for i in range(n_rows)])
    bad = set(bad_rows)
    samples = np.asarray([s for s in groups.samples if s[0] not in bad], dtype=np.int64).reshape(-1, 2)
    if len(samples) == 0:
        raise ValueError("write_token_cache: none of the images could be read")
    np.save(tmp_dir / SAMPLES_FILE, samples)
    items: dict[str, list] = {}
    if groups.captions is not None:
        items["captions"] = groups.captions
    if groups.labels is not None:
        items["labels"] = groups.labels
    (tmp_dir / ITEMS_FILE).write_text(json.dumps(items), encoding="utf-8")
    meta = {
        "format_version": FORMAT_VERSION,
        "num_items": int(len(samples)),
        "num_images": n_rows,
        "num_views": n_views,
        "view_kinds": view_kinds,
        "token_shape": token_shape,
        "num_tokens": num_tokens,
        "dtype": dtype.name,
        "encoding": encoding,
        "seed": int(seed),
        "drop_caption_rate": source.drop_caption_rate,
        "null_label": source.null_label,
        "bad_images": [str(rows[r][0].image_path(rows[r][1])) if by_image else str(r) for r in sorted(bad)],
        "codec_class": type(codec).__name__,
        "codec_config_sha256": config_sha256(codec_config),
        "codec_weights_sha256": state_dict_sha256(codec) if isinstance(codec, torch.nn.Module) else None,
        "dataset_class": type(dataset).__name__,
    }
    (tmp_dir / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp_dir, out_dir)
    return out_dir
