"""Optimizer construction from an ``optimizers_and_schedulers[i].optimizer`` config.

Official form: ``{target: torch.optim.AdamW, params: {betas, weight_decay}}`` over every trainable
parameter (``model.parameters_to_optimize()``), lr = the solver's (adjusted) ``base_lr``.

Option ``param_groups: mingpt`` (a key of ``params``, removed before the optimizer is built) splits the
parameters the minGPT way: weight decay for the weight matrices of linear/conv layers only; no decay
for biases, normalisation weights, embeddings and other 0/1-D or positional parameters.
On CUDA, ``torch.optim.AdamW``/``Adam`` use the fused kernel when available (``fused: false`` turns it off).

:func:`build_optimizers_and_schedulers` builds the solver's whole official ``optimizer_and_scheduler``
dict: one optimizer (and optional ``LRSchedule``) per ``solver.optimizers_and_schedulers`` entry.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from vqdiff.engine.lr_scheduler import build_lr_schedule
from vqdiff.engine.solver_config import OptimizerAndSchedulerConfig
from vqdiff.utils.config import ConfigError, resolve_target

__all__ = ["build_optimizer", "build_optimizers_and_schedulers", "mingpt_param_groups"]

_DECAY_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.MultiheadAttention)
_NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.Embedding, nn.InstanceNorm2d)


def mingpt_param_groups(model: nn.Module, weight_decay: float, params: Iterable[nn.Parameter] | None = None) -> list[dict]:
    """Two groups: ``{'params': decayed, 'weight_decay': wd}`` and ``{'params': rest, 'weight_decay': 0}``.

    Decayed: ``weight`` (or ``in_proj_weight``) of linear/conv/attention modules. Everything else
    (biases, norms, embeddings, positional/free parameters) is not decayed.
    """
    wanted = {id(p) for p in (params if params is not None else model.parameters()) if p.requires_grad}
    decay: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, _NO_DECAY_MODULES):
            continue
        if isinstance(module, _DECAY_MODULES):
            for pname, p in module.named_parameters(recurse=False):
                if pname.endswith("weight") and p.dim() >= 2 and id(p) in wanted:
                    decay[id(p)] = p
    seen: set[int] = set()
    decayed, rest = [], []
    for p in model.parameters():
        if id(p) not in wanted or id(p) in seen:
            continue
        seen.add(id(p))
        (decayed if id(p) in decay else rest).append(p)
    missing = wanted - seen
    if missing:
        raise ValueError(f"mingpt_param_groups: {len(missing)} parameters to optimize are not in the model")
    return [{"params": decayed, "weight_decay": float(weight_decay)}, {"params": rest, "weight_decay": 0.0}]


def build_optimizer(config: Mapping, model: nn.Module, lr: float, params: Iterable[nn.Parameter] | None = None,
                    key_path: str = "optimizer") -> torch.optim.Optimizer:
    """Instantiate the optimizer of ``config`` (``target`` + ``params``) for ``model`` at learning rate ``lr``."""
    if "target" not in config:
        raise ConfigError(f"'{key_path}': no 'target' key")
    cls = resolve_target(config["target"], f"{key_path}.target")
    kwargs: dict[str, Any] = copy.deepcopy(dict(config.get("params") or {}))
    grouping = kwargs.pop("param_groups", "all")
    if params is None:
        params = model.parameters_to_optimize() if hasattr(model, "parameters_to_optimize") else \
            [p for p in model.parameters() if p.requires_grad]
    params = list(params)
    if not params:
        raise ConfigError(f"'{key_path}': the model has no trainable parameters")
    if grouping == "mingpt":
        groups: Any = mingpt_param_groups(model, float(kwargs.pop("weight_decay", 0.0)), params)
        groups = [g for g in groups if g["params"]]
    elif grouping in ("all", None):
        groups = params
    else:
        raise ConfigError(f"'{key_path}.params.param_groups' must be 'all' or 'mingpt', got {grouping!r}")
    if "betas" in kwargs and isinstance(kwargs["betas"], list):
        kwargs["betas"] = tuple(kwargs["betas"])
    want_fused = kwargs.pop("fused", None)
    sig = inspect.signature(cls)
    if "fused" in sig.parameters:
        on_cuda = all(p.is_cuda and p.dtype in (torch.float16, torch.bfloat16, torch.float32) for p in params)
        if want_fused is None:
            want_fused = on_cuda
        if want_fused and on_cuda:
            kwargs["fused"] = True
    try:
        return cls(groups, lr=lr, **kwargs)
    except TypeError as e:
        raise ConfigError(f"building optimizer '{config['target']}' at '{key_path}' failed: {e}") from e


def _accepts_name(fn: Any) -> bool:
    try:
        return len(inspect.signature(fn).parameters) >= 1
    except (TypeError, ValueError):
        return False


def build_optimizers_and_schedulers(entries: tuple[OptimizerAndSchedulerConfig, ...], model: nn.Module, lr: float,
                                    run_iterations: int, train_iterations: int) -> dict:
    """The official ``optimizer_and_scheduler`` dict: name -> window, optimizer and scheduler entries.

    Entry ``name`` optimizes ``model.parameters_to_optimize(name)`` (all trainable parameters for
    ``none``); a schedule spanning the run gets ``T_max = run_iterations`` (``build_lr_schedule``); a
    scheduler ``step_iteration: epoch`` steps every ``train_iterations`` iterations (official).
    """
    out: dict = {}
    for i, entry in enumerate(entries):
        kp = f"solver.optimizers_and_schedulers.{i}"
        name = entry.name
        params = model.parameters_to_optimize(name) if name != "none" and hasattr(model, "parameters_to_optimize") \
            and _accepts_name(model.parameters_to_optimize) else None
        opt_cfg = {"target": entry.optimizer.target, "params": dict(entry.optimizer.params)}
        opt = build_optimizer(opt_cfg, model, lr, params=params, key_path=f"{kp}.optimizer")
        op_sc: dict = {
            "name": name, "start_epoch": entry.start_epoch, "end_epoch": entry.end_epoch,
            "start_iteration": entry.start_iteration, "end_iteration": entry.end_iteration,
            "optimizer": {"module": opt, "step_iteration": entry.optimizer.step_iteration},
        }
        if entry.scheduler is not None:
            schedule = build_lr_schedule(entry.scheduler.target, entry.scheduler.params, opt, run_iterations,
                                         f"{kp}.scheduler")
            op_sc["scheduler"] = {"module": schedule, "step_iteration": entry.scheduler.step_every(train_iterations)}
        out[name] = op_sc
    return out
