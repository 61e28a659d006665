"""Write synthetic shapes into the on-disk layouts of the real data sets (see the README's Data section).

So the COCO, CUB-200, ImageNet and FFHQ readers are tested on real files in the real folder trees:

- COCO: ``annotations/captions_{train,val}2014.json`` and ``{phase}2014/{phase}2014/COCO_{phase}2014_{id:012d}.jpg``.
- CUB-200: ``images/<class>/<name>.jpg``, ``text/text/<class>/<name>.txt`` (one caption a line),
  ``{train,test}/filenames.pickle`` (a pickled list of ``'<class>/<name>'``).
- ImageNet: ``{train,val}/<wnid>/<file>.JPEG`` and ``ILSVRC2012_name_{train,val}.txt`` listing ``<wnid>/<file>``.
- FFHQ: an image folder ``<root>/<bucket>/<id:05d>.png`` (torchvision ``ImageFolder`` layout).
- Caption folders (``ImageTextFolder``): ``text_jsonl`` / ``text_csv`` write the Hugging Face
  ``imagefolder`` form (``metadata.jsonl`` / ``metadata.csv`` with ``file_name`` and ``text``, images in
  sub-folders); ``text_sidecar`` writes ``<name>.png`` + ``<name>.txt`` (one caption a line).
- Class folders (``ImageClassFolder``): ``<root>/<colour>_<shape>/<i:05d>.png``.
- WebDataset shards (``WebShardsImageText``): ``<root>/{00000..}.tar`` in the ``img2dataset`` layout
  (``<key>.jpg``, ``<key>.txt``, ``<key>.json``, 9-digit keys), written with webdataset's ``TarWriter``.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from .synthetic import COLORS, SHAPES, ShapesDataset

__all__ = ["write_layout", "write_coco", "write_cub200", "write_imagenet", "write_ffhq", "write_text_folder",
           "write_class_folder", "write_shards", "shards_of_dataset", "LAYOUTS"]


def _to_pil(item: dict) -> Image.Image:
    arr = item["image"].permute(1, 2, 0).numpy().astype(np.uint8)
    return Image.fromarray(arr)


def write_coco(root: str | Path, num_images: int = 8, resolution: int = 64, seed: int = 0, captions_per_image: int = 2) -> Path:
    root = Path(root)
    for phase, offset in (("train", 0), ("val", 100000)):
        ds = ShapesDataset(num_images, resolution, split="all", seed=seed + (phase == "val"))
        img_dir = root / f"{phase}2014" / f"{phase}2014"
        img_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(num_images):
            item = ds[i]
            image_id = offset + i * 7 + 9  # sparse ids, as in COCO
            name = f"COCO_{phase}2014_{image_id:012d}.jpg"
            _to_pil(item).save(img_dir / name, quality=95)
            images.append({"id": image_id, "file_name": name, "height": resolution, "width": resolution})
            for j in range(captions_per_image):
                caption = item["text"] if j == 0 else item["text"].replace("a ", "A ", 1) + "."
                annotations.append({"image_id": image_id, "id": len(annotations) + 1, "caption": caption})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        with open(root / "annotations" / f"captions_{phase}2014.json", "w", encoding="utf-8") as f:
            json.dump({"images": images, "annotations": annotations}, f)
    return root


def write_cub200(root: str | Path, num_images: int = 8, resolution: int = 64, seed: int = 0, captions_per_image: int = 3) -> Path:
    root = Path(root)
    ds = ShapesDataset(num_images, resolution, split="all", seed=seed)
    names = []
    for i in range(num_images):
        item = ds[i]
        cls = f"{item['label'] + 1:03d}.{list(COLORS)[item['color']].title()}_{SHAPES[item['shape']].title()}"
        name = f"{cls}/{cls.split('.', 1)[1]}_{i:04d}"
        (root / "images" / cls).mkdir(parents=True, exist_ok=True)
        (root / "text" / "text" / cls).mkdir(parents=True, exist_ok=True)
        _to_pil(item).save(root / "images" / f"{name}.jpg", quality=95)
        lines = [item["text"]] + [f"this picture shows {item['text']}"] * (captions_per_image - 1)
        (root / "text" / "text" / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        names.append(name)
    split = max(1, int(round(num_images * 0.75)))
    for phase, subset in (("train", names[:split]), ("test", names[split:] or names[:1])):
        (root / phase).mkdir(parents=True, exist_ok=True)
        with open(root / phase / "filenames.pickle", "wb") as f:
            pickle.dump(subset, f)
    return root


def write_imagenet(root: str | Path, num_images: int = 8, resolution: int = 64, seed: int = 0) -> Path:
    """Class folders named like WordNet ids (``n0000000<label>``), one per synthetic class."""
    root = Path(root)
    for phase in ("train", "val"):
        ds = ShapesDataset(num_images, resolution, split="all", seed=seed + (phase == "val"))
        lines = []
        for i in range(num_images):
            item = ds[i]
            wnid = f"n{item['label']:08d}"
            fname = f"{wnid}_{i}.JPEG" if phase == "train" else f"ILSVRC2012_val_{i:08d}.JPEG"
            (root / phase / wnid).mkdir(parents=True, exist_ok=True)
            _to_pil(item).save(root / phase / wnid / fname, format="JPEG", quality=95)
            lines.append(f"{wnid}/{fname}")
        (root / f"ILSVRC2012_name_{phase}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_ffhq(root: str | Path, num_images: int = 8, resolution: int = 64, seed: int = 0) -> Path:
    root = Path(root)
    ds = ShapesDataset(num_images, resolution, split="all", seed=seed)
    for i in range(num_images):
        bucket = root / f"{(i // 1000) * 1000:05d}"
        bucket.mkdir(parents=True, exist_ok=True)
        _to_pil(ds[i]).save(bucket / f"{i:05d}.png")
    return root


def _captions(item: dict, n: int) -> list[str]:
    return [item["text"]] + [f"this picture shows {item['text']}"] * (n - 1)


def write_text_folder(root: str | Path, num_images: int = 8, resolution: int = 64, seed: int = 0,
                      convention: str = "jsonl", captions_per_image: int = 2) -> Path:
    """A caption folder: ``convention`` ``'jsonl'`` / ``'csv'`` (``metadata.<ext>``, one row per caption,
    images under ``images/<shape>/``) or ``'sidecar'`` (``<name>.png`` + ``<name>.txt`` side by side)."""
    if convention not in ("jsonl", "csv", "sidecar"):
        raise ValueError(f"unknown caption-folder convention {convention!r}; choose jsonl, csv or sidecar")
    root = Path(root)
    ds = ShapesDataset(num_images, resolution, split="all", seed=seed)
    rows: list[dict] = []
    for i in range(num_images):
        item = ds[i]
        captions = _captions(item, captions_per_image)
        if convention == "sidecar":
            root.mkdir(parents=True, exist_ok=True)
            _to_pil(item).save(root / f"{i:05d}.png")
            (root / f"{i:05d}.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
            continue
        rel = f"images/{SHAPES[item['shape']]}/{i:05d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _to_pil(item).save(root / rel)
        rows.extend({"file_name": rel, "text": c} for c in captions)
    if convention == "jsonl":
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif convention == "csv":
        with open(root / "metadata.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["file_name", "text"])
            writer.writeheader()
            writer.writerows(rows)
    return root


def write_class_folder(root: str | Path, num_images: int = 8, resolution: int = 64, seed: int = 0) -> Path:
    """Class folders ``<root>/<colour>_<shape>/<i:05d>.png``."""
    root = Path(root)
    ds = ShapesDataset(num_images, resolution, split="all", seed=seed)
    for i in range(num_images):
        item = ds[i]
        folder = root / f"{list(COLORS)[item['color']]}_{SHAPES[item['shape']]}"
        folder.mkdir(parents=True, exist_ok=True)
        _to_pil(item).save(folder / f"{i:05d}.png")
    return root


def _encoded(image: Image.Image, image_format: str) -> bytes:
    buf = io.BytesIO()
    if image_format == "jpg":
        image.save(buf, format="JPEG", quality=95)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def shards_of_dataset(dataset: Any, root: str | Path, samples_per_shard: int = 64, drop_caption_rate: float = 0.0,
                      im_preprocessor_config: Mapping | None = None, shuffle_buffer: int = 1000,
                      image_format: str = "jpg") -> dict:
    """Write the items of a captioned data set (``{'image': (3, H, W) in [0, 255], 'text'}``) as
    ``img2dataset`` shards under ``root`` and return the ``train_datasets`` entry that streams them
    (``WebShardsImageText`` with ``samples_per_epoch`` = the data set's length). ``image_format`` ``'jpg'``
    (img2dataset's default, quality 95) or ``'png'`` (lossless: the same pixels as the data set)."""
    from webdataset import TarWriter

    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    shards = (n + samples_per_shard - 1) // samples_per_shard
    for s in range(shards):
        with TarWriter(str(root / f"{s:05d}.tar")) as sink:
            for i in range(s * samples_per_shard, min(n, (s + 1) * samples_per_shard)):
                item = dataset[i]
                key = f"{s:05d}{i - s * samples_per_shard:04d}"
                sink.write({"__key__": key, image_format: _encoded(_to_pil(item), image_format), "txt": item["text"],
                            "json": json.dumps({"key": key, "caption": item["text"], "status": "success"})})
    params: dict[str, Any] = {"urls": str(root / f"{{00000..{shards - 1:05d}}}.tar"), "samples_per_epoch": n,
                              "drop_caption_rate": drop_caption_rate, "shuffle_buffer": shuffle_buffer}
    if im_preprocessor_config is not None:
        params["im_preprocessor_config"] = dict(im_preprocessor_config)
    return {"target": "vqdiff.data.web_shards.WebShardsImageText", "params": params}


def write_shards(root: str | Path, num_images: int = 8, resolution: int = 64, seed: int = 0,
                 samples_per_shard: int = 4) -> Path:
    """``img2dataset``-style shards ``<root>/{00000..}.tar`` of the shapes."""
    shards_of_dataset(ShapesDataset(num_images, resolution, split="all", seed=seed), root, samples_per_shard)
    return Path(root)


LAYOUTS = {"coco": write_coco, "cub200": write_cub200, "imagenet": write_imagenet, "ffhq": write_ffhq,
           "text_jsonl": lambda root, **kw: write_text_folder(root, convention="jsonl", **kw),
           "text_csv": lambda root, **kw: write_text_folder(root, convention="csv", **kw),
           "text_sidecar": lambda root, **kw: write_text_folder(root, convention="sidecar", **kw),
           "class_folder": write_class_folder, "shards": write_shards}


def write_layout(kind: str, root: str | Path, num_images: int = 8, resolution: int = 64, seed: int = 0) -> Path:
    """Write ``num_images`` synthetic samples into ``root`` in the layout of data set ``kind``."""
    if kind not in LAYOUTS:
        raise ValueError(f"unknown layout {kind!r}; choose one of {', '.join(LAYOUTS)}")
    return LAYOUTS[kind](root, num_images=num_images, resolution=resolution, seed=seed)
