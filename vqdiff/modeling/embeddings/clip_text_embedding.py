"""``CLIPTextEmbedding``: the frozen CLIP text tower as the condition embedding of VQ-Diffusion.

VQ-Diffusion (arXiv 2111.14822, Sec. 4.1) conditions on CLIP ViT-B/32 text features: with
``pick_last_embedding=False`` (every official config) the output is the ``ln_final`` feature of every
one of the 77 positions, ``(B, 77, 512)``, each L2-normalised when ``normalize``; the network's cross
attention reads it. The official code runs the tower in fp16; this one runs in the module's dtype
(fp32), with the released fp16 weights cast on load (about 5e-4 relative difference).

The weights come from ``clip_path``, or for ``clip_name='ViT-B/32'`` from the official location
``OUTPUT/pretrained_model/ViT-B-32.pt`` relative to the working directory (never downloaded), or from
``clip_name`` itself when it is a file. The module's own state dict holds exactly the CLIP text keys,
so the ``transformer.condition_emb.*`` entries of an official checkpoint load into it strictly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vqdiff.modeling.embeddings.clip_model import CLIPTextTransformer, infer_text_config, load_clip_state_dict

__all__ = ["OFFICIAL_CLIP_PATHS", "resolve_clip_path", "CLIPTextEmbedding"]

# Where the official code expects each named CLIP release (relative to the working directory).
OFFICIAL_CLIP_PATHS: dict[str, str] = {"ViT-B/32": "OUTPUT/pretrained_model/ViT-B-32.pt"}


def resolve_clip_path(clip_name: str, clip_path: str | os.PathLike | None = None) -> Path:
    """The CLIP weight file for ``clip_name`` (``clip_path`` wins when given).

    Raises:
        FileNotFoundError: naming every path tried and the working directory.
    """
    tried: list[Path] = []
    if clip_path is not None:
        tried.append(Path(clip_path))
    else:
        if clip_name in OFFICIAL_CLIP_PATHS:
            tried.append(Path(OFFICIAL_CLIP_PATHS[clip_name]))
        tried.append(Path(clip_name))
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"CLIP weights for clip_name={clip_name!r} not found; tried "
        + ", ".join(f"'{p}'" for p in tried)
        + f" (relative to the working directory '{Path.cwd()}'). Nothing is downloaded: put OpenAI's "
        f"ViT-B-32.pt at {OFFICIAL_CLIP_PATHS['ViT-B/32']} or give 'clip_path'. Known names: "
        f"{', '.join(OFFICIAL_CLIP_PATHS)}"
    )


class CLIPTextEmbedding(CLIPTextTransformer):
    """Frozen CLIP text embedding (official parameters).

    Args:
        clip_name: ``'ViT-B/32'`` (weights at ``OUTPUT/pretrained_model/ViT-B-32.pt``) or a file path.
        num_embed: vocabulary size; must match the weights (49408).
        normalize: L2-normalise each output vector (over the last dim).
        pick_last_embedding: return only the end-of-text feature times ``text_projection`` (B, E)
            instead of every position's ``ln_final`` feature (B, L, width).
        keep_seq_len_dim: with ``pick_last_embedding`` (or for ``last_embed``), keep a length-1 axis:
            (B, 1, E).
        additional_last_embedding: also return the projected end-of-text feature (un-normalised), as
            ``(features, last)``.
        embed_dim: 1024 concatenates the features with themselves on the last dim (official quirk to
            reach 1024 from 512); any other value leaves them as they are.
        clip_path: explicit weight file (overrides ``clip_name``'s location).
        allow_jit_fallback: read a TorchScript archive the safe reader does not know with ``torch.jit.load``
            (trusted files only; default: refused with a message, see ``read_torchscript_tensors``).

    ``forward(index (B, L) long) -> (B, L, width)`` float (or the shapes above); ids below 0 count as 0.
    Always in eval mode, parameters have ``requires_grad=False``, computed without autograd.
    """

    def __init__(
        self,
        clip_name: str = "ViT-B/32",
        num_embed: int = 49408,
        normalize: bool = True,
        pick_last_embedding: bool = True,
        keep_seq_len_dim: bool = False,
        additional_last_embedding: bool = False,
        embed_dim: int = 1024,
        clip_path: str | None = None,
        allow_jit_fallback: bool = False,
    ):
        path = resolve_clip_path(clip_name, clip_path)
        weights = load_clip_state_dict(path, allow_jit_fallback=bool(allow_jit_fallback))
        config = infer_text_config(weights)
        if num_embed != config.vocab_size:
            raise ValueError(
                f"num_embed={num_embed} but the CLIP weights in '{path}' have a {config.vocab_size}-token vocabulary"
            )
        super().__init__(config)
        self.load_text_weights(weights)
        self.clip_name = clip_name
        self.clip_path = str(path)
        self.num_embed = num_embed
        self.normalize = normalize
        self.pick_last_embedding = pick_last_embedding
        self.keep_seq_len_dim = keep_seq_len_dim
        self.additional_last_embedding = additional_last_embedding
        # the official code: 1024 doubles the projection width by concatenation, else the projection width
        self.embed_dim = config.embed_dim * 2 if embed_dim == 1024 else config.embed_dim
        self._concat_twice = embed_dim == 1024
        self.trainable = False
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "CLIPTextEmbedding":
        """Frozen: stays in eval mode whatever is asked."""
        return super().train(False)

    def encode_text(self, index: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, width) ``ln_final`` features, or (B, E) / (B, 1, E) projected EOT features."""
        x = super().forward(index)
        if self.pick_last_embedding:
            x = self.project_eot(x, index)
            if self.keep_seq_len_dim:
                x = x.unsqueeze(1)
        return x

    @torch.no_grad()
    def forward(self, index: torch.Tensor, **kwargs) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``index`` (B, L) token ids (``mask`` and other keywords are accepted and ignored, as officially)."""
        if index.dim() != 2:
            raise ValueError(f"CLIPTextEmbedding expects token ids of shape (B, L), got {tuple(index.shape)}")
        index = index.to(self.token_embedding.weight.device).long().clamp_min(0)  # padded ids may be negative
        text_feature = self.encode_text(index)
        features = torch.cat((text_feature, text_feature), dim=-1) if self._concat_twice else text_feature
        if self.normalize:
            features = features / features.norm(dim=-1, keepdim=True)
        if self.additional_last_embedding:
            last = text_feature if self.pick_last_embedding else self.project_eot(text_feature, index)
            if self.keep_seq_len_dim and last.dim() == 2:
                last = last.unsqueeze(1)
            return features, last
        return features
