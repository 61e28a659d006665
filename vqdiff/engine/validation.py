"""Validation loss of the solver: the raw weights (official) and, beside it, the EMA weights.

The official solver validates the network as trained (its EMA is swapped in for sampling only), so the
logged ``val/<optimizer>/loss`` is the raw-weight loss. When an EMA is kept, the same pass is repeated with the
EMA weights and logged as ``val/<optimizer>/loss_ema``. Each value is the item-weighted mean over the whole
validation set, summed over ranks in distributed runs:
``mean = sum_r sum_b loss_b * n_b / sum_r sum_b n_b``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

__all__ = ["summed_loss"]


@torch.no_grad()
def summed_loss(model: nn.Module, loader: Iterable, prepare: Callable[[Any], Mapping],
                batch_size: Callable[[Any], int], autocast: Callable[[], Any], step: int,
                device: torch.device) -> torch.Tensor:
    """``[sum of loss x items, items]`` (float64) of ``model`` over ``loader`` in eval mode.

    ``prepare`` moves a batch to the device, ``batch_size`` counts its items, ``autocast()`` gives the
    mixed-precision context; the model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    try:
        for batch in loader:
            batch = prepare(batch)
            with autocast():
                loss = model(batch, return_loss=True, step=step)["loss"]
            n = batch_size(batch)
            total[0] += float(loss) * n
            total[1] += n
    finally:
        model.train(was_training)
    return total
