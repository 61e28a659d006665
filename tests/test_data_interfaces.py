"""data/ has written interfaces: one image-extension list and one lister used by every reader, the shard reader
and evaluation, and the hooks the trainer and the token cache use as ``typing.Protocol``s that the readers
satisfy and the callers check."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from vqdiff.data import ffhq, image_text_folder, web_shards
from vqdiff.data.image_class_folder import ImageClassFolder
from vqdiff.data.image_files import IMAGE_EXTENSIONS, is_image_file, list_image_files
from vqdiff.data.image_text_folder import ImageTextFolder
from vqdiff.data.protocols import (CaptionDropout, EpochAware, GroupedImages, HasPreprocessor, NullLabel,
                                   ResumableStream)
from vqdiff.data.token_cache import set_dataset_epoch
from vqdiff.engine.resumable_loader import loader_skipping
from vqdiff.evaluation import image_folder


def _image(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)).save(path)


def test_one_extension_list_everywhere():
    assert ffhq.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS
    assert image_text_folder.FOLDER_IMAGE_EXTENSIONS is IMAGE_EXTENSIONS
    assert image_folder.IMAGE_SUFFIXES is IMAGE_EXTENSIONS
    assert web_shards.SHARD_IMAGE_KEYS == tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    assert web_shards.SHARD_IMAGE_KEYS[:4] == ("jpg", "jpeg", "png", "webp")  # a sample's image key as before
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


def test_the_one_lister_is_what_readers_and_evaluation_see(tmp_path):
    root = tmp_path / "imgs"
    for name in ("b.PNG", "a.jpg", "sub/c.tif", "sub/deeper/d.webp"):
        _image(root / name)
    (root / "notes.txt").write_text("not an image")
    (root / "folder.png").mkdir()  # a folder named like an image is no image
    deep = [root / "a.jpg", root / "b.PNG", root / "sub" / "c.tif", root / "sub" / "deeper" / "d.webp"]
    assert list_image_files(root) == sorted(deep)
    assert list_image_files(root, recursive=False) == [root / "a.jpg", root / "b.PNG"]
    assert is_image_file("x.JPEG") and not is_image_file("x.txt")
    assert image_folder.list_images(root) == sorted(deep)
    assert ffhq.FFHQDataset(str(root)).files == sorted(deep)


class Stream(IterableDataset):
    def __init__(self):
        self.epochs, self.resumed = [], []

    def __iter__(self):
        return iter(range(4))

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def resume_after_batches(self, batches: int) -> None:
        self.resumed.append(batches)


def test_the_trainer_hooks_are_protocols_the_callers_check():
    stream = Stream()
    assert isinstance(stream, EpochAware) and isinstance(stream, ResumableStream)
    set_dataset_epoch(stream, 3)
    loader = DataLoader(stream, batch_size=2)
    assert loader_skipping(loader, 5) is loader
    assert stream.epochs == [3] and stream.resumed == [5]
    plain = torch.utils.data.TensorDataset(torch.zeros(2))
    assert not isinstance(plain, EpochAware) and not isinstance(plain, ResumableStream)
    set_dataset_epoch(plain, 1)  # nothing to call: no error


def test_the_readers_satisfy_the_token_cache_protocols(tmp_path):
    for i, name in enumerate(("a", "b")):
        _image(tmp_path / "text" / f"{name}.png", i)
        (tmp_path / "text" / f"{name}.txt").write_text(f"caption {name}\n")
        _image(tmp_path / "classes" / name / "0.png", i)
    texts = ImageTextFolder(str(tmp_path / "text"), drop_caption_rate=0.1)
    for protocol in (GroupedImages, HasPreprocessor, CaptionDropout):
        assert isinstance(texts, protocol), protocol.__name__
    labels = ImageClassFolder(str(tmp_path / "classes"))
    assert isinstance(labels, NullLabel) and labels.null_label == 2
    assert not isinstance(texts, NullLabel)
