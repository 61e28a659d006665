"""The ``Objective`` interface: what a training objective of ``DiffusionTransformer`` decides.

An objective is the bound the network is trained on, and with it everything that depends on the forward
process it assumes: the training loss, which sampler runs a request (``sampler_for``), how partial sampling
noises its start tokens, the record a checkpoint keeps of it, and the held-out bound in nats. The table of
objectives is ``objectives.OBJECTIVES``; a new objective is one file with a subclass plus one row there.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Mapping, Optional

import torch

__all__ = ["Objective", "Predictor"]

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``predict(x_t (B, N) long, step (B,) long) -> log p(x_0 | x_t)`` (B, K+1, N): the network under a condition."""


class Objective(abc.ABC):
    """One training objective (an instance holds its parsed options, ``self.options``; None without options).

    Class attributes:
        name: the ``diffusion_config.params.objective`` value.
        record_key: the buffer name under which checkpoints record the objective, or None (no record).
        mask_and_replace: whether the model's mask-and-replace methods (``q_pred``, ``q_sample``,
            ``q_posterior``) describe this objective's forward process (else they refuse to run).
        options_key: the key of ``diffusion_config.params`` that may also carry the options (besides
            ``objective_options``); ``masked_elbo`` for that objective.
    """

    name: ClassVar[str]
    options_key: ClassVar[str] = "objective_options"
    record_key: ClassVar[Optional[str]] = None
    mask_and_replace: ClassVar[bool] = False

    def __init__(self, options: Any = None):
        self.options = options

    @classmethod
    def from_config(cls, config: Optional[Mapping[str, Any]], key_path: str) -> "Objective":
        """The objective with its options parsed from ``config`` (``key_path`` names it in errors). The default
        takes no options: a mapping is a ValueError naming ``key_path``."""
        if config is not None:
            raise ValueError(f"{key_path} is given but objective {cls.name!r} takes no options; remove it")
        return cls()

    # ------------------------------------------------------------------------------------------ training
    @abc.abstractmethod
    def loss(self, diffusion: Any, x: torch.Tensor, cond_emb: Any, *, is_train: bool = True,
             generator: Optional[torch.Generator] = None, cond_mask: Optional[torch.Tensor] = None):
        """``(log_probs (B, K+1, N), loss (B,))`` of tokens x (B, N): the per-image training loss (summed over
        tokens) and the log-probabilities ``DiffusionTransformer.forward`` returns as ``'logits'``."""

    # ------------------------------------------------------------------------------------------ sampling
    def sampler_for(self, kind: str, options: Any) -> str:
        """The sampler table key that runs a request whose options chose ``kind`` (``SamplingOptions.sampler_kind``);
        a ValueError names an option this objective cannot honour. Default: ``kind`` itself."""
        return kind

    @abc.abstractmethod
    def noised_start(self, diffusion: Any, x0: torch.Tensor, start_step: int, options: Any,
                     official_noise: bool = True) -> torch.Tensor:
        """Tokens (B, N) drawn from ``q(x_t | x_0)`` at step ``start_step - 1``: the start of partial sampling
        (``filter_ratio > 0``). ``official_noise``: the sampler row's choice of the official draw's form."""

    # ------------------------------------------------------------------------------------------ checkpoints
    def record(self) -> Optional[torch.Tensor]:
        """The tensor kept under ``record_key`` in checkpoints (None: no record)."""
        return None

    def check_record(self, record: Optional[torch.Tensor]) -> None:
        """A checkpoint's record under ``record_key`` (None: it has none) against this objective; raise a
        ValueError naming the setting when they disagree. Default: nothing to check."""

    # ------------------------------------------------------------------------------------------ evaluation
    @abc.abstractmethod
    def negative_elbo(self, diffusion: Any, x0: torch.Tensor, predict: Predictor,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """One unbiased draw of the negative ELBO ``-log p(x_0) <= ...`` per image (B,) float64 nats, every term
        of the bound included, so objectives compare on the same tokens (``validation_bound``)."""
