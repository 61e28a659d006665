"""Token shards: a shard data set encoded once with a frozen image codec, stored as shards again.

:func:`write_token_shards` reads each input shard of a :class:`~vqdiff.data.web_shards.WebShardsImageText`
and writes one output shard of the same name (two inputs of one file name are an error naming both): per sample ``<key>.tokens.npy`` (an ``(1 + crops, N)``
array, view 0 the centre crop of the official ``val`` preprocessing, views ``1..`` random crops of the
official ``train`` preprocessing drawn from ``numpy.random.default_rng([seed, shard, sample])``; ``uint16``
when the codec has at most 65 536 codes) and ``<key>.txt`` (the caption as read). One output shard per
input shard lets the job run in parallel (``jobs`` / ``job_index``: job ``j`` writes shards ``j, j + jobs,
...``) and resume per shard: a finished shard (renamed from ``.tar.partial`` when complete) is kept.
``token_meta.json`` beside the shards records the codec (class, config and weight hashes), token shape,
views, encoding, seed and the source's ``drop_caption_rate``; a second job with another codec is refused.

:class:`TokenShardsDataset` streams them like the image shards (same split by rank and worker,
``samples_per_epoch``, shuffling, resume and bad-data handling, :mod:`vqdiff.data.shard_stream`); items
are ``{'content_token': LongTensor (N,), 'text': str}`` (token values outside the recorded codebook size
are a bad sample): a random crop view in the train phase (the
centre view otherwise), the caption dropped to ``''`` with ``drop_caption_rate``, both from the worker's
global NumPy RNG.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .preprocess import DalleTransformerPreprocessor
from .shard_sources import DEFAULT_MAX_MEMBER_BYTES, check_members
from .shard_stream import BadSample, ShardStreamDataset, iter_shard
from .token_cache_format import config_sha256, state_dict_sha256, token_dtype
from .web_shards import WebShardsImageText, decode_image, sample_caption

__all__ = ["write_token_shards", "TokenShardsDataset", "TOKEN_META_FILE", "output_names"]

logger = logging.getLogger(__name__)

TOKEN_META_FILE = "token_meta.json"
TOKENS_KEY = "tokens.npy"


def _encode(codec: Any, views: list[torch.Tensor], device: torch.device, kw: Mapping) -> np.ndarray:
    images = torch.stack(views).to(device=device, dtype=torch.float32)
    return codec.get_tokens(images, **kw)["token"].cpu().numpy()


def _check_meta(path: Path, meta: dict) -> None:
    if not path.is_file():
        path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    for key in ("codec_config_sha256", "codec_weights_sha256", "token_shape", "num_views", "seed", "encoding"):
        if old.get(key) != meta.get(key):
            raise ValueError(f"token shards in '{path.parent}' were written with another {key} ({old.get(key)!r}, "
                             f"now {meta.get(key)!r}); write to a new folder or pass overwrite=True")


def output_names(shards: Sequence[str], out_dir: Path) -> list[Path]:
    """The token shard written for each input shard: ``out_dir / <input file name>``. Two inputs with one
    file name (``a/00000.tar``, ``b/00000.tar``) would write one output: a ValueError naming both."""
    seen: dict[str, str] = {}
    targets = []
    for url in shards:
        name = Path(url.split("::")[-1]).name
        if name in seen:
            raise ValueError(f"write_token_shards: input shards '{seen[name]}' and '{url}' have the same file name "
                             f"'{name}' and would write one token shard '{out_dir / name}'; rename one of them "
                             f"or encode the folders into separate output folders")
        seen[name] = url
        targets.append(out_dir / name)
    return targets


@torch.no_grad()
def write_token_shards(dataset: WebShardsImageText, codec: Any, out_dir: str | Path, crops: int = 4,
                       batch_size: int = 16, device: torch.device | str = "cpu", codec_config: Mapping | None = None,
                       for_training: bool = True, seed: int = 0, jobs: int = 1, job_index: int = 0,
                       overwrite: bool = False) -> dict:
    """Encode the shards of ``dataset`` into ``out_dir`` (see the module doc).

    Args:
        dataset: the image shards; its ``im_preprocessor_config`` must be a ``DalleTransformerPreprocessor``
            (its size is the crop size).
        codec: the image codec (``get_tokens``, ``get_number_of_tokens()``, ``token_shape``).
        crops: random train crops per sample besides the centre crop.
        batch_size: samples per encoder call (each with all its views).
        for_training: encode as training steps do (Gumbel codecs sample codes); else the argmax.
        jobs, job_index: this job writes input shards ``job_index, job_index + jobs, ...``.
        overwrite: rewrite finished shards (and a meta of another codec).

    Returns: ``{'written': [...], 'kept': [...], 'samples': int, 'bad_samples': int}`` for this job.
    """
    if not isinstance(dataset.preprocessor, DalleTransformerPreprocessor):
        raise ValueError("write_token_shards: the shard data set needs im_preprocessor_config = a "
                         "DalleTransformerPreprocessor (its size is the crop size)")
    if not 0 <= job_index < jobs:
        raise ValueError(f"write_token_shards: job_index {job_index} is not in 0..{jobs - 1}")
    if crops < 0 or batch_size <= 0:
        raise ValueError(f"write_token_shards: crops must be >= 0 and batch_size > 0, got {crops}, {batch_size}")
    out_dir = Path(out_dir)
    targets = output_names(dataset.shards, out_dir)  # a collision is refused before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    size = dataset.preprocessor.size
    centre, train = DalleTransformerPreprocessor(size, "val"), DalleTransformerPreprocessor(size, "train")
    num_tokens = int(codec.get_number_of_tokens())
    dtype = token_dtype(num_tokens)
    device = torch.device(device)
    if isinstance(codec, torch.nn.Module):
        codec.to(device).eval()
    kw: dict[str, Any] = {}
    if for_training and hasattr(codec, "train_encode_mode"):
        kw["for_training"] = True
    if getattr(codec, "samples_codes", False):
        kw["generator"] = torch.Generator(device).manual_seed(int(seed) * 1000 + job_index)
    meta = {"token_shape": [int(s) for s in codec.token_shape], "num_tokens": num_tokens, "dtype": dtype.name,
            "num_views": 1 + crops, "view_kinds": ["centre"] + ["random_crop"] * crops, "seed": int(seed),
            "encoding": "train" if for_training else "eval", "drop_caption_rate": dataset.drop_caption_rate,
            "codec_class": type(codec).__name__, "codec_config_sha256": config_sha256(codec_config),
            "codec_weights_sha256": state_dict_sha256(codec) if isinstance(codec, torch.nn.Module) else None,
            "source": str(dataset.urls)}
    meta_path = out_dir / TOKEN_META_FILE
    if overwrite and meta_path.is_file():
        meta_path.unlink()
    _check_meta(meta_path, meta)

    from webdataset import TarWriter

    report = {"written": [], "kept": [], "samples": 0, "bad_samples": 0}
    for s, (url, target) in enumerate(zip(dataset.shards, targets)):
        if s % jobs != job_index:
            continue
        if target.is_file() and not overwrite:
            report["kept"].append(str(target))
            continue
        partial = target.with_name(target.name + ".partial")
        pending: list[tuple[str, str, list[torch.Tensor]]] = []
        with TarWriter(str(partial)) as sink:
            def flush() -> None:
                if not pending:
                    return
                tokens = _encode(codec, [v for _, _, views in pending for v in views], device, kw)
                tokens = tokens.reshape(len(pending), 1 + crops, -1).astype(dtype)
                for (key, text, _), tok in zip(pending, tokens):
                    buf = io.BytesIO()
                    np.save(buf, tok)
                    sink.write({"__key__": key, TOKENS_KEY: buf.getvalue(), "txt": text})
                report["samples"] += len(pending)
                pending.clear()

            for i, sample in enumerate(iter_shard(url, dataset.log_tar_error, dataset.max_member_bytes)):
                try:
                    check_members(sample)
                    text, img = sample_caption(sample, dataset.caption_key), decode_image(sample)
                except BadSample as err:
                    report["bad_samples"] += 1
                    logger.warning("token shards: skipping sample '%s' of shard '%s': %s", sample.get("__key__"),
                                   url, err)
                    continue
                rng = np.random.default_rng([int(seed), s, i])
                views = [centre(img)] + [train(img, generator=rng) for _ in range(crops)]
                pending.append((sample["__key__"], text, views))
                if len(pending) >= batch_size:
                    flush()
            flush()
        os.replace(partial, target)
        report["written"].append(str(target))
    return report


class TokenShardsDataset(ShardStreamDataset):
    """Stream token shards written by :func:`write_token_shards`.

    Args:
        urls: the token shards (pattern, glob, list or shard-list file).
        samples_per_epoch: samples of one epoch for the whole job.
        drop_caption_rate: in the train phase, probability of ``''``; None takes the source's (recorded).
        phase: ``'train'`` draws a random crop view and drops captions; other phases read the centre view.
        meta_path: ``token_meta.json``; default: beside the first shard.
        expect_codec_config: when given, its hash must equal the recorded one.
        shuffle_buffer, resampled, seed, allow_commands, max_member_bytes: see
            :class:`~vqdiff.data.shard_stream.ShardStreamDataset`.
    """

    def __init__(self, urls: str | Sequence[str], samples_per_epoch: int, drop_caption_rate: float | None = None,
                 phase: str = "train", meta_path: str | None = None, expect_codec_config: Mapping | None = None,
                 shuffle_buffer: int = 1000, resampled: bool = False, seed: int = 0, allow_commands: bool = False,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES):
        super().__init__(urls, samples_per_epoch, shuffle_buffer=shuffle_buffer, resampled=resampled, seed=seed,
                         allow_commands=allow_commands, max_member_bytes=max_member_bytes)
        path = Path(meta_path) if meta_path is not None else Path(self.shards[0]).parent / TOKEN_META_FILE
        if not path.is_file():
            raise FileNotFoundError(f"TokenShardsDataset: '{path}' not found (written by write_token_shards "
                                    f"beside the shards; pass meta_path for shards elsewhere)")
        self.meta = json.loads(path.read_text(encoding="utf-8"))
        if expect_codec_config is not None and config_sha256(expect_codec_config) != self.meta["codec_config_sha256"]:
            raise ValueError(f"TokenShardsDataset: the shards of '{path.parent}' were written with another codec config")
        rate = self.meta.get("drop_caption_rate", 0.0) if drop_caption_rate is None else drop_caption_rate
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"TokenShardsDataset: drop_caption_rate must be in [0, 1], got {rate}")
        self.drop_caption_rate = float(rate)
        self.phase = phase
        self.num_tokens = int(np.prod(self.meta["token_shape"]))
        self.codebook_size = int(self.meta["num_tokens"])  # token values must lie in [0, codebook_size)

    def decode(self, sample: dict) -> tuple[np.ndarray, str]:
        text = sample_caption(sample)
        if TOKENS_KEY not in sample:
            raise BadSample(f"no .{TOKENS_KEY}")
        try:
            tokens = np.load(io.BytesIO(sample[TOKENS_KEY]), allow_pickle=False)
        except (OSError, ValueError) as err:
            raise BadSample(f"cannot read .{TOKENS_KEY}: {err}") from err
        if tokens.ndim != 2 or tokens.shape[1] != self.num_tokens:
            raise BadSample(f".{TOKENS_KEY} has shape {tokens.shape}, expected (views, {self.num_tokens})")
        if tokens.dtype.kind not in "iu":
            raise BadSample(f".{TOKENS_KEY} has dtype {tokens.dtype}, expected integer tokens")
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise BadSample(f".{TOKENS_KEY} holds token values {int(tokens.min())}..{int(tokens.max())}, outside "
                            f"the codebook's 0..{self.codebook_size - 1} (token_meta.json num_tokens)")
        return tokens, text

    def make_item(self, decoded: tuple[np.ndarray, str]) -> dict:
        tokens, text = decoded
        train = self.phase == "train"
        view = 1 + int(np.random.randint(tokens.shape[0] - 1)) if train and tokens.shape[0] > 1 else 0
        drop = train and self.drop_caption_rate > 0 and np.random.random() < self.drop_caption_rate
        return {"content_token": torch.from_numpy(tokens[view].astype(np.int64)), "text": "" if drop else text.lower()}
