"""Beyond the official code: inpainting/editing, the MaskGIT confidence sampler, negative prompts,
guidance-scale schedules and codebook health (tiny fake parts; one test on the official tiny model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from vqdiff.editing import (
    edit_tokens,
    inpaint_figure,
    inpaint_image,
    inpaint_tokens,
    token_mask_from_pixel_mask,
    token_mask_to_pixels,
)
from vqdiff.evaluation.codebook import (
    CodebookUsageHook,
    build_mapping_from_counts,
    check_mapping_round_trip,
    count_codec_tokens,
    save_mapping,
    usage_statistics,
)
from vqdiff.modeling.codecs.image.token_mapping import count_tokens, invert_token_mapping, load_token_mapping
from vqdiff.modeling.diffusion import DiffusionTransformer
from vqdiff.modeling.diffusion import samplers as S
from vqdiff.modeling.diffusion.maskgit import mask_ratio, maskgit_timesteps, sample_maskgit
from vqdiff.modeling.models import C_DALLE, DALLE, UC_DALLE

K, T, D = 6, 10, 6
H_TOK, W_TOK = 4, 4
N = H_TOK * W_TOK
PIX = 2  # pixels per token side: images are 8x8


class FakeCodec(nn.Module):
    """(B,3,8,8) images in [0,255] <-> 4x4 tokens: token = mean red of a 2x2 patch // 43."""

    trainable = False
    token_shape = (H_TOK, W_TOK)

    def get_tokens(self, images, **kw):
        red = images[:, 0].reshape(-1, H_TOK, PIX, W_TOK, PIX).mean(dim=(2, 4))
        return {"token": (red // 43).long().clamp(0, K - 1).reshape(images.shape[0], N)}

    def decode(self, tokens):
        img = (tokens.float() * 43).reshape(-1, 1, H_TOK, W_TOK)
        img = img.repeat_interleave(PIX, 2).repeat_interleave(PIX, 3)
        return img.expand(-1, 3, -1, -1).clone()

    def get_number_of_tokens(self):
        return K


class FakeTokenizer(nn.Module):
    """words -> 4 tokens [SOT, w1, w2, EOT] (deterministic ids); '' -> [SOT, EOT, 0, 0]."""

    def get_tokens(self, texts):
        toks, masks = [], []
        for s in texts:
            ids = [1] + [2 + sum(map(ord, w)) % 40 for w in s.split()][:2] + [3]
            ids = (ids + [0] * 4)[:4]
            toks.append(ids)
            masks.append([i != 0 for i in ids])
        return {"token": torch.tensor(toks), "mask": torch.tensor(masks)}


class FakeNet(nn.Module):
    """Counts calls; logits depend on the tokens, the step and the condition."""

    def __init__(self, cond_kind="text"):
        super().__init__()
        self.content_seq_len = N
        self.tok = nn.Embedding(K + 1, 8)
        self.pos = nn.Parameter(torch.randn(N, 8))
        self.temb = nn.Embedding(T, 8)
        self.cls = nn.Embedding(4, 8)
        self.cproj = nn.Linear(D, 8)
        self.out = nn.Linear(8, K)
        self.cond_kind = cond_kind
        self.calls = []  # (batch size, t values)

    def forward(self, x, cond, t):
        self.calls.append((x.shape[0], t.tolist()))
        h = self.tok(x) + self.pos + self.temb(t)[:, None]
        if self.cond_kind == "text":
            h = h + 3 * self.cproj(cond.float().mean(1))[:, None]
        elif self.cond_kind == "class":
            h = h + self.cls(cond.long())[:, None]
        return 2 * self.out(torch.tanh(h)).transpose(1, 2)


class FakeClassEmb(nn.Module):
    num_embed = 3

    def forward(self, labels):
        return labels


def make_diffusion(cond_kind="text", learnable_cf=False):
    cond_emb = nn.Embedding(50, D).requires_grad_(False) if cond_kind == "text" else (
        FakeClassEmb() if cond_kind == "class" else None)
    d = DiffusionTransformer(
        content_emb_config={"params": {"num_embed": K}}, condition_emb_config=cond_emb,
        transformer_config=FakeNet(cond_kind), diffusion_step=T, learnable_cf=learnable_cf,
    )
    if learnable_cf:
        d.empty_text_embed = nn.Parameter(torch.randn(4, D, dtype=torch.float64))
    return d


def dalle(learnable_cf=False):
    return DALLE(content_codec_config=FakeCodec(), condition_codec_config=FakeTokenizer(),
                 diffusion_config=make_diffusion("text", learnable_cf), learnable_cf=learnable_cf)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


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


# ------------------------------------------------------------------------------------------- MaskGIT
def test_maskgit_exactly_s_calls_schedule_and_all_revealed():
    d = make_diffusion()
    calls = []
    base = d.make_denoiser(torch.randn(2, 4, D))

    def denoise(x, t):
        calls.append(t.clone())
        return base(x, t)

    x = torch.full((2, N), K, dtype=torch.long)
    masked_after = []
    S_ = 4
    steps = maskgit_timesteps(T, S_, "linear")
    out = sample_maskgit(d, denoise, x, steps, generator=gen(0), schedule="linear",
                         callback=lambda i: masked_after.append((i["x"] == K).sum(1).tolist()))
    assert len(calls) == S_ and steps[0] == T - 1 and steps == sorted(steps, reverse=True)
    assert masked_after == [[12, 12], [8, 8], [4, 4], [0, 0]]  # floor(16 * (1 - (i+1)/4)), hand count
    assert not bool((out == K).any())
    assert mask_ratio("cosine", 1.0) == 0.0 and mask_ratio("cosine", 0.0) == 1.0
    with pytest.raises(ValueError, match="mask schedule"):
        mask_ratio("zigzag", 0.5)


@pytest.mark.parametrize("S_", [1, 3, 7])
def test_maskgit_from_generate_content_counts_network_calls(S_):
    m = dalle()
    net = m.transformer.transformer
    history = []
    out = m.generate_content(batch={"text": ["a red circle"]}, filter_ratio=0, replicate=2,
                             sample_type=f"top0.85r,maskgit{S_}:cosine", guidance_scale=3.0, generator=gen(0),
                             callback=lambda i: history.append(i["x"].clone()))
    assert len(net.calls) == S_  # one batched (cond + uncond) network call per step
    assert all(bs == 4 for bs, _ in net.calls)
    assert not bool((out["content_token"] == K).any())
    for prev, cur in zip(history, history[1:]):  # once revealed, a token stays
        kept = prev != K
        assert torch.equal(cur[kept], prev[kept])
        assert int((cur == K).sum()) < int((prev == K).sum())
    with pytest.raises(ValueError, match="mask schedule"):
        S.parse_sample_type("maskgit4:zigzag")


# ------------------------------------------------------------------------------------------- negative prompts
@pytest.mark.parametrize("learnable_cf", [False, True])
def test_empty_negative_prompt_reproduces_ordinary_guidance(learnable_cf):
    m = dalle(learnable_cf)
    batch = {"text": ["a red circle", "a blue square"]}
    for st in ("top0.85r", "top0.85r,maskgit4"):
        a = m.generate_content(batch=batch, filter_ratio=0, sample_type=st, guidance_scale=4.0, generator=gen(5))
        b = m.generate_content(batch=batch, filter_ratio=0, sample_type=st, guidance_scale=4.0, generator=gen(5),
                               negative_prompt="")
        c = m.generate_content(batch=batch, filter_ratio=0, sample_type=st, guidance_scale=4.0, generator=gen(5),
                               negative_prompt=["", ""])
        assert torch.equal(a["content_token"], b["content_token"]) and torch.equal(a["content_token"], c["content_token"])
    # a real negative prompt replaces the unconditional branch row by row
    base = m._uncond_embedding(2)
    neg = m.negative_embedding(["", "green triangle"], 2)
    assert torch.equal(neg[0], base[0]) and not torch.equal(neg[1], base[1])
    tok = m.prepare_condition(None, condition=["green triangle"])["condition_token"]
    assert torch.allclose(neg[1], m.transformer.condition_emb(tok)[0].float())
    with pytest.raises(ValueError, match="negative_prompt"):
        m.negative_embedding(["a", "b", "c"], 2)


def test_negative_prompt_is_used_in_the_guided_formula():
    d = make_diffusion()
    cond, negv = torch.randn(1, 4, D), torch.randn(1, 4, D)
    x = torch.full((1, N), K, dtype=torch.long)
    t = torch.tensor([T - 1])
    s = 2.5
    out = d.make_denoiser(cond, uncond_emb=negv, guidance_scale=s)(x, t)
    lc = d.predict_start_index(x, cond, t)[:, :K]
    ln = d.predict_start_index(x, negv, t)[:, :K]
    ref = (ln + s * (lc - ln)).log_softmax(1)
    assert torch.allclose(out[:, :K], ref, atol=1e-5)


# ------------------------------------------------------------------------------------------- guidance schedules
def test_guidance_schedules_give_the_stated_scale_per_step():
    assert S.guidance_scales(3.0, 5) == [3.0] * 5
    assert S.guidance_scales("constant:2", 3) == [2.0] * 3
    # index t; the first (noisiest) step t = T-1 gets the start value, t = 0 the end value
    assert S.guidance_scales("linear:1:5", 5) == [5.0, 4.0, 3.0, 2.0, 1.0]
    cos = S.guidance_scales({"kind": "cosine", "start": 1.0, "end": 3.0}, 5)
    assert cos == pytest.approx([3.0, 1 + (1 - math.cos(math.pi * 0.75)), 2.0, 1 + (1 - math.cos(math.pi * 0.25)), 1.0])
    assert S.guidance_scales(lambda p: 1 + p, 3) == [2.0, 1.5, 1.0]
    assert S.guidance_scales(np.float32(2.5), 2) == [2.5, 2.5] and S.guidance_scales(torch.tensor(2.0), 1) == [2.0]
    assert S.is_guided("linear:1:1", 4) is False and S.is_guided("linear:1:2", 4) is True
    with pytest.raises(ValueError, match="guidance schedule"):
        S.guidance_scales("exp:1:2", 4)
    with pytest.raises(ValueError, match="one value per step"):
        S.guidance_scales([1.0, 2.0], 4)

    # the denoiser uses s(t) at every step
    d = make_diffusion()
    cond, unc = torch.randn(1, 4, D), torch.randn(1, 4, D)
    den = d.make_denoiser(cond, uncond_emb=unc, guidance_scale="linear:1:5")
    table = S.guidance_scales("linear:1:5", T)
    x = torch.randint(0, K + 1, (1, N), generator=gen(0))
    for t_int in (T - 1, 4, 0):
        t = torch.tensor([t_int])
        lc, lu = d.predict_start_index(x, cond, t)[:, :K], d.predict_start_index(x, unc, t)[:, :K]
        ref = (lu + table[t_int] * (lc - lu)).log_softmax(1).clamp(-70, 0)
        assert torch.allclose(den(x, t)[:, :K], ref, atol=1e-5)
    # through the model: a constant schedule equals the plain number
    m = dalle()
    a = m.generate_content(batch={"text": ["a"]}, filter_ratio=0, guidance_scale=3.0, generator=gen(1))
    b = m.generate_content(batch={"text": ["a"]}, filter_ratio=0, guidance_scale="constant:3", generator=gen(1))
    assert torch.equal(a["content_token"], b["content_token"])
    m.generate_content(batch={"text": ["a"]}, filter_ratio=0, guidance_scale="cosine:1:4", generator=gen(1))


# ------------------------------------------------------------------------------------------- codebook health
def test_usage_statistics_match_a_hand_count():
    tokens = torch.tensor([[0, 0, 1, 3], [3, 3, 0, 1]])  # counts: 0:3, 1:2, 2:0, 3:3, 4:0
    counts = count_tokens(tokens, 5)
    assert counts.tolist() == [3, 2, 0, 3, 0]
    st = usage_statistics(counts, top=2)
    p = [3 / 8, 2 / 8, 3 / 8]
    H = -sum(q * math.log(q) for q in p)
    assert st["total"] == 8 and st["used"] == 3 and st["dead"] == 2 and st["dead_codes"] == [2, 4]
    assert st["usage"] == pytest.approx(0.6)
    assert st["entropy"] == pytest.approx(H) and st["perplexity"] == pytest.approx(math.exp(H))
    assert st["entropy_bits"] == pytest.approx(H / math.log(2))
    assert st["top_codes"] == [(0, 3, 3 / 8), (3, 3, 3 / 8)]  # ties: lower code first
    assert usage_statistics(torch.full((7,), 4))["perplexity"] == pytest.approx(7.0)
    with pytest.raises(ValueError, match="non-negative"):
        usage_statistics(torch.tensor([1, -1]))

    hook = CodebookUsageHook(5, top=3)
    hook.update(tokens[0])
    hook.update(torch.cat([tokens[1], torch.tensor([5, 5])]))  # [MASK] = 5 is ignored
    r = hook.report()
    assert hook.counts.tolist() == [3, 2, 0, 3, 0] and r["ignored"] == 2 and r["updates"] == 2
    assert r["perplexity"] == pytest.approx(math.exp(H)) and "3/5 codes used" in hook.summary()
    state = hook.state_dict()
    other = CodebookUsageHook(5)
    other.load_state_dict(state)
    assert torch.equal(other.counts, hook.counts)
    hook.reset()
    assert hook.report()["total"] == 0


def test_mapping_from_counts_round_trips(tmp_path):
    counts = torch.tensor([0, 5, 0, 2, 9, 0, 1, 0])
    used = torch.tensor([1, 3, 4, 6, 6, 1])
    # the plain official construction: code 0 is unused, so compact 0 decodes to the dead code 0
    official, qn0 = build_mapping_from_counts(counts, round_trip=False)
    assert qn0 == 4 and official.tolist() == [0, 0, 0, 1, 2, 0, 3, 0]
    assert not check_mapping_round_trip(official, qn0, used)
    # the default keeps code 0 as compact 0, and every used code round-trips
    mapping, qn = build_mapping_from_counts(counts)
    assert qn == 5 and mapping.tolist() == [0, 1, 0, 2, 3, 0, 4, 0]
    assert check_mapping_round_trip(mapping, qn, used)
    inverse = invert_token_mapping(mapping, qn)
    assert inverse.tolist() == [0, 1, 3, 4, 6] and torch.equal(mapping[inverse], torch.arange(qn))
    path = save_mapping(tmp_path / "stats" / "my_map.pt", mapping)
    assert torch.equal(load_token_mapping(path, num_tokens=8, quantize_number=qn), mapping)
    m2, qn2 = build_mapping_from_counts(counts, min_count=2)
    assert qn2 == 4 and check_mapping_round_trip(m2, qn2, torch.tensor([1, 3, 4]))
    # a codebook whose code 0 is used needs no extra id
    assert build_mapping_from_counts(torch.tensor([3, 0, 1]))[1] == 2


class RemappingCodec(nn.Module):
    """A codec with a remapping: ``enc`` gives full codes 0..7, ``get_tokens`` compact ones."""

    num_tokens = 8
    quantize_number = 4

    def __init__(self):
        super().__init__()
        self.full_to_quantize = torch.tensor([0, 0, 1, 0, 2, 0, 3, 0])

    def preprocess(self, images):
        return images / 255

    def enc(self, x):
        return (x[:, 0].reshape(x.shape[0], -1) * 7.999).long()

    def get_tokens(self, images, **kw):
        return {"token": self.full_to_quantize[self.enc(self.preprocess(images))]}

    def get_number_of_tokens(self):
        return 4


class TinyImagesCodec(RemappingCodec):
    pass


class TinyImages(torch.utils.data.Dataset):
    def __init__(self, num_samples=5):
        self.n = num_samples

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        img = torch.zeros(3, 2, 2)
        img[0] = torch.tensor([[0.0, 40.0], [40.0, 255.0]]) if i % 2 == 0 else 40.0
        return {"image": img}


def test_count_codec_tokens_raw_and_script(tmp_path):
    codec = RemappingCodec()
    ds = TinyImages(5)
    # even items: codes [0, 1, 1, 7]; odd items: [1, 1, 1, 1] -> 3 even + 2 odd
    raw = count_codec_tokens(codec, ds)
    assert raw.tolist() == [3, 6 + 8, 0, 0, 0, 0, 0, 3]
    compact = count_codec_tokens(codec, [ds[0]["image"].unsqueeze(0)], raw=False)
    assert compact.tolist() == [4, 0, 0, 0]  # codes 0, 1, 7 all map to compact 0
    assert count_codec_tokens(codec, ds, max_images=1).sum().item() == 4

    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import codebook_health

    (tmp_path / "codec.yaml").write_text(f"content_codec_config:\n  target: {__name__}.TinyImagesCodec\n")
    (tmp_path / "data.yaml").write_text(f"target: {__name__}.TinyImages\nparams:\n  num_samples: 5\n")
    stats = codebook_health.main([
        "--codec_config", str(tmp_path / "codec.yaml"), "--dataset_config", str(tmp_path / "data.yaml"),
        "--report", str(tmp_path / "r.json"), "--out_mapping", str(tmp_path / "map.pt"), "--top", "2",
    ])
    assert stats["used"] == 3 and stats["dead"] == 5 and stats["quantize_number"] == 3
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"] == raw.tolist() and report["top_codes"][0][0] == 1
    assert load_token_mapping(tmp_path / "map.pt", 8, 3).tolist() == [0, 1, 0, 0, 0, 0, 0, 2]


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
