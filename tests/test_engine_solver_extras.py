"""Solver behaviours beyond the units: gradient accumulation equals the large batch, validation scores the
raw weights with the EMA loss beside it, sample grids use the EMA weights (official file names + TensorBoard
images), TensorBoard scalars (loss, lr, grad norm, throughput), frozen parameters untouched."""

from __future__ import annotations

import logging
import types

import pytest
import torch
from torch import nn

from vqdiff.engine.solver import Solver


class _Model(nn.Module):
    """loss = mean((lin(x) - y)^2); a frozen layer; ``sample`` returns an image grid and records weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.lin = nn.Linear(3, 1)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.seen_in_eval: list[torch.Tensor] = []
        self.seen_in_sample: list[torch.Tensor] = []

    def get_ema_model(self):
        return self.lin

    def parameters_to_optimize(self):
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, batch, return_loss=True, step=0, **kw):
        if not self.training:
            self.seen_in_eval.append(self.lin.weight.detach().clone())
        x = batch["x"] + 0.0 * self.frozen(batch["x"]).sum()
        return {"loss": ((self.lin(x).squeeze(1) - batch["y"]) ** 2).mean()}

    def sample(self, batch):
        self.seen_in_sample.append(self.lin.weight.detach().clone())
        b = batch["x"].shape[0]
        return {"input_image": torch.full((b, 3, 8, 8), 128.0), "cond1_cont0_fr1_image": torch.zeros(b, 3, 8, 8)}


def _data(n=16):
    g = torch.Generator().manual_seed(3)
    return [{"x": torch.randn(3, generator=g), "y": torch.tensor(float(i % 5))} for i in range(n)]


def _loader(data, batch_size):
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=True)


def _solver(tmp_path, model, batch_size, tb=None, val=None, **over):
    loader = _loader(_data(), batch_size)
    sc = {"base_lr": 0.1, "adjust_lr": "none", "max_epochs": 1, "save_epochs": 100, "validation_epochs": 1,
          "sample_iterations": -1, "ema": {"decay": 0.5, "update_interval": 1},
          "optimizers_and_schedulers": [{"name": "none", "optimizer": {"target": "torch.optim.SGD", "params": {}}}]}
    sc.update(over)
    args = types.SimpleNamespace(save_dir=str(tmp_path), log_frequency=1, seed=0, amp=False, progress_bar=False)
    dl = {"train_loader": loader, "train_iterations": len(loader)}
    if val is not None:
        dl["validation_loader"] = _loader(val, 4)
    return Solver({"solver": sc, "dataloader": {"batch_size": batch_size}}, args, model, dl,
                  logging.getLogger("test_engine_solver_extras"), tb_writer=tb)


def test_grad_accumulation_equals_the_large_batch_step(tmp_path):
    big = _Model()
    s_big = _solver(tmp_path / "big", big, 4, max_iterations=2)
    s_big.train()
    acc = _Model()
    s_acc = _solver(tmp_path / "acc", acc, 2, max_iterations=4, grad_accumulation_steps=2)
    s_acc.train()
    assert s_big.last_iter == 1 and s_acc.last_iter == 3
    torch.testing.assert_close(acc.lin.weight, big.lin.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(acc.lin.bias, big.lin.bias, rtol=1e-6, atol=1e-7)
    assert not torch.equal(big.lin.weight, _Model().lin.weight)  # it trained
    assert torch.equal(acc.frozen.weight, _Model().frozen.weight)  # frozen: not optimised
    assert all(p.requires_grad for g in s_acc.optimizer_and_scheduler["none"]["optimizer"]["module"].param_groups
               for p in g["params"])


def _mean_loss(weight, bias, data):
    x = torch.stack([d["x"] for d in data])
    y = torch.stack([d["y"] for d in data])
    return float(((x @ weight.T + bias).squeeze(1) - y).pow(2).mean())


def test_validation_scores_raw_weights_and_ema_beside_samples_use_ema_official_names(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    model = _Model()
    tb = SummaryWriter(log_dir=str(tmp_path / "logs"))
    val = _data(8)
    solver = _solver(tmp_path, model, 4, tb=tb, val=val, sample_iterations=2)
    solver.train()
    tb.close()
    ema_w, ema_b = solver.ema.ema_model.weight.detach(), solver.ema.ema_model.bias.detach()
    raw_w, raw_b = model.lin.weight.detach(), model.lin.bias.detach()
    assert not torch.equal(ema_w, raw_w)  # EMA lags the trained weights
    # official: validation scores the raw weights (2 batches), then the EMA pass is logged beside it
    assert len(model.seen_in_eval) == 4
    assert all(torch.equal(w, raw_w) for w in model.seen_in_eval[:2])
    assert all(torch.equal(w, ema_w) for w in model.seen_in_eval[2:])
    assert torch.equal(model.lin.weight.detach(), raw_w)  # restored after the EMA pass
    assert len(model.seen_in_sample) == 2  # iterations 1 and 3
    assert not torch.equal(model.seen_in_sample[-1], raw_w)
    files = sorted(str(p.relative_to(tmp_path / "images")) for p in (tmp_path / "images").rglob("*.jpg"))
    assert files == [f"train/{k}/e0000000000_itr000000000{i}_rank0_ema.jpg"
                     for k in ("cond1_cont0_fr1_image", "input_image") for i in (1, 3)]
    acc = EventAccumulator(str(tmp_path / "logs"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/none/loss", "train/none/grad_norm", "train/none_lr", "train/images_per_s",
            "val/none/loss", "val/none/loss_ema"} <= scalars
    assert [e.step for e in acc.Scalars("train/none/loss")] == [0, 1, 2, 3]
    (raw_event,), (ema_event,) = acc.Scalars("val/none/loss"), acc.Scalars("val/none/loss_ema")
    assert raw_event.step == 0 and ema_event.step == 0  # official: validation scalars at the epoch
    assert raw_event.value == pytest.approx(_mean_loss(raw_w, raw_b, val), rel=1e-5)
    assert ema_event.value == pytest.approx(_mean_loss(ema_w, ema_b, val), rel=1e-5)
    assert {"train/0e_1itr/input_image", "train/0e_3itr/cond1_cont0_fr1_image"} <= set(acc.Tags()["images"])
