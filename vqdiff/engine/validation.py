"""Validation loss of the solver: the raw weights (official) and, beside it, the EMA weights.

The official solver validates the network as trained (its EMA is swapped in for sampling only), so the
logged ``val/<optimizer>/loss`` is the raw-weight loss. When an EMA is kept, the same pass is repeated with the
EMA weights and logged as ``val/<optimizer>/loss_ema``. Each value is the item-weighted mean over the whole
validation set, summed over ranks in distributed runs:
``mean = sum_r sum_b loss_b * n_b / sum_r sum_b n_b``. :func:`ema_weights_on_every_rank` gives every rank
the EMA weights for that second pass.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import torch
from torch import nn

__all__ = ["summed_loss", "ema_weights_on_every_rank"]


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


@contextlib.contextmanager
def ema_weights_on_every_rank(ema_target: nn.Module, ema: Optional[Any], distributed: bool,
                              has_ema: bool) -> Iterator[None]:
    """Within the block every rank's ``ema_target`` (the model's ``get_ema_model()``) holds the EMA weights.

    Only the primary rank keeps an EMA (``ema`` is None elsewhere; official), so in a distributed run the
    primary swaps its EMA in and broadcasts it to the other ranks: every shard of the validation set is
    scored with the same weights before the losses are summed over ranks. The weights are restored on leaving.
    """
    share = distributed and has_ema
    backup = ({k: v.detach().clone() for k, v in ema_target.state_dict().items()}
              if share and ema is None else None)
    with ema.swapped() if ema is not None else contextlib.nullcontext():
        try:
            if share:
                with torch.no_grad():
                    for v in ema_target.state_dict().values():
                        torch.distributed.broadcast(v, src=0)
            yield
        finally:
            if backup is not None:
                with torch.no_grad():
                    for k, v in ema_target.state_dict().items():
                        v.copy_(backup[k])
