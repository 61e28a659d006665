"""Evaluation metrics: shapes attribute classifier and CLIP score plumbing (FID / IS / KID: test_evaluation_fid.py)."""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import fixtures_dir
from test_evaluation_scripts import _caption_tree
from vqdiff.data.synthetic import ShapesDataset, all_combinations, heldout_combinations, make_caption
from vqdiff.evaluation.clip_score import (
    CLIPModel,
    CLIPVisionTransformer,
    clip_score,
    compute_clip_score,
    load_clip_state_dict,
)
from vqdiff.evaluation.shapes_classifier import (
    CHANCE,
    attribute_accuracy,
    classify,
    load_shapes_classifier,
    parse_caption,
    save_shapes_classifier,
    text_following_report,
    train_shapes_classifier,
)


# ---------------------------------------------------------------- shapes classifier

@pytest.fixture(scope="module")
def shapes_classifier():
    # trained WITHOUT the held-out combinations: it must still read them right
    return train_shapes_classifier(resolution=32, num_samples=1500, steps=250, seed=0, split="train",
                                   progress=False, num_threads=1)


def _split_tensors(split: str, n: int, seed: int = 7):
    ds = ShapesDataset(num_samples=n, resolution=32, split=split, seed=seed)
    items = [ds[i] for i in range(n)]
    images = torch.stack([it["image"] for it in items])
    targets = {k: torch.tensor([it[k] for it in items]) for k in ("color", "shape", "position")}
    return images, targets, [it["text"] for it in items]


def test_classifier_reads_heldout_combinations(shapes_classifier):
    images, targets, _ = _split_tensors("heldout", 160)
    acc = attribute_accuracy(shapes_classifier, images, targets)
    for k in ("color", "shape", "position"):
        assert acc[k] >= 0.95, acc
    assert acc["all"] >= 0.9, acc


def test_classifier_save_load_and_resize(shapes_classifier, tmp_path):
    images, _, _ = _split_tensors("all", 24)
    path = tmp_path / "clf" / "shapes.pth"
    save_shapes_classifier(shapes_classifier, path)
    loaded = load_shapes_classifier(path)
    assert loaded.resolution == 32
    a, b = classify(shapes_classifier, images), classify(loaded, images)
    for k in a:
        assert torch.equal(a[k], b[k])
    # 64x64 images of the same scenes are resized to the classifier's 32x32 and still read right
    big = ShapesDataset(num_samples=24, resolution=64, split="all", seed=7)
    big_images = torch.stack([big[i]["image"] for i in range(24)])
    targets = {k: torch.tensor([big[i][k] for i in range(24)]) for k in ("color", "shape", "position")}
    assert attribute_accuracy(loaded, big_images, targets)["all"] >= 0.9
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_shapes_classifier(tmp_path / "nope.pth")


def test_text_following_report(shapes_classifier):
    images, _, captions = _split_tensors("heldout", 40)
    report = text_following_report(shapes_classifier, images, captions, name="real")
    assert report["accuracy"]["all"] >= 0.9 and report["num_images"] == 40
    assert report["chance"] == CHANCE and "real" in report["table"] and "chance" in report["table"]
    # the same images scored against captions naming another colour: accuracy of colour collapses
    wrong = [c.replace("red", "XX").replace("green", "red").replace("XX", "green")
             .replace("blue", "YY").replace("yellow", "blue").replace("YY", "yellow") for c in captions]
    bad = text_following_report(shapes_classifier, images, wrong)
    assert bad["accuracy"]["color"] <= 0.05 and bad["accuracy"]["shape"] >= 0.9
    with pytest.raises(ValueError, match="captions"):
        text_following_report(shapes_classifier, images, captions[:-1])


def _load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_shapes_script(shapes_classifier, tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    _caption_tree(good, "heldout", 40, seed=11)
    _caption_tree(bad, "heldout", 40, seed=11, shuffle_captions=True)
    out = tmp_path / "res.json"
    save_shapes_classifier(shapes_classifier, tmp_path / "clf.pth")  # the script loads it (no retraining)
    result = _load_script("evaluate_shapes").main([
        "--generated", f"text={good}", f"wrong={bad}", "--classifier", str(tmp_path / "clf.pth"),
        "--real-samples", "60", "--output", str(out)])
    assert (tmp_path / "clf.pth").is_file() and json.loads(out.read_text())["num_images"] == {"text": 40, "wrong": 40}
    acc = result["accuracy"]
    assert acc["real (held-out)"]["all"] >= 0.9
    assert acc["text"]["all"] >= 0.9
    assert acc["wrong"]["color"] <= 0.1 and acc["wrong"]["shape"] >= 0.9


def test_chance_levels():
    assert CHANCE == pytest.approx({"color": 0.25, "shape": 1 / 3, "position": 0.25, "all": 1 / 48})


def test_parse_caption_inverts_make_caption():
    for spec in all_combinations():
        assert parse_caption(make_caption(spec)) == spec.indices
    assert len(heldout_combinations()) == 8
    assert parse_caption("A Blue triangle at the bottom right") == (2, 2, 3)
    with pytest.raises(ValueError, match="purple"):
        parse_caption("a purple circle at the top left on a gray background")
    with pytest.raises(ValueError, match="two dogs"):
        parse_caption("two dogs in the snow")


# ---------------------------------------------------------------- CLIP score plumbing

def _tiny_clip(embed_dim: int = 8) -> CLIPModel:
    torch.manual_seed(1)
    visual = CLIPVisionTransformer(resolution=16, patch=8, width=64, layers=1, heads=1, embed_dim=embed_dim)
    model = CLIPModel(visual, vocab=50, context_length=12, width=64, layers=2, heads=1, embed_dim=embed_dim)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 1 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return model.eval()


def _tiny_tokenizer(texts):
    out = torch.zeros(len(texts), 12, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [48] + [1 + ord(ch) % 40 for ch in t][:9] + [49]  # <sot> ... <eot> (largest id)
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def test_clip_state_dict_round_trip(tmp_path):
    model = _tiny_clip()
    path = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    loaded = CLIPModel.from_state_dict(load_clip_state_dict(path))
    assert loaded.visual.input_resolution == 16 and loaded.context_length == 12
    assert len(loaded.transformer.resblocks) == 2 and len(loaded.visual.transformer.resblocks) == 1
    images, tokens = torch.rand(3, 3, 24, 20) * 255, _tiny_tokenizer(["a", "bb", "ccc"])
    torch.testing.assert_close(clip_score(loaded, images, tokens), clip_score(model, images, tokens))
    with pytest.raises(FileNotFoundError, match="missing_clip.pt"):
        load_clip_state_dict(tmp_path / "missing_clip.pt")


def test_clip_score_formula(monkeypatch):
    model = _tiny_clip(embed_dim=2)
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    txt = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, -1.0]])  # cos = 1, 1/sqrt2, -1 (-> 0)
    monkeypatch.setattr(model, "encode_image", lambda images: img[: len(images)])
    monkeypatch.setattr(model, "encode_text", lambda tokens: txt[: len(tokens)])
    scores = clip_score(model, torch.zeros(3, 3, 16, 16), torch.zeros(3, 12, dtype=torch.long))
    torch.testing.assert_close(scores, torch.tensor([100.0, 100 / math.sqrt(2), 0.0]))
    batches = [(torch.zeros(2, 3, 16, 16), ["x", "y"]), (torch.zeros(1, 3, 16, 16), ["z"])]
    # the batches restart the fake embeddings at row 0: scores 100, 70.7 | 100
    mean = compute_clip_score(model, batches, tokenizer=_tiny_tokenizer, progress=False)
    assert mean == pytest.approx((200 + 100 / math.sqrt(2)) / 3)


def test_clip_score_end_to_end_tiny_random():
    model = _tiny_clip()
    images = torch.rand(4, 3, 16, 16) * 255
    tokens = _tiny_tokenizer(["red", "green", "blue", "yellow"])
    scores = clip_score(model, images, tokens)
    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(tokens), dim=-1)
    expected = 100 * (img * txt).sum(-1).clamp(min=0)
    torch.testing.assert_close(scores, expected)
    assert scores.shape == (4,) and (scores >= 0).all() and (scores <= 100).all()


def test_clip_text_tower_matches_official_fixture():
    # the official tiny CLIP (full state dict, visual tower included) and the official code's cond_emb:
    # per-token L2-normalised ln_final features, computed by the official code in fp16 -> 2e-3
    root = fixtures_dir("official_tiny_text")
    expected = torch.load(root / "expected.pt", map_location="cpu", weights_only=False)
    model = CLIPModel.from_state_dict(load_clip_state_dict(root / "OUTPUT/pretrained_model/ViT-B-32.pt"))
    with torch.no_grad():
        feats = F.normalize(model.text_features(expected["condition_token"]), dim=-1)
    torch.testing.assert_close(feats, expected["cond_emb"].float(), atol=2e-3, rtol=0)
    assert model.visual.input_resolution == 32
    assert model.encode_image(torch.rand(1, 3, 64, 64) * 255).shape == (1, 512)


def test_clip_loads_torchscript_archive(tmp_path):
    # the released ViT-B-32.pt is a TorchScript archive: a traced module holding the same tensors stands in
    model = _tiny_clip()

    class Holder(torch.nn.Module):
        def __init__(self, m: CLIPModel):
            super().__init__()
            for name, child in m.named_children():
                setattr(self, name, child)
            for name in ("positional_embedding", "text_projection", "logit_scale"):
                setattr(self, name, getattr(m, name))

        def forward(self, x):
            return x

    path = tmp_path / "tiny_clip_ts.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated; only a stand-in here
        torch.jit.trace(Holder(model), torch.zeros(1)).save(str(path))
    loaded = CLIPModel.from_state_dict(load_clip_state_dict(path))
    images, tokens = torch.rand(2, 3, 16, 16) * 255, _tiny_tokenizer(["a", "b"])
    torch.testing.assert_close(clip_score(loaded, images, tokens), clip_score(model, images, tokens))



def test_clip_score_text_tower_is_the_models_tower(tmp_path):
    # the CLIP score reads text with the project's CLIPTextTransformer (the conditioning tower), not a copy:
    # the same file loaded as the models load it gives the same features and end-of-text embedding
    from vqdiff.modeling.embeddings.clip_model import CLIPTextTransformer
    from vqdiff.modeling.embeddings.clip_model import load_clip_state_dict as load_text_weights

    model = _tiny_clip()
    assert isinstance(model, CLIPTextTransformer)
    path = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    tower = CLIPTextTransformer.from_state_dict(load_text_weights(path)).eval()
    tokens = _tiny_tokenizer(["red", "a blue square"])
    with torch.no_grad():
        torch.testing.assert_close(model.text_features(tokens), tower(tokens))
        torch.testing.assert_close(model.encode_text(tokens), tower.project_eot(tower(tokens), tokens))
    with pytest.raises(ValueError, match=r"\(B, 12\)"):
        model.text_features(tokens[:, :5])
