"""Inference API (issue 10): the official tiny fixture, official configs and checkpoint layout, per-call
sampling arguments, seeds, fast sampling, saved files, safe loading, and the CLI."""

from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fixtures_dir
from inference_VQ_Diffusion import VQ_Diffusion, sample_type_string
from vqdiff.inference.images import make_grid, safe_name, to_pil_images
from vqdiff.modeling.diffusion import samplers as S
from vqdiff.modeling.diffusion import sampling
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions
from vqdiff.utils.config import load_yaml_config, resolve_target, save_yaml_config

TINY_CFG, TINY_CKPT = "config_tiny_text.yaml", "tiny_text_official.pth"
FAST = 10  # 11 network calls per sample: keeps every test quick


# --------------------------------------------------------------------------------------------------
# helpers (also used by test_conversion.py)
# --------------------------------------------------------------------------------------------------
class CallCounter:
    """Counts forward calls of a module (the network) through a forward hook."""

    def __init__(self, module: torch.nn.Module):
        self.n = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.n += 1

    def close(self):
        self.handle.remove()


def _shrink_codec_yaml(node):
    """A tiny copy of a taming / PatchVQGAN codec YAML (16x16 images -> 8x8 tokens, 64 codes)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "ch":
                out[k] = 32
            elif k == "ch_mult":
                out[k] = [1, 2]
            elif k == "num_res_blocks":
                out[k] = 1
            elif k == "attn_resolutions":
                out[k] = [[8, 8]] if v and isinstance(v[0], (list, tuple)) else [8]
            elif k == "resolution":
                out[k] = [16, 16] if isinstance(v, (list, tuple)) else 16
            elif k in ("z_channels", "embed_dim"):
                out[k] = 32
            elif k in ("n_embed", "vocab_size", "block_size"):
                out[k] = 64
            elif k in ("n_layer",):
                out[k] = 1
            elif k in ("n_head",):
                out[k] = 2
            elif k in ("n_embd",):
                out[k] = 32
            else:
                out[k] = _shrink_codec_yaml(v)
        return out
    if isinstance(node, list):
        return [_shrink_codec_yaml(v) for v in node]
    return node


OFFICIAL_CODEC_YAMLS = {  # official file name under official_configs/ -> path the model configs name
    "taming_dvae__taming_f8_8192_openimages.yaml": "OUTPUT/pretrained_model/taming_dvae/taming_f8_8192_openimages.yaml",
    "taming_dvae__vqgan_imagenet_f16_16384.yaml": "OUTPUT/pretrained_model/taming_dvae/vqgan_imagenet_f16_16384.yaml",
    "taming_dvae__vqgan_ffhq_f16_1024.yaml": "OUTPUT/pretrained_model/taming_dvae/vqgan_ffhq_f16_1024.yaml",
    "taming_dvae__config.yaml": "OUTPUT/pretrained_model/taming_dvae/config.yaml",
}


def write_tiny_codec_yamls(root: Path) -> None:
    """Shrunk copies of the official codec YAMLs at the paths the official model configs name."""
    src = fixtures_dir("official_configs")
    for name, dst in OFFICIAL_CODEC_YAMLS.items():
        save_yaml_config(_shrink_codec_yaml(load_yaml_config(src / name)), root / dst)


def shrink_model_config(cfg: dict) -> dict:
    """A tiny copy of an official model config: 8x8 tokens, 64 codes, 1 layer of width 32, random codec."""
    cfg = {"model": copy.deepcopy(cfg["model"])}
    p = cfg["model"]["params"]
    codec = p["content_codec_config"]["params"]
    codec.update(token_shape=[8, 8], ckpt_path=None, quantize_number=0, mapping_path=None)
    if "num_tokens" in codec:
        codec["num_tokens"] = 64
    d = p["diffusion_config"]["params"]
    d["content_emb_config"]["params"].update(num_embed=64, spatial_size=[8, 8], embed_dim=32)
    t = d["transformer_config"]["params"]
    t.update(n_layer=1, n_embd=32, n_head=2, content_seq_len=64, content_spatial_size=[8, 8], mlp_hidden_times=2)
    if "condition_dim" in t:
        t["condition_dim"] = 64  # the tiny CLIP of the fixture is 64 wide
    return cfg


OFFICIAL_MODEL_CONFIGS = [
    "config_text.yaml", "config_imagenet.yaml", "configs__coco.yaml", "configs__coco_tune.yaml",
    "configs__cub200.yaml", "configs__ffhq.yaml", "configs__imagenet.yaml", "configs__ithq.yaml",
]


def tiny_official(root: Path, name: str, learnable_cf: bool | None = None) -> Path:
    """Write the tiny copy of official config ``name`` into ``root`` (the fixture copy) and return it."""
    write_tiny_codec_yamls(root)
    cfg = shrink_model_config(load_yaml_config(fixtures_dir("official_configs") / name))
    if learnable_cf is not None:
        cfg["model"]["params"]["learnable_cf"] = learnable_cf
        cfg["model"]["params"]["diffusion_config"]["params"]["learnable_cf"] = learnable_cf
    path = root / f"tiny_{name}"
    save_yaml_config(cfg, path)
    return path


def official_layout_checkpoint(cfg_path: Path, out: Path, ema_shift: float = 0.01) -> dict:
    """Build the config's model and save it as the official training checkpoint does:
    ``{'model': full state dict, 'ema': state dict of model.transformer (shifted), 'last_epoch', 'last_iter'}``."""
    from vqdiff.inference.loading import build_model

    torch.manual_seed(1)
    model = build_model(load_yaml_config(cfg_path))
    ema = {k: (v + ema_shift if v.is_floating_point() and not k.startswith(("log_", "Lt_")) else v.clone())
           for k, v in model.transformer.state_dict().items()}
    ckpt = {"model": model.state_dict(), "ema": ema, "last_epoch": 3, "last_iter": 120}
    torch.save(ckpt, out)
    return ckpt


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core CPU: one intra-op thread is faster and far steadier (two OpenMP
    threads stall whenever another process holds a core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_engine(official_tiny_text) -> VQ_Diffusion:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean load warns about nothing
        return VQ_Diffusion(config=TINY_CFG, path=TINY_CKPT)


# --------------------------------------------------------------------------------------------------
# the official tiny fixture
# --------------------------------------------------------------------------------------------------
def test_official_tiny_fixture_loads_with_every_key_and_ema(tiny_engine, official_tiny_text):
    rep = tiny_engine.load_report
    assert rep.ok and rep.missing == [] and rep.unexpected == [] and rep.shape_mismatch == [] and rep.hints == []
    assert rep.used_ema and tiny_engine.epoch == 7 and "all keys matched" in str(rep)
    model = tiny_engine.model
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tiny_engine.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = torch.load(official_tiny_text / TINY_CKPT, weights_only=True)
    own = model.state_dict()
    for k, v in ckpt["ema"].items():  # the EMA entry wins over 'model'
        torch.testing.assert_close(own["transformer." + k].cpu(), v.to(own["transformer." + k].dtype), rtol=0, atol=0)
    for k, v in ckpt["model"].items():
        if k.startswith("content_codec."):
            torch.testing.assert_close(own[k].cpu(), v, rtol=0, atol=0)


def test_official_tiny_fixture_samples_and_saves(tiny_engine, official_tiny_text):
    text = "a red circle at the top left"
    ims = tiny_engine.inference_generate_sample_with_condition(text, truncation_rate=0.85, save_root="RESULT",
                                                               batch_size=2, fast=FAST, seed=0)
    assert len(ims) == 2 and all(isinstance(i, Image.Image) and i.size == (64, 64) and i.mode == "RGB" for i in ims)
    folder = official_tiny_text / "RESULT" / text
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png"]
    for i, p in enumerate(sorted(folder.iterdir())):
        with Image.open(p) as im:
            assert im.size == (64, 64)
            assert np.array_equal(np.asarray(im), np.asarray(ims[i]))


def test_same_seed_same_images_other_seed_other_images(tiny_engine):
    kw = dict(truncation_rate=0.9, save_root=None, batch_size=2, fast=FAST)
    a = tiny_engine.inference_generate_sample_with_condition("two dogs", seed=3, **kw)
    b = tiny_engine.inference_generate_sample_with_condition("two dogs", seed=3, **kw)
    c = tiny_engine.inference_generate_sample_with_condition("two dogs", seed=4, **kw)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, c))


def test_fast_2_makes_half_the_network_calls(tiny_engine):
    net = tiny_engine.model.transformer.transformer
    counts = {}
    for fast in (False, 2):
        counter = CallCounter(net)
        tiny_engine.inference_generate_sample_with_condition("x", 1.0, None, 1, fast=fast, seed=0)
        counter.close()
        counts[fast] = counter.n
    T = tiny_engine.model.transformer.num_timesteps
    assert counts[False] == T == 100
    assert counts[2] == len(S.timesteps(T, 1)) == 51  # steps 99, 97, ..., 1 and the final 0


def test_each_call_uses_its_own_truncation_rate(tiny_engine, monkeypatch):
    seen = []
    real = S.truncate_log_probs

    def spy(log_p, rate):
        out = real(log_p, rate)
        seen.append((rate, int((out[:, :-1] > -70).sum())))
        return out

    monkeypatch.setattr(S, "truncate_log_probs", spy)
    tiny_engine.inference_generate_sample_with_condition("x", 0.3, None, 2, fast=FAST, seed=0)
    first = list(seen)
    seen.clear()
    tiny_engine.inference_generate_sample_with_condition("x", 1.0, None, 1, fast=FAST, seed=0)
    assert {r for r, _ in first} == {0.3} and {r for r, _ in seen} == {1.0}
    kept_first = max(k for _, k in first) / 2  # per sample
    kept_second = min(k for _, k in seen)
    K, N = 40, 64
    assert kept_second == K * N  # rate 1 keeps every class at every position
    assert kept_first < kept_second


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_each_call_equals_a_direct_sampler_call(tiny_engine, scale):
    # the first call uses other settings; the second must not inherit them (the official bug)
    tiny_engine.inference_generate_sample_with_condition("zz", 0.5, None, 3, fast=5, guidance_scale=7.0, seed=1)
    ims = tiny_engine.inference_generate_sample_with_condition("a cat", 0.9, None, 2, fast=FAST,
                                                               guidance_scale=scale, seed=11)
    g = torch.Generator().manual_seed(11)
    direct = tiny_engine.model.generate_content(
        batch={"text": ["a cat"]}, filter_ratio=0, replicate=2, sample_type=f"top0.9r,fast{FAST - 1}",
        guidance_scale=scale, generator=g)
    ref = to_pil_images(direct["content"])
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ims, ref))


def test_missing_checkpoint_is_file_not_found(official_tiny_text):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        VQ_Diffusion(config=TINY_CFG, path="nope.pth")


def test_unsafe_pickle_refused_with_the_flag_named_then_allowed(official_tiny_text):
    ckpt = torch.load(TINY_CKPT, weights_only=True)
    ckpt["args"] = argparse.Namespace(lr=1.0)  # an arbitrary pickled object, like old training files
    torch.save(ckpt, "legacy.pth")
    with pytest.raises(RuntimeError, match="allow_unsafe_pickle"):
        VQ_Diffusion(config=TINY_CFG, path="legacy.pth")
    eng = VQ_Diffusion(config=TINY_CFG, path="legacy.pth", allow_unsafe_pickle=True)
    assert eng.load_report.ok


def test_wrong_method_for_the_model_kind(tiny_engine):
    with pytest.raises(TypeError, match="inference_generate_sample_with_condition"):
        tiny_engine.inference_generate_sample_with_class(3, 0.9, None, 1)
    with pytest.raises(ValueError, match="batch_size"):
        tiny_engine.inference_generate_sample_with_condition("x", 0.9, None, 0)


# --------------------------------------------------------------------------------------------------
# official configs and the official checkpoint layout
# --------------------------------------------------------------------------------------------------
def _targets(node, path="model"):
    if isinstance(node, dict):
        if isinstance(node.get("target"), str):
            yield path, node["target"]
        for k, v in node.items():
            yield from _targets(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{path}[{i}]")


@pytest.mark.parametrize("name", OFFICIAL_MODEL_CONFIGS)
def test_official_config_model_section_resolves_every_target(name):
    cfg = load_yaml_config(fixtures_dir("official_configs") / name)
    found = list(_targets(cfg["model"]))
    assert len(found) >= 5
    for key_path, target in found:
        assert resolve_target(target, key_path) is not None


@pytest.mark.parametrize("name", OFFICIAL_MODEL_CONFIGS)
def test_tiny_copy_of_official_config_loads_official_layout_checkpoint_and_samples(official_tiny_text, name):
    cfg_path = tiny_official(official_tiny_text, name)
    ckpt = official_layout_checkpoint(cfg_path, official_tiny_text / "ckpt.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eng = VQ_Diffusion(config=str(cfg_path), path="ckpt.pth")
    rep = eng.load_report
    assert rep.ok and rep.missing == [] and rep.unexpected == [] and rep.used_ema and rep.epoch == 3
    own = eng.model.transformer.state_dict()
    for k, v in ckpt["ema"].items():
        assert torch.equal(own[k].cpu(), v), k
    kind = eng.condition_kind
    kw = dict(truncation_rate=0.86, save_root="OUT", batch_size=2, fast=FAST, seed=0)
    if kind == "text":
        ims = eng.inference_generate_sample_with_condition("a bird", guidance_scale=2.0, **kw)
    elif kind == "label":
        ims = eng.inference_generate_sample_with_class(407, guidance_scale=1.5, **kw)
    else:
        ims = eng.inference_generate_sample_unconditional(**kw)
    assert len(ims) == 2 and ims[0].size == (16, 16)
    name_dir = {"text": "a bird", "label": "407", None: "unconditional"}[kind]
    ext = "jpg" if kind == "label" else "png"  # the official file types
    assert (official_tiny_text / "OUT" / name_dir / f"000001.{ext}").is_file()


def test_imagenet_cf_builds_the_1001_class_network(official_tiny_text):
    cfg_path = tiny_official(official_tiny_text, "config_imagenet.yaml")
    official_layout_checkpoint(cfg_path, official_tiny_text / "ckpt.pth")
    with pytest.warns(UserWarning, match="different shape"):
        eng = VQ_Diffusion(config=str(cfg_path), path="ckpt.pth", imagenet_cf=True)
    rows = eng.model.transformer.transformer.blocks[0].ln2.emb.weight.shape[0]
    assert rows == 1001 and eng.model.null_label == 1000
    assert all("ln2.emb.weight" in s for s in eng.load_report.shape_mismatch)
    ims = eng.inference_generate_sample_with_class(3, 0.9, None, 1, fast=FAST, guidance_scale=1.5, seed=0)
    assert len(ims) == 1


def test_learnable_cf_checkpoint_with_plain_config_says_which_flag(official_tiny_text):
    learn = tiny_official(official_tiny_text, "configs__coco_tune.yaml")
    official_layout_checkpoint(learn, official_tiny_text / "learn.pth")
    plain = tiny_official(official_tiny_text, "configs__coco.yaml")
    with pytest.warns(UserWarning, match="learnable_cf: True"):
        eng = VQ_Diffusion(config=str(plain), path="learn.pth")
    assert eng.load_report.unexpected == ["transformer.empty_text_embed", "ema:empty_text_embed"]
    assert any("model.params AND at model.params.diffusion_config.params" in h for h in eng.load_report.hints)
    assert len(eng.inference_generate_sample_with_condition("x", 0.9, None, 1, fast=FAST, guidance_scale=3.0)) == 1


def test_learnable_cf_switch_chooses_the_null_condition(official_tiny_text, monkeypatch):
    learn = tiny_official(official_tiny_text, "configs__coco_tune.yaml")
    official_layout_checkpoint(learn, official_tiny_text / "learn.pth")
    eng = VQ_Diffusion(config=str(learn), path="learn.pth")
    trans = eng.model.transformer
    seen = []

    class Spy(sampling.Denoiser):
        def __init__(self, diffusion, cond_emb, uncond_emb, options, fixed=None):
            seen.append(uncond_emb)
            super().__init__(diffusion, cond_emb, uncond_emb, options, fixed)

    monkeypatch.setattr(sampling, "Denoiser", Spy)
    eng.inference_generate_sample_with_condition("x", 0.9, None, 2, fast=FAST, guidance_scale=3.0, learnable_cf=True)
    eng.inference_generate_sample_with_condition("x", 0.9, None, 2, fast=FAST, guidance_scale=3.0, learnable_cf=False)
    learned, clip_empty = seen
    torch.testing.assert_close(learned, trans.empty_text_embed.float().expand(2, -1, -1))
    tokens = eng.model.condition_codec.get_tokens([""] * 2)["token"]
    torch.testing.assert_close(clip_empty, trans.condition_emb(tokens).float())
    assert eng.model.learnable_cf is True  # the per-call switch did not stick


# --------------------------------------------------------------------------------------------------
# small helpers and the CLI
# --------------------------------------------------------------------------------------------------
def test_sample_type_string():
    assert sample_type_string(0.85) == "top0.85r"
    assert sample_type_string(0.85, fast=2) == "top0.85r,fast1"
    assert sample_type_string(1, fast=5) == "top1.0r,fast4"
    assert sample_type_string(0.86, infer_speed=0.5) == "top0.86r,time0.5"
    assert SamplingOptions.from_sample_type(sample_type_string(0.9, fast=2)).skip_step == 1
    assert SamplingOptions.from_sample_type(sample_type_string(0.9, infer_speed=2)).skip_step == 1
    for bad in (dict(fast=True), dict(fast=1), dict(fast=2, infer_speed=2), dict(infer_speed=-1)):
        with pytest.raises(ValueError):
            sample_type_string(0.9, **bad)
    with pytest.raises(ValueError, match="truncation_rate"):
        sample_type_string(1.5)


def test_safe_name_and_grid():
    assert safe_name("a red circle / at top?") == "a red circle _ at top_"
    assert safe_name("../../etc") == "_.._etc"
    assert safe_name("").startswith("empty_") and safe_name(407) == "407"
    assert len({safe_name(""), safe_name(".."), safe_name("empty"), safe_name(" ")}) == 4  # no shared folder
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert safe_name(long_a) != safe_name(long_b) and len(safe_name(long_a)) <= 120
    imgs = to_pil_images(torch.full((5, 3, 8, 6), 255.0))
    g = make_grid(imgs, nrow=3, padding=2)
    assert g.size == (3 * 6 + 4 * 2, 2 * 8 + 3 * 2)
    assert VQ_Diffusion.grid(imgs).size == make_grid(imgs).size


def test_cli_text_with_progress_bar(official_tiny_text, capsys):
    from vqdiff.sample import main

    rc = main(["--config", TINY_CFG, "--ckpt", TINY_CKPT, "--text", "a blue square", "-n", "2", "--out", "CLI",
               "--fast", str(FAST), "--seed", "0", "--guidance-scale", "2", "--grid"])
    assert rc == 0
    folder = official_tiny_text / "CLI" / "a blue square"
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png", "grid.png"]
    err = capsys.readouterr().err
    steps = len(S.timesteps(100, FAST - 1))
    assert f"{steps}/{steps}" in err  # the bar followed every diffusion step


def test_cli_label_and_unconditional(official_tiny_text):
    from vqdiff.sample import main

    cfg = tiny_official(official_tiny_text, "config_imagenet.yaml")
    official_layout_checkpoint(cfg, official_tiny_text / "c.pth")
    assert main(["--config", str(cfg), "--ckpt", "c.pth", "--label", "5", "-n", "1", "--out", "O",
                 "--fast", str(FAST), "--no-progress"]) == 0
    assert (official_tiny_text / "O" / "5" / "000000.jpg").is_file()
    cfg = tiny_official(official_tiny_text, "configs__ffhq.yaml")
    official_layout_checkpoint(cfg, official_tiny_text / "u.pth")
    assert main(["--config", str(cfg), "--ckpt", "u.pth", "-n", "1", "--out", "O", "--fast", str(FAST),
                 "--no-progress"]) == 0
    assert (official_tiny_text / "O" / "unconditional" / "000000.png").is_file()
