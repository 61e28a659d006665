"""The sampler table: every sampler's name, function, visited steps and the objectives it samples.

``SamplingOptions.sampler`` names a row (None: the row its other fields choose, ``SamplingOptions.sampler_kind``);
``sampling.sample_tokens`` looks the row up, lets the model's objective swap it (a masked-ELBO model runs
``'masked'`` where VQ-Diffusion runs ``'ancestral'`` or ``'improved'``) and calls it. A new sampler is one file
with the common signature (``samplers/__init__.py``) plus one row here (or :func:`register_sampler`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from .ancestral import sample_ancestral
from .improved import sample_improved
from .masked import sample_masked
from .maskgit import maskgit_timesteps, sample_maskgit
from .steps import timesteps

__all__ = ["SamplerEntry", "SAMPLERS", "register_sampler", "sampler_entry", "diffusion_steps"]


def diffusion_steps(num_timesteps: int, start_step: int, options: Any) -> list[int]:
    """The diffusion samplers' visited steps: ``T-1 .. 0`` (or from ``start_step - 1`` after noising) with
    ``options.skip_step`` skipped between calls (:func:`steps.timesteps`)."""
    return timesteps(num_timesteps, options.skip_step, start=start_step or None)


def _maskgit_steps(num_timesteps: int, start_step: int, options: Any) -> list[int]:
    if options.maskgit_steps is None:
        raise ValueError("sampler 'maskgit' needs maskgit_steps (sampling option maskgit_steps, or 'maskgit{S}')")
    return maskgit_timesteps(start_step or num_timesteps, options.maskgit_steps, options.maskgit_schedule)


@dataclass(frozen=True)
class SamplerEntry:
    """One row of the sampler table; calling it runs the sampler (``entry(denoise, x, steps, options, callback)``).

    Attributes:
        name: the key (``SamplingOptions.sampler``, the ``sample_type`` part of the same name).
        sample: the sampler, ``sample(denoise, x, steps, options, callback=None) -> x`` (B, N).
        plan_steps: ``plan_steps(T, start_step, options) -> list[int]``: the steps given to ``sample``
            (``start_step`` 0: from all [MASK]; else from tokens noised to step ``start_step - 1``).
        objectives: the objectives (``objectives.OBJECTIVES`` keys) whose models it samples; None: any.
        official_noise: a mask-and-replace model draws the noised start tokens (``filter_ratio > 0``) in the
            official one-hot form (its random stream) rather than from the tokens (the same draw, less work).
    """

    name: str
    sample: Callable[..., Any]
    plan_steps: Callable[[int, int, Any], list[int]] = diffusion_steps
    objectives: Optional[tuple[str, ...]] = None
    official_noise: bool = True

    def __call__(self, denoise: Any, x: Any, steps: Any, options: Any, callback: Any = None, **kwargs: Any) -> Any:
        return self.sample(denoise, x, steps, options, callback, **kwargs)


SAMPLERS: dict[str, SamplerEntry] = {
    entry.name: entry for entry in (
        SamplerEntry("ancestral", sample_ancestral, objectives=("vq_diffusion",)),
        SamplerEntry("improved", sample_improved, objectives=("vq_diffusion",)),
        SamplerEntry("maskgit", sample_maskgit, _maskgit_steps, official_noise=False),
        SamplerEntry("masked", sample_masked, objectives=("masked_elbo",)),
    )
}
"""The one sampler table, name -> :class:`SamplerEntry`."""


def register_sampler(entry: SamplerEntry) -> SamplerEntry:
    """Add ``entry`` to :data:`SAMPLERS` (a plugin's row; ValueError when the name is taken)."""
    if entry.name in SAMPLERS:
        raise ValueError(f"sampler {entry.name!r} is already in the sampler table")
    SAMPLERS[entry.name] = entry
    return entry


def sampler_entry(name: str) -> SamplerEntry:
    """The row called ``name`` (ValueError listing the table otherwise)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]
