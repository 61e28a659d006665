"""Token cache: encode a data set once with a frozen image codec, then train on the stored tokens.

Layout of a cache folder:

- ``tokens.npy``: ``(num_items, N)`` token ids, ``uint16`` when the codec has at most 65 536 codes, else
  ``int32``; read memory-mapped, so a cache larger than RAM costs nothing to open.
- ``items.json``: ``{"text": [...]}`` and/or ``{"label": [...]}``, one entry per row (the condition the
  data set returned when the row was encoded).
- ``meta.json``: ``format_version``, ``num_items``, ``token_shape``, ``num_tokens`` (K), ``dtype``,
  ``codec_class``, ``codec_config_sha256`` (of the codec config node, when given), ``codec_weights_sha256``
  (of the codec's state dict), ``dataset_class``. Written last: a folder without it is incomplete.

Preprocessing randomness is frozen into the cache: each row holds the tokens of one crop (the one drawn
while encoding), so build caches from a deterministic (``phase: val``) preprocessor or accept one fixed
crop per image. Stochastic codecs (Gumbel with ``sample_tokens``) likewise store one draw.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .build import collate_batch

__all__ = ["write_token_cache", "TokenCacheDataset", "config_sha256", "state_dict_sha256", "FORMAT_VERSION"]

FORMAT_VERSION = 1
TOKENS_FILE, ITEMS_FILE, META_FILE = "tokens.npy", "items.json", "meta.json"


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


def _token_dtype(num_tokens: int) -> np.dtype:
    return np.dtype(np.uint16) if num_tokens <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


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
) -> Path:
    """Encode every item of ``dataset`` (in index order) with ``codec.get_tokens`` into ``out_dir``.

    Args:
        dataset: items with ``'image'`` (float32 ``(3, H, W)`` in [0, 255]) and optionally ``'text'`` /
            ``'label'``.
        codec: an image codec (``get_tokens(images) -> {'token': (B, N)}``, ``get_number_of_tokens()``,
            ``token_shape``); put in eval mode here.
        out_dir: the cache folder (created; an existing complete cache needs ``overwrite=True``).
        codec_config: the codec's config node, hashed into the meta so a cache can be matched to its codec.
        encode_kwargs: extra keyword arguments of ``get_tokens`` (e.g. a ``generator``).

    Returns: ``out_dir``.
    """
    out_dir = Path(out_dir)
    if (out_dir / META_FILE).exists() and not overwrite:
        raise FileExistsError(f"token cache '{out_dir}' already exists; pass overwrite=True to replace it")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n_items = len(dataset)
    if n_items == 0:
        raise ValueError("write_token_cache: the data set is empty")
    num_tokens = int(codec.get_number_of_tokens())
    token_shape = [int(s) for s in codec.token_shape]
    n_tok = token_shape[0] * token_shape[1]
    dtype = _token_dtype(num_tokens)
    device = torch.device(device)
    if isinstance(codec, torch.nn.Module):
        codec.to(device).eval()

    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir(parents=True)
    tokens = np.lib.format.open_memmap(tmp_dir / TOKENS_FILE, mode="w+", dtype=dtype, shape=(n_items, n_tok))
    texts: list[str] = []
    labels: list[int] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_batch)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_items, desc=f"token cache {out_dir.name}", unit="img")
    row = 0
    for batch in loader:
        if "image" not in batch:
            raise KeyError(f"write_token_cache: items of {type(dataset).__name__} have no 'image'")
        images = batch["image"].to(device=device, dtype=torch.float32)
        tok = codec.get_tokens(images, **dict(encode_kwargs or {}))["token"]
        if tok.shape != (images.shape[0], n_tok):
            raise ValueError(f"codec returned tokens of shape {tuple(tok.shape)}, expected "
                             f"({images.shape[0]}, {n_tok}) for token_shape {token_shape}")
        tok = tok.cpu()
        if int(tok.min()) < 0 or int(tok.max()) >= num_tokens:
            raise ValueError(f"codec returned token ids outside 0..{num_tokens - 1}")
        tokens[row:row + tok.shape[0]] = tok.numpy().astype(dtype)
        if "text" in batch:
            texts.extend(str(t) for t in batch["text"])
        if "label" in batch:
            labels.extend(int(v) for v in batch["label"])
        row += tok.shape[0]
        if bar is not None:
            bar.update(tok.shape[0])
    if bar is not None:
        bar.close()
    tokens.flush()
    del tokens
    items: dict[str, list] = {}
    if texts:
        items["text"] = texts
    if labels:
        items["label"] = labels
    (tmp_dir / ITEMS_FILE).write_text(json.dumps(items), encoding="utf-8")
    meta = {
        "format_version": FORMAT_VERSION,
        "num_items": n_items,
        "token_shape": token_shape,
        "num_tokens": num_tokens,
        "dtype": dtype.name,
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


class TokenCacheDataset(Dataset):
    """Items ``{'content_token': LongTensor (N,), 'text': str}`` or ``{..., 'label': int}`` from a cache.

    The models take ``batch['content_token']`` in place of ``batch['image']`` and skip the encoder.

    Args:
        cache_dir: a folder written by :func:`write_token_cache`.
        drop_caption_rate: in the ``train`` phase, probability of ``''`` (text) / ``null_label`` (label).
        phase: ``'train'`` enables the caption drop.
        expect_codec_config: when given, its hash must equal the one stored (guards against a cache made
            with another codec).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        drop_caption_rate: float = 0.0,
        phase: str = "train",
        null_label: int = 1000,
        expect_codec_config: Mapping | None = None,
    ):
        self.cache_dir = Path(cache_dir)
        if not self.cache_dir.is_dir():
            raise FileNotFoundError(f"token cache not found: '{self.cache_dir}' is not a directory")
        meta_path = self.cache_dir / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"token cache '{self.cache_dir}' is incomplete: '{meta_path}' is missing")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"token cache '{self.cache_dir}': format_version {self.meta.get('format_version')} "
                             f"is not the supported {FORMAT_VERSION}")
        if expect_codec_config is not None and config_sha256(expect_codec_config) != self.meta["codec_config_sha256"]:
            raise ValueError(f"token cache '{self.cache_dir}' was written with another codec config")
        if not 0.0 <= float(drop_caption_rate) <= 1.0:
            raise ValueError(f"TokenCacheDataset: drop_caption_rate must be in [0, 1], got {drop_caption_rate}")
        self.drop_caption_rate = float(drop_caption_rate)
        self.phase = phase
        self.null_label = int(null_label)
        items_path = self.cache_dir / ITEMS_FILE
        if not items_path.is_file():
            raise FileNotFoundError(f"token cache '{self.cache_dir}': '{items_path}' is missing")
        self.items = json.loads(items_path.read_text(encoding="utf-8"))
        self.tokens_path = self.cache_dir / TOKENS_FILE
        if not self.tokens_path.is_file():
            raise FileNotFoundError(f"token cache '{self.cache_dir}': '{self.tokens_path}' is missing")
        self._tokens: np.ndarray | None = None  # opened lazily, once per process (DataLoader workers)
        n = int(self.meta["num_items"])
        if self.tokens.shape[0] != n:
            raise ValueError(f"token cache '{self.cache_dir}': {self.tokens.shape[0]} rows, meta says {n}")
        for key, values in self.items.items():
            if len(values) != n:
                raise ValueError(f"token cache '{self.cache_dir}': {len(values)} {key!r} entries for {n} rows")

    @property
    def tokens(self) -> np.ndarray:
        """The memory-mapped ``(num_items, N)`` token array."""
        if self._tokens is None:
            self._tokens = np.load(self.tokens_path, mmap_mode="r")
        return self._tokens

    @property
    def token_shape(self) -> tuple[int, int]:
        return tuple(self.meta["token_shape"])  # type: ignore[return-value]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tokens"] = None  # reopen the map in the worker rather than pickling it
        return state

    def __len__(self) -> int:
        return int(self.meta["num_items"])

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} cached items")
        index = index % n
        item: dict[str, Any] = {"content_token": torch.from_numpy(self.tokens[index].astype(np.int64))}
        drop = self.phase == "train" and self.drop_caption_rate > 0 and np.random.random() < self.drop_caption_rate
        if "text" in self.items:
            item["text"] = "" if drop else self.items["text"][index]
        if "label" in self.items:
            item["label"] = self.null_label if drop else int(self.items["label"][index])
        return item
