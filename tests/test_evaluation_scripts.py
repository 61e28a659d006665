"""The evaluation scripts end to end on tiny inputs (the shapes script's test lives in test_evaluation.py,
beside the trained classifier it reuses): FID/IS between folders (random-init TF-Inception weights read from a file), COCO protocol
input checks and caption sampling."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_evaluation_fid import save_random_tf_inception
from vqdiff.data.synthetic import ShapesDataset, make_caption
from vqdiff.evaluation.image_folder import caption_folders, image_batches, list_images, load_image

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(img: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.permute(1, 2, 0).round().clamp(0, 255).byte().numpy()).save(path)


def _caption_tree(root: Path, split: str, n: int, seed: int, shuffle_captions: bool = False) -> None:
    """Real synthetic images stored in the inference layout root/<caption>/<k>.png."""
    ds = ShapesDataset(num_samples=n, resolution=32, split=split, seed=seed)
    specs = [ds.spec(i) for i in range(n)]
    captions = [make_caption(s) for s in specs]
    if shuffle_captions:  # each image under the caption of the NEXT colour: colour must come out wrong
        from vqdiff.data.synthetic import COLORS, ShapeSpec

        names = list(COLORS)
        captions = [make_caption(ShapeSpec(names[(names.index(s.color) + 1) % 4], s.shape, s.position))
                    for s in specs]
    counts: dict[str, int] = {}
    for i, cap in enumerate(captions):
        k = counts.get(cap, 0)
        counts[cap] = k + 1
        _save(ds[i]["image"], root / cap / f"{k:06d}.png")


def test_image_folder_reading(tmp_path):
    _caption_tree(tmp_path / "gen", "heldout", 6, seed=3)
    folders = caption_folders(tmp_path / "gen")
    assert sum(len(f) for _, f in folders) == 6 and all(c.startswith("a ") for c, _ in folders)
    files = list_images(tmp_path / "gen")
    img = load_image(files[0])
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 255
    assert load_image(files[0], size=16).shape == (3, 16, 16)
    assert [b.shape[0] for b in image_batches(files, 4)] == [4, 2]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_images(tmp_path / "nowhere")


def test_evaluate_fid_script(tmp_path):
    """The script's FID and IS equal torchmetrics' own metrics on the same PNG files read with PIL (random-init
    TF-Inception weights from a file): two different image sets, so a broken pipeline cannot pass."""
    from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
    from torchmetrics.image.inception import InceptionScore

    weights = save_random_tf_inception(tmp_path / "inception.pth")
    _caption_tree(tmp_path / "real", "all", 6, seed=1)
    _caption_tree(tmp_path / "fake", "all", 6, seed=2)
    res = _script("evaluate_fid").main([
        "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
        "--feature-extractor-weights-path", str(weights), "--batch-size", "4", "--splits", "2",
        "--output", str(tmp_path / "fid.json")])
    assert res["num_real"] == res["num_fake"] == 6 and json.loads((tmp_path / "fid.json").read_text())["is_splits"] == 2

    def pixels(root: Path) -> torch.Tensor:  # the script's file order: sorted paths
        files = sorted(p for p in root.rglob("*.png"))
        return torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                            for f in files])

    real, fake = pixels(tmp_path / "real"), pixels(tmp_path / "fake")
    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights), antialias=False)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    assert res["fid"] > 1e-3 and res["fid"] == pytest.approx(float(fid.compute()), rel=1e-4)
    net = NoTrainInceptionV3("inception-v3-compat", ["logits_unbiased"], feature_extractor_weights_path=str(weights),
                             antialias=False)
    score = InceptionScore(feature=net, splits=2)
    score.update(fake)
    torch.manual_seed(0)  # the split order InceptionMetricsConfig's default seed draws
    assert res["inception_score"] == pytest.approx(float(score.compute()[0]), rel=1e-4)
    with pytest.raises(SystemExit, match="missing_inception.pth"):
        _script("evaluate_fid").main(["--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
                                      "--inception-weights", str(tmp_path / "missing_inception.pth")])


def test_coco_protocol_reports_missing_inputs(tmp_path, capsys):
    mod = _script("eval_coco_protocol")
    with pytest.raises(SystemExit) as exc:
        mod.main(["--coco-root", str(tmp_path / "coco"), "--config", str(tmp_path / "c.yaml"),
                  "--checkpoint", str(tmp_path / "m.pth"), "--inception-weights", str(tmp_path / "inc.pth")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for name in ("captions_val2014.json", "c.yaml", "m.pth", "inc.pth"):
        assert name in err


def test_coco_caption_sampling(tmp_path):
    mod = _script("eval_coco_protocol")
    anns = [{"image_id": img, "caption": f"caption {img}-{k}"} for img in range(10) for k in range(3)]
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps({"annotations": anns}))
    first = mod.sample_captions(path, 10, seed=0)
    assert len({c["image_id"] for c in first}) == 10  # one caption per image while images last
    assert mod.sample_captions(path, 10, seed=0) == first
    assert mod.sample_captions(path, 10, seed=1) != first
    more = mod.sample_captions(path, 25, seed=0)
    assert len({c["caption"] for c in more}) == 25 and more[:10] == first
    with pytest.raises(ValueError, match="only 30"):
        mod.sample_captions(path, 31, seed=0)
    assert mod.real_image_path(Path("R"), 42).as_posix() == "R/val2014/val2014/COCO_val2014_000000000042.jpg"
