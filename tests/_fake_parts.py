"""Tiny fake parts (codec, tokenizer, network, class embedding) and model builders shared by the tests
of editing, MaskGIT and guidance (moved from tests/test_beyond.py)."""

from __future__ import annotations

import torch
from torch import nn

from vqdiff.modeling.diffusion import DiffusionTransformer
from vqdiff.modeling.models import DALLE

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
