"""The interface every codec honours (image: pixels <-> tokens; text: strings -> tokens)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BaseCodec"]


class BaseCodec(nn.Module):
    """Base class of codecs.

    Image codecs implement ``get_tokens(images (B,3,H,W) in [0,255]) -> {'token': (B, N)}`` and
    ``decode(tokens (B, N)) -> (B,3,H,W) in [0,255]``; text codecs implement ``get_tokens(list[str])``.
    A codec built with ``trainable=False`` is frozen: eval mode whatever ``train()`` asks, and no gradients.
    """

    trainable: bool = False

    def get_tokens(self, x, **kwargs) -> dict:
        raise NotImplementedError

    def get_number_of_tokens(self) -> int:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def freeze(self) -> "BaseCodec":
        """Eval mode and ``requires_grad=False`` on every parameter."""
        self.trainable = False
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "BaseCodec":
        # a frozen codec ignores train(): the official code keeps its VQ-VAE in eval mode throughout
        return super().train(mode and self.trainable)
