"""Engine units: LR schedulers, ClipGradNorm window, EMA formula, atomic/safe checkpoints, optimizer groups,
non-finite step skipping (with a tiny fake model; no codecs)."""

from __future__ import annotations

import errno
import logging
import math
import types

import pytest
import torch
from torch import nn

from vqdiff.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vqdiff.engine.clip_grad_norm import ClipGradNorm
from vqdiff.engine.ema import EMA
from vqdiff.engine.lr_scheduler import (CosineAnnealingLRWithWarmup, LambdaWarmUpCosineScheduler,
                                        ReduceLROnPlateauWithWarmup)
from vqdiff.engine.optim import build_optimizer, mingpt_param_groups
from vqdiff.engine.solver import Solver, TrainingStopped


def _opt(lr=1.0):
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr)


# ---------------------------------------------------------------------------------------------- schedulers
def test_plateau_warmup_values_then_drop():
    opt = _opt(1e-3)
    s = ReduceLROnPlateauWithWarmup(opt, factor=0.5, patience=2, threshold=0.1, warmup_lr=2e-3, warmup=4, min_lr=1e-4)
    lrs = []
    for _ in range(4):
        s.step(1.0)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.25e-3, 1.5e-3, 1.75e-3, 2e-3])
    s.step(1.0)  # first post-warm-up metric becomes best
    for _ in range(2):  # 0.95 is not < 1.0 * (1 - 0.1): bad steps 1, 2 (= patience): no drop yet
        s.step(0.95)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3)
    s.step(0.95)  # bad = 3 > patience -> halve
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    s.step(0.5)  # clearly better: no drop, resets
    assert s.best == 0.5 and s.num_bad_epochs == 0
    # min_lr floor
    for _ in range(50):
        s.step(10.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_plateau_state_dict_round_trip_excludes_optimizer():
    opt = _opt(1e-3)
    s = ReduceLROnPlateauWithWarmup(opt, warmup_lr=2e-3, warmup=3)
    s.step(1.0)
    sd = s.state_dict()
    assert "optimizer" not in sd and sd["last_epoch"] == 1
    s2 = ReduceLROnPlateauWithWarmup(_opt(1e-3), warmup_lr=2e-3, warmup=3)
    s2.load_state_dict(sd)
    assert s2.last_epoch == 1 and s2.warmup_lr_steps == s.warmup_lr_steps


def test_cosine_warmup_takes_warmup_plus_one_increments_then_decays():
    opt = _opt(0.0)
    s = CosineAnnealingLRWithWarmup(opt, T_max=12, warmup_lr=1.0, warmup=2, min_lr=0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)  # constructor step e=0
    s.step()
    s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.5)  # official quirk: W+1 increments
    s.step()  # e=3: p = 1/10
    assert opt.param_groups[0]["lr"] == pytest.approx(1.5 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    for _ in range(9):  # e = 12 = T_max: p = 1
        s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_lambda_warmup_cosine():
    f = LambdaWarmUpCosineScheduler(warm_up_steps=10, lr_min=0.1, lr_max=1.0, lr_start=0.0, max_decay_steps=110)
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(500) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------- clipping
def test_clip_grad_norm_window_and_official_rule():
    p = nn.Parameter(torch.zeros(4))
    c = ClipGradNorm(start_iteration=2, end_iteration=4, max_norm=0.5, rule="window")
    clipped = []
    for _ in range(6):
        p.grad = torch.full((4,), 3.0)
        c([p])
        clipped.append(bool(torch.linalg.vector_norm(p.grad) <= 0.5 + 1e-6))
    assert clipped == [False, False, True, True, False, False]
    # official (the default): start 0 clips forever, end has no effect; 0 < end < start clips before end too
    off = ClipGradNorm(start_iteration=0, end_iteration=2, max_norm=0.5)
    assert off.rule == "official" and all(off.should_clip(i) for i in range(10))
    assert off.ineffective_end_iteration()
    late = ClipGradNorm(start_iteration=5, end_iteration=2)
    assert [late.should_clip(i) for i in range(7)] == [True, True, False, False, False, True, True]
    assert not late.ineffective_end_iteration() and not ClipGradNorm(0, -1).ineffective_end_iteration()
    assert not ClipGradNorm(0, 2, rule="window").should_clip(2) and ClipGradNorm(0, -1, rule="window").should_clip(10 ** 6)
    with pytest.raises(ValueError, match="rule must be one of official, window, got 'windowed'"):
        ClipGradNorm(rule="windowed")


# ---------------------------------------------------------------------------------------------- EMA
def test_ema_equals_its_formula_every_interval_with_buffers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = EMA(net, decay=0.9, update_interval=2)
    ref = {k: v.clone().double() for k, v in net.state_dict().items()}
    for it in range(6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
            net[1].num_batches_tracked.add_(1)
        did = ema.update(it)
        assert did == ((it + 1) % 2 == 0)
        if did:
            for k, v in net.state_dict().items():
                ref[k] = 0.9 * ref[k] + 0.1 * v.double() if v.is_floating_point() else v.double()
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(v.double(), ref[k], atol=1e-6, rtol=1e-6)
    live = {k: v.clone() for k, v in net.state_dict().items()}
    with ema.swapped() as m:
        torch.testing.assert_close(m[0].weight.double(), ref["0.weight"], atol=1e-6, rtol=1e-6)
    for k, v in net.state_dict().items():
        assert torch.equal(v, live[k])


# ---------------------------------------------------------------------------------------------- checkpoints
def test_atomic_save_interrupted_keeps_previous(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint({"v": torch.tensor(1)}, path)

    def broken(obj, f):
        f.write(b"PK\x03\x04 half a file")
        raise RuntimeError("killed midway")

    with pytest.raises(RuntimeError, match="killed midway"):
        save_checkpoint({"v": torch.tensor(2)}, path, _save_fn=broken)
    assert load_checkpoint(path)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp file left


def test_disk_full_raises_clear_error_and_keeps_previous(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint({"v": torch.tensor(1)}, path)

    def full(obj, f):
        f.write(b"xx")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError, match="no space left.*last.pth"):
        save_checkpoint({"v": torch.tensor(2)}, path, _save_fn=full)
    assert load_checkpoint(path)["v"].item() == 1


class _Pickled:
    def __init__(self):
        self.x = 1


def test_unsafe_pickle_refused_with_flag_name_and_corrupt_named(tmp_path):
    bad = tmp_path / "obj.pth"
    torch.save({"o": _Pickled()}, bad)
    with pytest.raises(CheckpointError, match="--allow_unsafe_load") as e:
        load_checkpoint(bad)
    assert "obj.pth" in str(e.value)
    assert load_checkpoint(bad, allow_unsafe=True)["o"].x == 1
    good = tmp_path / "good.pth"
    save_checkpoint({"w": torch.ones(1000)}, good)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="trunc.pth.*(truncated|corrupt)"):
        load_checkpoint(trunc)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------------------- optimizer
def test_optimizer_official_form_and_mingpt_groups():
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    model[0].weight.requires_grad_(False)
    opt = build_optimizer({"target": "torch.optim.AdamW", "params": {"betas": [0.9, 0.96], "weight_decay": 0.045}},
                          model, lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 1
    assert sum(p.numel() for p in opt.param_groups[0]["params"]) == 16 + 4 + 8  # frozen embedding excluded
    assert opt.param_groups[0]["betas"] == (0.9, 0.96) and opt.param_groups[0]["lr"] == 1e-3
    model[0].weight.requires_grad_(True)
    groups = mingpt_param_groups(model, 0.1)
    assert [p.shape for p in groups[0]["params"]] == [torch.Size([4, 4])]  # only the linear weight decays
    assert len(groups[1]["params"]) == 4 and groups[1]["weight_decay"] == 0.0
    opt2 = build_optimizer({"target": "torch.optim.AdamW", "params": {"weight_decay": 0.1, "param_groups": "mingpt"}},
                           model, lr=1e-3)
    assert [g["weight_decay"] for g in opt2.param_groups] == [0.1, 0.0]


# ---------------------------------------------------------------------------------------------- solver faults
class _FakeModel(nn.Module):
    """loss = mean((w.x - y)^2); NaN from iteration ``nan_from`` on."""

    def __init__(self, nan_from: int = 10 ** 9):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.nan_from = nan_from

    def get_ema_model(self):
        return self.lin

    def parameters_to_optimize(self):
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, batch, return_loss=True, step=0, **kw):
        loss = ((self.lin(batch["x"]).squeeze(1) - batch["y"]) ** 2).mean()
        if step >= self.nan_from:
            loss = loss * float("nan")
        return {"loss": loss}


def _solver(tmp_path, model, **solver_over):
    data = [{"x": torch.randn(2), "y": torch.tensor(float(i))} for i in range(16)]
    loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=torch.utils.data.DistributedSampler(
        data, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True), drop_last=True)
    sc = {"base_lr": 0.01, "adjust_lr": "none", "max_epochs": 5, "save_epochs": 100, "validation_epochs": -1,
          "sample_iterations": -1, "ema": {"decay": 0.5, "update_interval": 1},
          "clip_grad_norm": {"target": "vqdiff.engine.clip_grad_norm.ClipGradNorm", "params": {"max_norm": 10.0}},
          "optimizers_and_schedulers": [{"name": "none", "optimizer": {"target": "torch.optim.AdamW", "params": {}}}]}
    sc.update(solver_over)
    args = types.SimpleNamespace(save_dir=str(tmp_path), log_frequency=1000, seed=0, amp=True, progress_bar=False)
    logger = logging.getLogger("test_engine_solver")
    return Solver({"solver": sc, "dataloader": {"batch_size": 4}}, args, model, {"train_loader": loader,
                  "train_iterations": len(loader)}, logger)


def test_nonfinite_steps_skipped_counted_then_stop_with_checkpoint(tmp_path, caplog):
    torch.manual_seed(0)
    model = _FakeModel(nan_from=2)
    solver = _solver(tmp_path, model, max_nonfinite_steps=3)
    before = {}
    with caplog.at_level(logging.WARNING, logger="test_engine_solver"):
        orig_step = solver.step

        def spy(batch, epoch):
            if solver.last_iter == 2:
                before.update({k: v.clone() for k, v in model.state_dict().items()})
            return orig_step(batch, epoch)

        solver.step = spy
        with pytest.raises(TrainingStopped, match="3 non-finite steps in a row"):
            solver.train()
    assert solver.last_iter == 4 and solver.nonfinite_total == 3
    for k, v in model.state_dict().items():  # no optimizer step after the NaNs
        assert torch.equal(v, before[k]) and torch.isfinite(v).all()
    assert sum("non-finite loss" in r.message for r in caplog.records) == 3
    ck = load_checkpoint(tmp_path / "checkpoint" / "last.pth")
    assert ck["last_iter"] == 4 and ck["nonfinite_steps"] == {"in_row": 3, "total": 3}
    assert ck["data_state"]["batches_done"] == 1 and ck["last_epoch"] == 0


def test_solver_amp_ignored_on_cpu_and_periodic_checkpoints(tmp_path):
    torch.manual_seed(0)
    solver = _solver(tmp_path, _FakeModel(), max_epochs=2, save_epochs=1)
    assert not solver.use_amp
    out = solver.train()
    assert out["stopped_by"] == "max_epochs" and len(out["losses"]) == 8
    names = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert names == ["000000e_3iter.pth", "000001e_7iter.pth", "last.pth"]
    ck = load_checkpoint(tmp_path / "checkpoint" / "last.pth")
    assert set(ck) >= {"model", "ema", "last_epoch", "last_iter", "clip_grad_norm", "optimizer_and_scheduler",
                       "scaler", "rng"}
    assert ck["clip_grad_norm"]["last_epoch"] == 7


@pytest.mark.parametrize("max_iterations, expected_t_max", [(None, 5 * 4), (7, 7), (100, 5 * 4)])
def test_cosine_schedule_spans_the_run_that_actually_happens(tmp_path, max_iterations, expected_t_max):
    sched = {"step_iteration": 1, "target": "vqdiff.engine.lr_scheduler.CosineAnnealingLRWithWarmup",
             "params": {"min_lr": 0.0, "warmup_lr": 0.01, "warmup": 1, "T_max": 10**6}}
    over = {"optimizers_and_schedulers": [{"name": "none", "optimizer": {"target": "torch.optim.AdamW", "params": {}},
                                           "scheduler": sched}]}
    if max_iterations is not None:
        over["max_iterations"] = max_iterations
    solver = _solver(tmp_path, _FakeModel(), **over)  # 5 epochs x 4 iterations
    assert solver.optimizer_and_scheduler["none"]["scheduler"]["module"].T_max == expected_t_max


class _InfGradModel(_FakeModel):
    """Finite loss, infinite gradient: d sqrt(z) / dz at z = 0 (what an fp16 overflow looks like)."""

    def __init__(self):
        super().__init__()
        self.z = nn.Parameter(torch.zeros(()))

    def forward(self, batch, return_loss=True, step=0, **kw):
        return {"loss": super().forward(batch)["loss"] + torch.sqrt(self.z)}


def test_fp16_loss_scale_overflows_are_not_counted_as_divergence(tmp_path):
    torch.manual_seed(0)
    solver = _solver(tmp_path, _InfGradModel(), max_epochs=3, max_nonfinite_steps=3)
    solver.scaler = torch.amp.GradScaler("cpu", init_scale=16.0)  # what CUDA fp16 training runs with
    with pytest.raises(TrainingStopped, match="3 non-finite steps in a row"):
        solver.train()
    # scales 16, 8, 4, 2 overflow and halve (skipped, not counted); at scale 1 the gradient is truly non-finite
    assert solver.overflow_steps == 4 and solver.nonfinite_total == 3 and solver.last_iter == 6
    assert solver.scaler.get_scale() < 1.0
