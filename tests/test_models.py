"""DALLE / C_DALLE / UC_DALLE with small fake codecs and networks (the codec interface only)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vqdiff.modeling.diffusion import DiffusionTransformer
from vqdiff.modeling.models import C_DALLE, DALLE, UC_DALLE

K, N, T, D = 5, 4, 6, 6


class FakeImageCodec(nn.Module):
    """(B,3,2,2) images in [0,255] <-> N=4 tokens: token = red channel // 52."""

    trainable = False
    token_shape = (2, 2)

    def __init__(self):
        super().__init__()
        self.encodes = 0

    def get_tokens(self, images, **kw):
        self.encodes += 1
        return {"token": (images[:, 0].reshape(images.shape[0], -1) // 52).long().clamp(0, K - 1)}

    def decode(self, tokens):
        img = (tokens.float() * 52).reshape(-1, 1, 2, 2)
        return img.expand(-1, 3, -1, -1).clone()

    def get_number_of_tokens(self):
        return K


class FakeTokenizer(nn.Module):
    """words -> 4 tokens [SOT, w, EOT, 0]; '' -> [SOT, EOT, 0, 0]; mask True on tokens."""

    def get_tokens(self, texts):
        toks, masks = [], []
        for s in texts:
            ids = [1] + [2 + (hash(w) % 40) for w in s.split()][:2] + [3]
            ids = (ids + [0] * 4)[:4]
            toks.append(ids)
            masks.append([i != 0 for i in ids])
        return {"token": torch.tensor(toks), "mask": torch.tensor(masks)}


class FakeNet(nn.Module):
    def __init__(self, cond_kind="text", num_classes=3):
        super().__init__()
        self.content_seq_len = N
        self.tok = nn.Embedding(K + 1, 8)
        self.temb = nn.Embedding(T, 8)
        self.cls = nn.Embedding(num_classes + 1, 8)
        self.cproj = nn.Linear(D, 8)
        self.out = nn.Linear(8, K)
        self.cond_kind = cond_kind
        self.batch_sizes = []

    def forward(self, x, cond, t):
        self.batch_sizes.append(x.shape[0])
        h = self.tok(x) + self.temb(t)[:, None]
        if self.cond_kind == "text":
            h = h + self.cproj(cond.float().mean(1))[:, None]
        elif self.cond_kind == "class":
            h = h + self.cls(cond.long())[:, None]
        return self.out(torch.tanh(h)).transpose(1, 2)


class FakeClassEmb(nn.Module):
    num_embed = 3

    def forward(self, labels):
        return labels


def diffusion(cond_kind="text", learnable_cf=False):
    cond_emb = nn.Embedding(50, D).requires_grad_(False) if cond_kind == "text" else (
        FakeClassEmb() if cond_kind == "class" else None)
    d = DiffusionTransformer(
        content_emb_config={"params": {"num_embed": K}},
        condition_emb_config=cond_emb,
        transformer_config=FakeNet(cond_kind),
        diffusion_step=T, auxiliary_loss_weight=5e-4, adaptive_auxiliary_loss=True, learnable_cf=learnable_cf,
    )
    if learnable_cf:
        d.empty_text_embed = nn.Parameter(torch.randn(4, D, dtype=torch.float64))
    return d


def images(b=2):
    return torch.randint(0, 256, (b, 3, 2, 2)).float()


def test_dalle_forward_from_images_or_token_cache():
    codec = FakeImageCodec()
    m = DALLE(content_codec_config=codec, condition_codec_config=FakeTokenizer(), diffusion_config=diffusion())
    out = m({"image": images(), "text": ["a red circle", "two dogs"]}, return_loss=True, step=0)
    assert torch.isfinite(out["loss"]) and codec.encodes == 1
    out = m({"content_token": torch.randint(0, K, (2, N)), "text": ["a", "b"]}, return_loss=True)
    assert torch.isfinite(out["loss"]) and codec.encodes == 1  # the cache skipped the encoder
    assert m.get_ema_model() is m.transformer
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert all(not n.startswith("transformer.condition_emb") for n in names)
    assert len(m.parameters_to_optimize()) == len(names)


def test_dalle_generate_per_call_arguments_and_reproducible():
    d = diffusion(learnable_cf=True)
    m = DALLE(content_codec_config=FakeImageCodec(), condition_codec_config=FakeTokenizer(),
              diffusion_config=d, learnable_cf=True)
    batch = {"text": ["a red circle"]}
    g = lambda s: torch.Generator().manual_seed(s)
    a = m.generate_content(batch=batch, filter_ratio=0, replicate=3, sample_type="top0.85r", generator=g(0))
    assert a["content"].shape == (3, 3, 2, 2) and a["content_token"].shape == (3, N)
    b = m.generate_content(batch=batch, filter_ratio=0, replicate=3, sample_type="top0.85r", generator=g(0))
    assert torch.equal(a["content_token"], b["content_token"])
    # a later call with other arguments really uses them (the official code reuses the first call's)
    d.transformer.batch_sizes.clear()
    m.generate_content(batch=batch, filter_ratio=0, replicate=2, sample_type="top0.5r", guidance_scale=3.0)
    assert set(d.transformer.batch_sizes) == {4}  # one batched call for cond + uncond
    d.transformer.batch_sizes.clear()
    m.generate_content(batch=batch, filter_ratio=0, replicate=5, sample_type="top1.0r,time2", guidance_scale=1.0)
    assert set(d.transformer.batch_sizes) == {5} and len(d.transformer.batch_sizes) == len(range(T - 1, -1, -2)) + 1
    assert m.training  # mode restored


def test_dalle_guidance_without_learnable_cf_uses_empty_caption():
    m = DALLE(content_codec_config=FakeImageCodec(), condition_codec_config=FakeTokenizer(), diffusion_config=diffusion())
    batch = {"text": ["a", "b"]}
    out = m.generate_content(batch=batch, filter_ratio=0, guidance_scale=2.0, sample_type="top0.9r,time0.5")
    assert (out["content_token"] < K).all() and batch["text"] == ["a", "b"]  # batch untouched


def test_learnable_cf_swaps_empty_captions_in_training():
    d = diffusion(learnable_cf=True)
    m = DALLE(content_codec_config=FakeImageCodec(), condition_codec_config=FakeTokenizer(),
              diffusion_config=d, learnable_cf=True)
    m.train()
    loss = m({"content_token": torch.randint(0, K, (2, N)), "text": ["", "dog"]}, return_loss=True)["loss"]
    loss.backward()
    assert d.empty_text_embed.grad is not None and d.empty_text_embed.grad.abs().sum() > 0


def test_dalle_train_time_sample_keys():
    m = DALLE(content_codec_config=FakeImageCodec(), condition_codec_config=FakeTokenizer(), diffusion_config=diffusion())
    out = m.sample({"image": images(), "text": ["a", "b"]}, filter_ratio=[0, 0.5])
    assert {"input_image", "reconstruction_image", "cond1_cont1_fr0_image", "cond1_cont1_fr0.5_image"} <= set(out)
    assert out["cond1_cont1_fr0.5_image"].shape == (2, 3, 2, 2)


def test_c_dalle_null_label_guidance_and_forward():
    d = diffusion("class")
    m = C_DALLE(content_codec_config=FakeImageCodec(), diffusion_config=d, guidance_scale=1.5)
    assert torch.isfinite(m({"image": images(), "label": [0, 2]})["loss"])
    d.transformer.batch_sizes.clear()
    out = m.generate_content(batch={"label": [1, 2]}, filter_ratio=0, replicate=2, sample_type="top0.9r")
    assert out["content_token"].shape == (4, N) and set(d.transformer.batch_sizes) == {8}
    assert m.null_label == 3


def test_uc_dalle_generate_and_forward():
    m = UC_DALLE(content_codec_config=FakeImageCodec(), diffusion_config=diffusion("none"))
    assert torch.isfinite(m({"image": images()})["loss"])
    out = m.generate_content(filter_ratio=0, replicate=3, sample_type="top0.9r,fast1")
    assert out["content"].shape == (3, 3, 2, 2)
    assert "cond1_cont1_fr0_image" in m.sample({"image": images()}, filter_ratio=[0])


def test_bad_sample_type_is_an_error():
    m = UC_DALLE(content_codec_config=FakeImageCodec(), diffusion_config=diffusion("none"))
    with pytest.raises(ValueError, match="sample_type"):
        m.generate_content(filter_ratio=0, sample_type="top0.9r,nonsense")
