"""The training objectives of ``DiffusionTransformer`` (``diffusion_config.params.objective``) and their table.

Each objective is one file with an :class:`~.base.Objective` subclass (loss, sampler swap, noised start,
checkpoint record and check, held-out bound) and one row of :data:`OBJECTIVES`: ``'vq_diffusion'``
(``vq_diffusion.py``, the default) and ``'masked_elbo'`` (``masked_elbo.py``).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from .base import Objective, Predictor
from .masked_elbo import MaskedELBOObjective
from .vq_diffusion import VQDiffusionObjective

__all__ = ["OBJECTIVES", "Objective", "Predictor", "build_objective", "check_checkpoint_records", "objective_of",
           "register_objective"]

OBJECTIVES: dict[str, type[Objective]] = {
    VQDiffusionObjective.name: VQDiffusionObjective,
    MaskedELBOObjective.name: MaskedELBOObjective,
}
"""The one objective table, ``diffusion_config.params.objective`` -> :class:`Objective` subclass."""


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Add ``cls`` to :data:`OBJECTIVES` under ``cls.name`` (a plugin's row; ValueError when the name is taken)."""
    if cls.name in OBJECTIVES:
        raise ValueError(f"objective {cls.name!r} is already in the objective table")
    OBJECTIVES[cls.name] = cls
    return cls


def build_objective(name: str, given: Optional[Mapping[str, Any]] = None,
                    key_path: str = "diffusion_config.params") -> Objective:
    """The objective called ``name`` with its options parsed. ``given`` maps the option keys of ``key_path``
    (``objective_options``, or an objective's own ``options_key`` such as ``masked_elbo``) to their mappings or
    None; options given for another objective are a ValueError naming the key, as is an unknown ``name``."""
    if name not in OBJECTIVES:
        raise ValueError(f"{key_path}.objective must be one of {tuple(OBJECTIVES)}, got {name!r}")
    cls = OBJECTIVES[name]
    options, options_path = None, f"{key_path}.{cls.options_key}"
    for key, value in (given or {}).items():
        if value is None:
            continue
        if key not in ("objective_options", cls.options_key):
            owners = [o.name for o in OBJECTIVES.values() if o.options_key == key] or ["the objective it belongs to"]
            raise ValueError(f"{key_path}.{key} is given but objective is {name!r}; set 'objective: {owners[0]}' "
                             "or remove it")
        if options is not None:
            raise ValueError(f"{key_path}: give the options of objective {name!r} once ({cls.options_key} or "
                             "objective_options), not both")
        options, options_path = value, f"{key_path}.{key}"
    return cls.from_config(options, options_path)


def objective_of(diffusion: Any) -> Objective:
    """The objective of a ``DiffusionTransformer`` (``objective_impl``); VQ-Diffusion's for a model without one."""
    found = getattr(diffusion, "objective_impl", None)
    return VQDiffusionObjective() if found is None else found


def check_checkpoint_records(objective: Objective, state_dict: Mapping[str, Any], prefix: str = "") -> None:
    """A checkpoint's objective records against the model's ``objective``: a record of another objective is a
    ValueError naming it; the model's own record (or its absence) is checked by ``objective.check_record``."""
    for other in OBJECTIVES.values():
        key = other.record_key
        if key is not None and other.name != objective.name and prefix + key in state_dict:
            raise ValueError(f"this checkpoint was trained with 'objective: {other.name}' (it has '{key}') but the "
                             f"model is built with objective {objective.name!r}; set 'objective: {other.name}' (and "
                             "its options) in diffusion_config.params")
    if objective.record_key is not None:
        objective.check_record(state_dict.get(prefix + objective.record_key))
