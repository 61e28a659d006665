"""Several linear projections of one input as one matmul, also when a projection carries an adapter.

The attention layers keep the official separate ``query``/``key``/``value`` Linears (checkpoint keys) but run
them as one ``F.linear`` over their concatenated weights. A projection that an adapter library has wrapped
(peft's LoRA layer, :mod:`vqdiff.adapters.lora`) must not be bypassed that way, or its adapter would be silently
ignored. :func:`fused_linear_parameters` therefore gives the weights the projections really apply:

- an ``nn.Linear`` (subclasses too, as before): its ``weight`` and ``bias``;
- a wrapped linear layer (it has ``get_base_layer()`` and ``get_delta_weight(adapter)``, peft's
  ``BaseTunerLayer``/LoRA API) in eval mode: ``W + sum_a scaling_a B_a A_a`` over its active adapters that are
  not merged already (LoRA, arXiv 2106.09685 eq. 3; the weight peft's ``merge()`` would write), so sampling
  keeps the single matmul and an adapter at scale 0 gives the base weights bit for bit;
- anything else, or a wrapped layer in training mode (LoRA dropout acts on the input, not on a weight): None,
  and the caller calls each projection as a module.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["fused_linear_parameters", "effective_linear_parameters"]


def effective_linear_parameters(module: nn.Module) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(weight (out, in), bias (out,))`` that ``module(x)`` applies as ``F.linear``, or None (see module doc)."""
    if isinstance(module, nn.Linear):
        return (module.weight, module.bias) if module.bias is not None else None
    if module.training or not (hasattr(module, "get_base_layer") and hasattr(module, "get_delta_weight")):
        return None
    base = module.get_base_layer()
    if not isinstance(base, nn.Linear) or base.bias is None:
        return None
    weight = base.weight
    if not (getattr(module, "merged", False) or getattr(module, "disable_adapters", False)):
        adapters = getattr(module, "lora_A", {})
        for name in module.active_adapters:
            if name in adapters:
                weight = weight + module.get_delta_weight(name).to(weight.dtype)
    return weight, base.bias


def fused_linear_parameters(modules: Sequence[nn.Module]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The row-concatenated ``(weight, bias)`` of ``modules`` ((sum out, in), (sum out,)), or None when one of
    them must be called as a module."""
    parts = [effective_linear_parameters(m) for m in modules]
    if any(p is None for p in parts):
        return None
    return torch.cat([w for w, _ in parts], dim=0), torch.cat([b for _, b in parts], dim=0)
