"""The ``solver:`` section of a codec (VQ-VAE / VQGAN / FSQ) training config, and how it drives the engine.

:class:`CodecSolverConfig` is a frozen dataclass with one default and one check per key, parsed by
the project's one section parser, ``vqdiff.utils.config_sections.parse_section`` (unknown keys, wrong
types and bad values raise ``ConfigError`` naming ``solver.<key>`` and, on a typo, the known keys). :func:`engine_solver_section` turns it into the engine's own ``solver:`` section
(``vqdiff.engine.solver_config``): two optimizers as taming trains a VQGAN (``generator``: encoder,
quantizer, decoder; ``discriminator``: the PatchGAN, from ``disc_start``), Adam with ``betas``, and the
codec schedule :class:`CodecLRSchedule` on each, ``max_iterations = max_steps x grad_accumulation_steps``.

The schedule matters as much as the model for a small codebook. With a constant learning rate the weights
at the last step are one noisy draw among many nearby ones, and which draw a run ends on is decided by
float summation order (thread count, CPU): on one machine a code for "red" survived, on another it drifted
to orange. Decaying the rate to ``min_lr_ratio * base_lr`` (cosine, after a linear warm-up) ends every run
in a settled minimum instead; restarting dead codes stops at ``dead_code_restart_until`` of the run, so the
decoder has the last part of it to learn what the moved codes mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

from torch.optim import Optimizer

from vqdiff.engine.amp import AMP_DTYPE_NAMES
from vqdiff.utils.config_sections import ConfigSection, parse_section, setting

__all__ = ["CodecSolverConfig", "codec_learning_rate", "CodecLRSchedule", "engine_solver_section"]


@dataclass(frozen=True)
class CodecSolverConfig(ConfigSection):
    """``solver:`` of a codec config. Steps are optimizer steps (one per ``grad_accumulation_steps``
    batches); ``batch_size`` is per process, as the diffusion trainer's ``dataloader.batch_size``."""

    KEY_PATH: ClassVar[str] = "solver"

    base_lr: float = setting(1.0e-3, check=lambda v: v > 0, must="> 0")
    max_steps: int = setting(1000, check=lambda v: v > 0, must="> 0")
    batch_size: int = setting(16, check=lambda v: v > 0, must="> 0")
    # steps between log lines (and entries of the returned history)
    log_frequency: int = setting(50, check=lambda v: v > 0, must="> 0")
    # Adam's, both optimizers (taming)
    betas: list[float] = setting(default_factory=lambda: [0.5, 0.9],
                                 check=lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
                                 must="two numbers in [0, 1)")
    lr_schedule: str = setting("cosine", check=lambda v: v in ("cosine", "constant"),
                               must="'cosine' (warm-up, then cosine decay) or 'constant'")
    warmup_steps: int = setting(0, check=lambda v: v >= 0, must=">= 0")
    # the cosine decay ends at base_lr * min_lr_ratio
    min_lr_ratio: float = setting(0.02, check=lambda v: 0 <= v <= 1, must="in [0, 1]")
    # Gumbel temperature, cosine anneal start -> end
    gumbel_temperature: list[float] = setting(default_factory=lambda: [1.0, 1.0 / 16],
                                              check=lambda v: len(v) == 2 and all(t > 0 for t in v),
                                              must="two positive numbers (start, end)")
    # "data" (k-means++ seeding from encoder outputs) or "none"
    codebook_init: str = setting("data", check=lambda v: v in ("data", "none"), must="'data' or 'none'")
    dead_code_restart: int = setting(0, check=lambda v: v >= 0, must=">= 0 (every N steps; 0: off)")
    # fraction of max_steps after which no code is moved
    dead_code_restart_until: float = setting(0.75, check=lambda v: 0 <= v <= 1, must="in [0, 1]")
    grad_accumulation_steps: int = setting(1, check=lambda v: v >= 1, must=">= 1")
    # autocast dtype under --amp: fp16, bf16 or auto (vqdiff.engine.amp)
    amp_dtype: str = setting("fp16", check=lambda v: v in AMP_DTYPE_NAMES, must=f"one of {AMP_DTYPE_NAMES}")
    # stop after this many skipped non-finite steps in a row (0: never)
    max_nonfinite_steps: int = setting(10, check=lambda v: v >= 0, must=">= 0")
    # steps between validations on dataloader.validation_datasets (0: off)
    validation_every: int = setting(0, check=lambda v: v >= 0, must=">= 0")
    # images per validation (0: the whole held-out split)
    validation_images: int = setting(0, check=lambda v: v >= 0, must=">= 0")
    inception_path: str = setting("")  # TF-FID Inception weights for rFID ("": no rFID)
    # also keep checkpoint/<epoch>e_<iter>iter.pth at epoch ends every N steps
    save_every: int = setting(0, check=lambda v: v >= 0, must=">= 0")

    @classmethod
    def from_mapping(cls, section: Optional[Mapping[str, Any]], key_path: str = "solver") -> "CodecSolverConfig":
        """Parse and check ``section`` (None: every default) with the project's one section parser."""
        return parse_section(dict(section or {}), cls, key_path)


def codec_learning_rate(step: int, base_lr: float, max_steps: int, warmup_steps: int = 0,
                        min_lr_ratio: float = 0.02, lr_schedule: str = "cosine") -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up over ``warmup_steps``, then
    constant or a cosine decay ``floor + (base - floor)(1 + cos(pi t)) / 2`` from ``base_lr`` to
    ``floor = base_lr * min_lr_ratio`` at the last step (SGDR, arXiv 1608.03983, Eq. 5, one cycle)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if lr_schedule == "constant":
        return base_lr
    span = max(max_steps - 1 - warmup_steps, 1)
    frac = min(max(step - warmup_steps, 0) / span, 1.0)
    floor = base_lr * min_lr_ratio
    return floor + 0.5 * (base_lr - floor) * (1.0 + math.cos(math.pi * frac))


class CodecLRSchedule:
    """:func:`codec_learning_rate` behind the engine's ``LRSchedule`` protocol (``vqdiff.engine.lr_schedule``).

    The rate of the next optimizer step is set at construction and after every ``step()``; ``first_step``
    is the global step of this optimizer's first step (the discriminator starts at ``disc_start``), so both
    optimizers follow one curve over the run. Only the count of steps is checkpointed: a resumed run with a
    larger ``max_steps`` continues on the new, longer curve.
    """

    def __init__(self, optimizer: Optimizer, base_lr: float, max_steps: int, warmup_steps: int = 0,
                 min_lr_ratio: float = 0.02, lr_schedule: str = "cosine", first_step: int = 0):
        self.optimizer = optimizer
        self.curve = dict(base_lr=float(base_lr), max_steps=int(max_steps), warmup_steps=int(warmup_steps),
                          min_lr_ratio=float(min_lr_ratio), lr_schedule=str(lr_schedule))
        self.steps_done = 0
        self.first_step = int(first_step)
        self._apply()

    @property
    def total_steps(self) -> Optional[int]:
        return self.curve["max_steps"]

    def _apply(self) -> None:
        lr = codec_learning_rate(self.first_step + self.steps_done, **self.curve)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, metric: Optional[float] = None) -> None:  # noqa: ARG002 - the protocol's signature
        self.steps_done += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"steps_done": self.steps_done}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps_done = int(state_dict["steps_done"])
        self._apply()


def engine_solver_section(cfg: CodecSolverConfig, disc_start: Optional[int], train_iterations: int) -> dict:
    """The engine ``solver:`` section (``parse_solver_config``'s input) that runs ``cfg``.

    Args:
        cfg: the codec solver section.
        disc_start: the loss's ``disc_start`` (global step of the first discriminator step); None when the
            loss has no discriminator (one optimizer).
        train_iterations: batches per epoch of this process (the run spans as many epochs as it needs).
    """
    accum = cfg.grad_accumulation_steps
    iterations = cfg.max_steps * accum

    def entry(name: str, first_step: int) -> dict:
        return {"name": name, "start_iteration": first_step * accum,
                "optimizer": {"target": "torch.optim.Adam", "params": {"betas": list(cfg.betas)}},
                "scheduler": {"target": "vqdiff.engine.codec_solver_config.CodecLRSchedule",
                              "params": {"base_lr": cfg.base_lr, "max_steps": cfg.max_steps,
                                         "warmup_steps": cfg.warmup_steps, "min_lr_ratio": cfg.min_lr_ratio,
                                         "lr_schedule": cfg.lr_schedule, "first_step": first_step}}}

    entries = [entry("generator", 0)]
    if disc_start is not None and disc_start < cfg.max_steps:
        entries.append(entry("discriminator", int(disc_start)))
    return {
        "base_lr": cfg.base_lr, "adjust_lr": "none",
        "max_epochs": max(1, math.ceil(iterations / max(int(train_iterations), 1))),
        "max_iterations": iterations, "grad_accumulation_steps": accum, "amp_dtype": cfg.amp_dtype,
        "max_nonfinite_steps": cfg.max_nonfinite_steps, "validation_epochs": -1, "sample_iterations": -1,
        "save_iterations": cfg.save_every * accum if cfg.save_every > 0 else -1,
        "optimizers_and_schedulers": entries,
    }
