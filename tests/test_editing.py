"""Inpainting and editing beyond the official code: token masks, pinned tokens, partial noising,
and the notebook API's ``inference_inpaint`` (tiny fake parts; two tests on the official tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqdiff.editing import (
    edit_tokens,
    inpaint_figure,
    inpaint_image,
    inpaint_tokens,
    token_mask_from_pixel_mask,
    token_mask_to_pixels,
)
from vqdiff.modeling.models import C_DALLE, UC_DALLE

from _fake_parts import K, T, N, FakeCodec, make_diffusion, dalle, gen


# ------------------------------------------------------------------------------------------- masks
def test_token_mask_from_pixel_mask_any_pixel_rule_and_token_space():
    pix = torch.zeros(8, 8, dtype=torch.bool)
    pix[3, 5] = True  # token row 1, col 2
    pix[7, 0] = True  # token row 3, col 0
    tm = token_mask_from_pixel_mask(pix, (4, 4))
    expect = torch.zeros(1, 16, dtype=torch.bool)
    expect[0, 1 * 4 + 2] = expect[0, 3 * 4 + 0] = True
    assert torch.equal(tm, expect)
    # token-space masks pass through, numpy and uint8 PIL-like inputs work, batches repeat
    tok = np.zeros((4, 4), dtype=np.uint8)
    tok[0, 0] = 255
    assert token_mask_from_pixel_mask(tok, (4, 4), batch_size=3).sum(1).tolist() == [1, 1, 1]
    from PIL import Image

    assert torch.equal(token_mask_from_pixel_mask(Image.fromarray(pix.numpy().astype(np.uint8) * 255), (4, 4)), expect)
    # the pixels of the masked tokens cover the original pixels
    back = token_mask_to_pixels(tm, (4, 4), (8, 8))[0]
    assert bool(back[pix].all()) and int(back.sum()) == 2 * 4
    with pytest.raises(ValueError, match="multiple"):
        token_mask_from_pixel_mask(torch.zeros(7, 8), (4, 4))


# ------------------------------------------------------------------------------------------- inpainting
@pytest.mark.parametrize(
    "sample_type,prior_rule,scale,fr",
    [
        ("top0.85r", 0, 1.0, 0.0),  # ancestral, every step
        ("top0.85r", 2, 3.0, 0.0),  # Improved purity rule, guided
        ("top0.9r,fast2", 0, 3.0, 0.0),  # skip-step
        ("top0.85r,maskgit4", None, 3.0, 0.0),  # confidence-ordered
        ("normal", 0, 1.0, 0.6),  # partial noising limited to the region
    ],
)
def test_inpainting_never_changes_tokens_outside_the_mask(sample_type, prior_rule, scale, fr):
    m = dalle()
    tokens = torch.randint(0, K, (2, N), generator=gen(1))
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[0, 5:11] = True
    mask[1, [0, 3, 15]] = True
    seen = []
    out = inpaint_tokens(m, tokens, mask, ["a red circle", "a blue square"], sample_type=sample_type,
                         guidance_scale=scale, prior_rule=prior_rule, filter_ratio=fr, generator=gen(2),
                         callback=lambda info: seen.append(info["x"].clone()))
    assert seen, "the sampler reported no step"
    for x in seen:  # EVERY step's output
        assert torch.equal(x[~mask], tokens[~mask])
    final = out["content_token"]
    assert torch.equal(final[~mask], tokens[~mask])
    assert not bool((final[mask] == K).any()) and int(final.max()) < K
    assert out["content"].shape == (2, 3, 8, 8)


def test_inpainting_changes_the_region_and_respects_every_model_kind():
    m = dalle()
    tokens = torch.zeros(1, N, dtype=torch.long)
    mask = torch.ones(1, N, dtype=torch.bool)
    mask[0, :4] = False
    outs = [inpaint_tokens(m, tokens, mask, "a red circle", sample_type="normal", generator=gen(s))["content_token"]
            for s in range(3)]
    assert any(bool((o[mask] != 0).any()) for o in outs)  # the region is really resampled
    # class-conditional and unconditional models
    c = C_DALLE(content_codec_config=FakeCodec(), diffusion_config=make_diffusion("class"))
    u = UC_DALLE(content_codec_config=FakeCodec(), diffusion_config=make_diffusion(None))
    for model, cond in ((c, 2), (u, None)):
        seen = []
        out = inpaint_tokens(model, tokens.expand(2, -1), mask, cond, sample_type="top0.85r,maskgit3",
                             generator=gen(0), callback=lambda i: seen.append(i["x"].clone()))
        assert len(seen) == 3 and all(torch.equal(x[:, :4], torch.zeros(2, 4, dtype=torch.long)) for x in seen)
        assert out["content_token"].shape == (2, N) and not bool((out["content_token"] == K).any())


def test_edit_tokens_is_the_official_partial_noising():
    m = dalle()
    tokens = torch.randint(0, K, (1, N), generator=gen(3))
    ts = []
    out = edit_tokens(m, tokens, "a red circle", filter_ratio=0.5, sample_type="normal", generator=gen(0),
                      callback=lambda i: ts.append(i["t"]))
    assert ts == list(range(int(T * 0.5) - 1, -1, -1))  # starts at step int(T fr) - 1, one call per step
    assert out["content_token"].shape == (1, N) and int(out["content_token"].max()) < K
    with pytest.raises(ValueError, match="filter_ratio"):
        edit_tokens(m, tokens, "x", filter_ratio=0.0)


def test_inpaint_image_and_figure(tmp_path):
    m = dalle()
    image = torch.randint(0, 256, (3, 8, 8)).float()
    pix = torch.zeros(8, 8, dtype=torch.bool)
    pix[:3, :3] = True  # touches tokens (0,0),(0,1),(1,0),(1,1)
    res = inpaint_image(m, image, pix, "a red circle", sample_type="top0.85r,fast3", generator=gen(0),
                        save_path=tmp_path / "fig" / "inpaint.png")
    assert res["token_mask"].sum().item() == 4
    keep = ~res["token_mask"]
    assert torch.equal(res["content_token"][keep], res["input_token"][keep])
    from PIL import Image

    fig = np.asarray(Image.open(tmp_path / "fig" / "inpaint.png"))
    assert fig.shape == (8, 3 * 8 + 2 * 2, 3)
    assert np.array_equal(fig[:, :8], image.permute(1, 2, 0).round().to(torch.uint8).numpy())
    arr = inpaint_figure(image, res["pixel_mask"], res["content"][0])  # the repainted tokens' pixels
    assert arr.dtype == np.uint8 and np.array_equal(arr, fig)


# ------------------------------------------------------------------------------------------- official tiny model
def test_inpaint_on_the_official_tiny_model(official_tiny_text, tmp_path):
    from vqdiff.utils.config import instantiate_from_config, load_yaml_config

    cfg = load_yaml_config(official_tiny_text / "config_tiny_text.yaml")
    model = instantiate_from_config(cfg["model"])
    ckpt = torch.load(official_tiny_text / "tiny_text_official.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["model"], strict=False)
    h, w = model.content_codec.token_shape
    size = model.content_codec.get_tokens(torch.zeros(1, 3, 64, 64))["token"].shape[1]
    side = 64 if size == h * w else None
    assert side is not None
    image = torch.randint(0, 256, (1, 3, side, side), generator=gen(0)).float()
    pix = torch.zeros(side, side, dtype=torch.bool)
    pix[side // 2:, :] = True  # the bottom half
    seen = []
    res = inpaint_image(model, image, pix, "a red circle", sample_type="top0.85r,fast10", guidance_scale=2.0,
                        negative_prompt="blue", generator=gen(1), save_path=tmp_path / "inpaint.png",
                        callback=lambda i: seen.append(i["x"].clone()))
    keep = ~res["token_mask"]
    assert int(res["token_mask"].sum()) == h * w // 2
    for x in seen:
        assert torch.equal(x[keep], res["input_token"][keep])
    assert not bool((res["content_token"] == model.transformer.num_classes - 1).any())
    assert (tmp_path / "inpaint.png").is_file() and res["content"].shape == image.shape


def test_api_inference_inpaint_keeps_unmasked_tokens(official_tiny_text, tmp_path):
    """VQ_Diffusion.inference_inpaint: at every step the tokens outside the mask are the input's."""
    from inference_VQ_Diffusion import VQ_Diffusion

    api = VQ_Diffusion(config="config_tiny_text.yaml", path="tiny_text_official.pth", device="cpu")
    image = torch.load("expected.pt", weights_only=False)["images"][:1]
    mask = torch.zeros(64, 64)
    mask[:32, :32] = 1  # top-left quarter of the pixels = top-left 4x4 of the 8x8 tokens
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[:4, :4] = False
    keep = keep.flatten()
    before = api.model.content_codec.get_tokens(image)["token"][0]
    steps = []
    pil = api.inference_inpaint(image, mask, "a red circle", truncation_rate=1.0, save_root=tmp_path, seed=0,
                                callback=lambda info: steps.append(info["x"][0].clone()))
    assert len(pil) == 1 and pil[0].size == (64, 64) and len(steps) > 1
    for x in steps:
        assert torch.equal(x[keep], before[keep])
    K = api.model.content_codec.get_number_of_tokens()
    assert (steps[-1] < K).all()  # no [MASK] left in the repainted region
    assert (tmp_path / "a red circle" / "000000.png").is_file()
    assert (tmp_path / "a red circle" / "inpaint_000000.png").is_file()
