"""CLIP score (Hessel et al., arXiv 2104.08718, Eq. 1 with w = 100, as torchmetrics' CLIPScore):
``CLIPScore = 100 * mean_i max(cos(E_img(x_i), E_txt(c_i)), 0)``.

The CLIP model (arXiv 2103.00020) is rebuilt from a full OpenAI-CLIP state dict the user gives (nothing is
downloaded): its text tower is the project's ``CLIPTextTransformer`` (``vqdiff.modeling.embeddings.clip_model``,
the one tower the models condition on), with a ViT visual tower added here. Sizes are read from the tensors, as
the released models are laid out: ``visual.conv1.weight`` (W_v, 3, P, P), ``visual.positional_embedding``
(G*G + 1, W_v), ``token_embedding.weight`` (V, W_t), ``positional_embedding`` (L, W_t), heads = width // 64.
The released ``ViT-B-32.pt`` is a TorchScript archive holding fp16 weights; both that and a plain state
dict load, and everything runs in fp32.

Text is turned into ``(B, L)`` token ids by a tokenizer callable; the default is the project's CLIP BPE
tokenizer (``vqdiff.modeling.codecs.text.bpe``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from vqdiff.modeling.codecs.text.bpe import SimpleTokenizer
from vqdiff.modeling.embeddings.clip_model import (
    CLIPTextConfig,
    CLIPTextTransformer,
    QuickGELU,
    extract_text_state_dict,
    infer_text_config,
    is_torchscript_archive,
    read_torchscript_tensors,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ResidualAttentionBlock",
    "CLIPVisionTransformer",
    "CLIPModel",
    "load_clip_state_dict",
    "default_clip_tokenizer",
    "clip_score",
    "compute_clip_score",
]

# the image normalisation CLIP was trained with (RGB in [0, 1])
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

Tokenizer = Callable[[Sequence[str]], torch.Tensor]


class ResidualAttentionBlock(nn.Module):
    """The visual tower's pre-norm block (bidirectional attention): ``x + attn(ln_1(x))``, then
    ``x + mlp(ln_2(x))``; keys as in the CLIP release."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)  # (B, L, W)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _VisualTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class CLIPVisionTransformer(nn.Module):
    """ViT image tower: ``(B, 3, R, R)`` CLIP-normalised -> ``(B, D)`` embedding (R = grid * patch)."""

    def __init__(self, resolution: int, patch: int, width: int, layers: int, heads: int, embed_dim: int):
        super().__init__()
        if resolution % patch:
            raise ValueError(f"resolution {resolution} is not a multiple of the patch size {patch}")
        self.input_resolution = resolution
        grid = resolution // patch
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _VisualTransformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, G*G, W)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding  # (B, G*G+1, W)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj  # (B, D)


def _count_layers(sd: dict, prefix: str) -> int:
    pat = re.compile(rf"^{re.escape(prefix)}resblocks\.(\d+)\.")
    ids = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    return max(ids) + 1 if ids else 0


class CLIPModel(CLIPTextTransformer):
    """Both CLIP towers with the released key names: the project's text tower (``token_embedding``,
    ``transformer.*``, ``ln_final``, ``text_projection``; causal, read at the end-of-text token, the largest id
    of a row) plus ``visual.*`` and ``logit_scale``."""

    def __init__(self, visual: CLIPVisionTransformer, vocab: int, context_length: int, width: int, layers: int,
                 heads: int, embed_dim: int):
        super().__init__(CLIPTextConfig(vocab_size=vocab, context_length=context_length, width=width, layers=layers,
                                        heads=heads, embed_dim=embed_dim))
        self.visual = visual
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], heads: int | None = None) -> "CLIPModel":
        """Build with the sizes the tensors imply and load them (strict; text sizes via ``infer_text_config``)."""
        if "visual.conv1.weight" not in sd:
            if "visual.layer1.0.conv1.weight" in sd:
                raise ValueError("ResNet CLIP visual towers are not supported; use a ViT CLIP (e.g. ViT-B/32)")
            raise KeyError("state dict has no 'visual.conv1.weight'; is it a full OpenAI-CLIP state dict?")
        if "visual.proj" not in sd:
            raise KeyError("CLIP state dict lacks 'visual.proj'")
        text = infer_text_config(extract_text_state_dict(sd), heads=heads)
        v_width, _, patch, _ = sd["visual.conv1.weight"].shape
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        visual = CLIPVisionTransformer(grid * patch, patch, v_width, _count_layers(sd, "visual.transformer."),
                                       max(v_width // 64, 1), text.embed_dim)
        model = cls(visual, text.vocab_size, text.context_length, text.width, text.layers, text.heads, text.embed_dim)
        drop = ("input_resolution", "context_length", "vocab_size")  # ints kept in the TorchScript release
        model.load_state_dict({k: v.float() for k, v in sd.items() if k not in drop and not k.endswith("attn_mask")})
        return model.eval()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 255] -> CLIP input: short side resized (bicubic), centre crop, normalised."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 255], got shape {tuple(images.shape)}")
        r = self.visual.input_resolution
        x = images.float() / 255.0
        h, w = x.shape[-2:]
        if (h, w) != (r, r):
            scale = r / min(h, w)
            nh, nw = max(r, round(h * scale)), max(r, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
            top, left = (nh - r) // 2, (nw - r) // 2
            x = x[..., top:top + r, left:left + r]
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 255] -> ``(B, D)``."""
        return self.visual(self.preprocess(images.to(self.text_projection.device)))

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` token ids -> per-token ``ln_final`` features ``(B, L, W)`` (the models' text tower)."""
        L = self.context_length
        if tokens.dim() != 2 or tokens.shape[1] != L:
            raise ValueError(f"tokens must be (B, {L}), got {tuple(tokens.shape)}")
        return self(tokens.to(self.text_projection.device))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` token ids -> ``(B, D)``: the features at the end-of-text token, projected."""
        tokens = tokens.to(self.text_projection.device)
        return self.project_eot(self.text_features(tokens), tokens)


def load_clip_state_dict(path: str | Path, allow_jit_fallback: bool = False) -> dict[str, torch.Tensor]:
    """A full OpenAI-CLIP state dict from ``path``: a plain ``torch.save`` dict or the TorchScript release
    (read safely; ``allow_jit_fallback``: see ``read_torchscript_tensors``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights not found at {path}; nothing is downloaded -- put an "
                                f"OpenAI-CLIP ViT checkpoint (e.g. ViT-B-32.pt) there (see docs/evaluation.md)")
    if is_torchscript_archive(path):  # the project's safe reader: runs no code from the file
        sd = read_torchscript_tensors(path, allow_jit_fallback=allow_jit_fallback)
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path} is neither a state dict nor a readable TorchScript CLIP archive: {err}") from err
        if isinstance(sd, torch.jit.ScriptModule):
            sd = sd.state_dict()
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    return dict(sd)


def default_clip_tokenizer(context_length: int = 77) -> Tokenizer:
    """A callable ``texts -> (B, context_length)`` long ids: ``<sot> bpe(text) <eot>``, truncated, 0-padded."""
    bpe = SimpleTokenizer()
    sot, eot = bpe.encoder["<|startoftext|>"], bpe.encoder["<|endoftext|>"]

    def tokenize(texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [sot] + bpe.encode(text)[: context_length - 2] + [eot]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    return tokenize


@torch.no_grad()
def clip_score(model: CLIPModel, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-pair CLIP score ``100 * max(cos(E_img(x_i), E_txt(c_i)), 0)``, shape ``(B,)``.

    Args:
        images: ``(B, 3, H, W)`` in [0, 255]; tokens: ``(B, L)`` ids of the paired captions.
    """
    if len(images) != len(tokens):
        raise ValueError(f"{len(images)} images but {len(tokens)} token rows")
    img = F.normalize(model.encode_image(images).float(), dim=-1)
    txt = F.normalize(model.encode_text(tokens).float(), dim=-1)
    return 100.0 * (img * txt).sum(-1).clamp(min=0)


def compute_clip_score(
    model: CLIPModel,
    pairs: Iterable[tuple[torch.Tensor, Sequence[str]]],
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
) -> float:
    """Mean CLIP score over a stream of ``(images (B, 3, H, W) in [0, 255], captions [B])`` batches."""
    tokenizer = tokenizer or default_clip_tokenizer(model.context_length)
    total, n = 0.0, 0
    for images, captions in tqdm(pairs, desc="CLIP score", disable=not progress, unit="batch"):
        scores = clip_score(model, images, tokenizer(list(captions)))
        total += scores.sum().item()
        n += len(scores)
    if n == 0:
        raise ValueError("no image/caption pairs given")
    return total / n
