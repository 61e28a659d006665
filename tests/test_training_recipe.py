"""The official training recipe by default (issue 15 B) and the checked ``solver:`` section (issue 18, 5 and 8).

Clipping rule, validation weights, ``--amp``, the official ``solver:`` forms (epoch lists, scheduler
``step_iteration: epoch``, torch plateau/cosine schedulers), the log line, and checkpoints that the official
``Solver.resume`` can read (its rules applied key by key in :func:`_official_resume_problems`).
"""

from __future__ import annotations

import logging
import math
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from vqdiff.engine.amp import resolve_amp
from vqdiff.engine.checkpoint import load_checkpoint
from vqdiff.engine.solver import Solver
from vqdiff.engine.solver_config import parse_solver_config
from vqdiff.engine.train_log import ProgressLine, format_seconds
from vqdiff.utils.config import ConfigError, instantiate_from_config, load_yaml_config

REPO = Path(__file__).resolve().parents[1]
LOGGER = "test_training_recipe"


class _Model(nn.Module):
    """loss = mean((lin(x) - y)^2) * scale; ``scale`` makes the gradient large (to see clipping)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        torch.manual_seed(5)
        self.lin = nn.Linear(3, 1)
        self.scale = scale

    def get_ema_model(self):
        return self.lin

    def forward(self, batch, return_loss=True, step=0, **kw):
        return {"loss": self.scale * ((self.lin(batch["x"]).squeeze(1) - batch["y"]) ** 2).mean()}


def _loader(n=16, batch_size=4):
    g = torch.Generator().manual_seed(3)
    data = [{"x": torch.randn(3, generator=g), "y": torch.tensor(float(i % 5))} for i in range(n)]
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=True)


def _solver_section(**over):
    sc = {"base_lr": 0.1, "adjust_lr": "none", "max_epochs": 1, "save_epochs": 100, "validation_epochs": -1,
          "sample_iterations": -1,
          "optimizers_and_schedulers": [{"name": "none", "optimizer": {"target": "torch.optim.SGD", "params": {}}}]}
    sc.update(over)
    return sc


def _solver(tmp_path, model=None, val=False, amp=False, **over):
    loader = _loader()
    dl = {"train_loader": loader, "train_iterations": len(loader)}  # 4 iterations per epoch
    if val:
        dl["validation_loader"] = _loader(8)
    args = types.SimpleNamespace(save_dir=str(tmp_path), log_frequency=1, seed=0, amp=amp, progress_bar=False)
    return Solver({"solver": _solver_section(**over), "dataloader": {"batch_size": 4}}, args, model or _Model(), dl,
                  logging.getLogger(LOGGER))


# ---------------------------------------------------------------------------------------------- solver config
@pytest.mark.parametrize("over, message", [
    ({"max_iteratons": 3}, "unknown key 'solver.max_iteratons'; did you mean 'solver.max_iterations'?"),
    ({"max_epochs": "abc"}, "'solver.max_epochs' must be an integer, got str 'abc'"),
    ({"save_epochs": [1, "x"]}, "'solver.save_epochs.1' must be an integer"),
    ({"validation_epochs": "often"}, "'solver.validation_epochs' must be an integer or a list of epoch numbers"),
    ({"sample_iterations": "epochs"}, "'solver.sample_iterations' must be an integer or 'epoch'"),
    ({"amp_dtype": "fp8"}, "'solver.amp_dtype' must be 'fp16', 'bf16' or 'auto'"),
    ({"optimizers_and_schedulers": [{"name": "none", "optimiser": {}}]},
     "unknown key 'solver.optimizers_and_schedulers.0.optimiser'; did you mean "
     "'solver.optimizers_and_schedulers.0.optimizer'?"),
    ({"optimizers_and_schedulers": [{"optimizer": {"target": "torch.optim.SGD"},
                                     "scheduler": {"target": "x.Y", "step_iteration": "epch"}}]},
     "'solver.optimizers_and_schedulers.0.scheduler.step_iteration' must be an integer or 'epoch', got 'epch'"),
    ({"optimizers_and_schedulers": [{"optimizer": {"target": "torch.optim.SGD", "step_iteraton": 2}}]},
     "did you mean 'solver.optimizers_and_schedulers.0.optimizer.step_iteration'"),
])
def test_solver_section_errors_name_the_key_path(over, message):
    with pytest.raises(ConfigError) as info:
        parse_solver_config(_solver_section(**over))
    assert message in str(info.value)


def test_solver_config_accepts_the_official_forms_and_every_shipped_config():
    cfg = parse_solver_config(_solver_section(
        save_epochs=[1, 3], validation_epochs=[2], sample_iterations="epoch", base_lr="3e-6", debug=False,
        optimizers_and_schedulers=[{"name": "none", "optimizer": {"target": "torch.optim.AdamW"},
                                    "scheduler": {"target": "torch.optim.lr_scheduler.StepLR",
                                                  "step_iteration": "epoch", "params": {"step_size": 1}}}]))
    assert cfg.save_epochs == (1, 3) and cfg.validation_epochs == (2,) and cfg.base_lr == 3e-6
    assert cfg.optimizers_and_schedulers[0].scheduler.step_every(7) == 7 and cfg.sample_every(7) == 7
    assert cfg.amp_dtype == "fp16"  # the official --amp
    for name in ("coco", "cub200", "ffhq", "imagenet", "tiny_text_shapes"):
        parsed = parse_solver_config(load_yaml_config(REPO / "configs" / f"{name}.yaml")["solver"])
        assert parsed.max_epochs > 0, name


@pytest.mark.parametrize("name", ["coco", "coco_tune", "cub200", "ffhq", "imagenet", "ithq"])
def test_released_official_config_solver_sections_parse(name):
    from conftest import fixtures_dir

    section = load_yaml_config(fixtures_dir("official_configs") / f"configs__{name}.yaml")["solver"]
    cfg = parse_solver_config(section)
    assert cfg.base_lr == 3e-6 and cfg.clip_grad_norm["params"]["end_iteration"] == 5000
    assert cfg.optimizers_and_schedulers[0].scheduler.target.endswith("ReduceLROnPlateauWithWarmup")
    if name == "ithq":  # the one config with save_iterations and a numeric sample_iterations
        assert (cfg.save_epochs, cfg.save_iterations, cfg.sample_iterations) == (1, 1000, 2000)


def test_official_config_clips_every_step_and_warns_about_end_iteration(tmp_path, caplog):
    section = load_yaml_config(REPO / "configs" / "coco.yaml")["solver"]
    clip = instantiate_from_config(section["clip_grad_norm"], key_path="solver.clip_grad_norm")
    assert (clip.start_iteration, clip.end_iteration, clip.rule) == (0, 5000, "official")
    assert all(clip.should_clip(i) for i in (0, 4999, 5000, 10 ** 6))  # end_iteration has no effect
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _solver(tmp_path, clip_grad_norm=section["clip_grad_norm"])
    assert any("end_iteration=5000 has no effect" in r.message and "rule: window" in r.message
               for r in caplog.records)


@pytest.mark.parametrize("name", ["coco", "cub200", "imagenet", "ffhq"])
def test_official_config_solver_section_builds_the_official_recipe(tmp_path, name):
    """The released configs' whole solver section builds: official clipping, the plateau scheduler every
    iteration, --amp = fp16 with a GradScaler, an EMA (validated beside the raw weights: test_engine_solver_extras)."""
    section = load_yaml_config(REPO / "configs" / f"{name}.yaml")["solver"]
    solver = _solver(tmp_path, **section)
    assert solver.clip_grad_norm.rule == "official" and solver.clip_grad_norm.should_clip(10 ** 6)
    sched = solver.optimizer_and_scheduler["none"]["scheduler"]
    assert type(sched["module"]).__name__ == "ReduceLROnPlateauWithWarmup" and sched["step_iteration"] == 1
    assert solver.cfg.amp_dtype == "fp16" and resolve_amp(True, solver.cfg.amp_dtype, "cuda").use_scaler
    assert solver.has_ema and solver.cfg.ema.decay == 0.99 and solver.ema.decay == 0.99


@pytest.mark.parametrize("rule, clipped_after_end", [("official", True), ("window", False)])
def test_clipping_rule_in_training(tmp_path, rule, clipped_after_end):
    """SGD lr 1 on a large loss: a clipped step moves the weights by at most max_norm."""
    model = _Model(scale=1000.0)
    solver = _solver(tmp_path, model, base_lr=1.0, clip_grad_norm={
        "target": "vqdiff.engine.clip_grad_norm.ClipGradNorm",
        "params": {"start_iteration": 0, "end_iteration": 2, "max_norm": 0.5, "rule": rule}})
    moves = []
    for batch in solver._set_epoch(0):
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        solver.last_iter += 1
        solver.step(batch, 0)
        moves.append(float(torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in model.parameters()])
                                                    - before)))
    assert all(m <= 0.5 + 1e-5 for m in moves[:2])
    assert all(m <= 0.5 + 1e-5 for m in moves[2:]) == clipped_after_end


# ---------------------------------------------------------------------------------------------- epochs, schedulers
def test_save_and_validation_epoch_lists(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _solver(tmp_path, val=True, max_epochs=3, save_epochs=[1, 3], validation_epochs=[2]).train()
    names = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert names == ["000000e_3iter.pth", "000002e_11iter.pth", "last.pth"]
    validated = [r.message for r in caplog.records if r.message.startswith("validation epoch")]
    assert len(validated) == 1 and validated[0].startswith("validation epoch 1: loss")


def test_scheduler_step_iteration_epoch_steps_once_per_epoch(tmp_path):
    solver = _solver(tmp_path, max_epochs=3, optimizers_and_schedulers=[{
        "name": "none", "optimizer": {"target": "torch.optim.SGD"},
        "scheduler": {"target": "torch.optim.lr_scheduler.StepLR", "step_iteration": "epoch",
                      "params": {"step_size": 1, "gamma": 0.5}}}])
    assert solver.optimizer_and_scheduler["none"]["scheduler"]["step_iteration"] == 4
    solver.train()
    sched = solver.optimizer_and_scheduler["none"]["scheduler"]["module"]
    assert sched.last_epoch == 3 and solver._lrs()["none"] == pytest.approx(0.1 * 0.5 ** 3)


def test_torch_plateau_scheduler_is_stepped_with_the_training_loss(tmp_path, caplog):
    solver = _solver(tmp_path, optimizers_and_schedulers=[{
        "name": "none", "optimizer": {"target": "torch.optim.SGD"},
        "scheduler": {"target": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                      "params": {"threshold": 0.0, "patience": 100}}}])
    losses = solver.train()["losses"]
    assert solver.optimizer_and_scheduler["none"]["scheduler"]["module"].best == pytest.approx(min(losses))


def test_torch_cosine_scheduler_gets_t_max(tmp_path):
    solver = _solver(tmp_path, max_epochs=5, optimizers_and_schedulers=[{
        "name": "none", "optimizer": {"target": "torch.optim.SGD"},
        "scheduler": {"target": "torch.optim.lr_scheduler.CosineAnnealingLR", "params": {"eta_min": 0.0}}}])
    assert solver.optimizer_and_scheduler["none"]["scheduler"]["module"].T_max == 5 * 4


# ---------------------------------------------------------------------------------------------- AMP
def test_amp_is_fp16_with_a_grad_scaler_and_bf16_an_option():
    fp16 = resolve_amp(True, "fp16", "cuda")
    assert fp16.enabled and fp16.dtype == torch.float16 and fp16.use_scaler
    bf16 = resolve_amp(True, "bf16", "cuda:0")
    assert bf16.enabled and bf16.dtype == torch.bfloat16 and not bf16.use_scaler
    assert resolve_amp("bf16", "fp16", "cuda").dtype == torch.bfloat16
    off = resolve_amp(True, "fp16", "cpu")
    assert not off.enabled and off.dtype == torch.float32 and "ignored on cpu" in off.note
    assert not resolve_amp(False, "fp16", "cuda").enabled
    with pytest.raises(ValueError, match="--amp must be fp16, bf16 or auto, got 'fp8'"):
        resolve_amp("fp8", "fp16", "cuda")


def test_train_flags_amp_and_amp_dtype():
    import train

    cfg = ["--config_file", "configs/coco.yaml"]
    assert train.get_args([*cfg, "--amp"]).amp is True and train.get_args([*cfg, "--amp"]).amp_dtype is None
    args = train.get_args([*cfg, "--amp", "--amp_dtype", "bf16", "solver.max_epochs=2"])
    assert args.amp is True and args.amp_dtype == "bf16" and args.opts == ["solver.max_epochs=2"]


def test_cpu_solver_with_amp_stays_fp32(tmp_path):
    solver = _solver(tmp_path, amp=True)
    assert not solver.use_amp and solver.amp_dtype == torch.float32 and not solver.scaler.is_enabled()


# ---------------------------------------------------------------------------------------------- log line
def test_progress_line_counts_to_max_iterations_with_time_and_eta(tmp_path, caplog):
    line = ProgressLine(total_iterations=3000, max_epochs=10, start_iter=-1, start_time=100.0)
    text = line.format(0, 99, {"none/loss": 1.5}, {"none": 1e-3}, 8.0, now=150.0)
    assert "epoch 0/10" in text and "iter 100/3000" in text and "none/loss 1.5000" in text
    assert "0.500 s/iter" in text and f"ETA {format_seconds(0.5 * 2900)}" in text and format_seconds(1450) == "00:24:10"
    assert format_seconds(90061) == "1d 01:01:01"
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _solver(tmp_path, max_epochs=10, max_iterations=3).train()  # 10 x 4 iterations, stopped at 3
    lines = [r.message for r in caplog.records if "| iter " in r.message]
    assert [m.split(" | ")[1] for m in lines] == ["iter 1/3", "iter 2/3", "iter 3/3"]
    assert all("s/iter" in m and "ETA " in m for m in lines)


# ---------------------------------------------------------------------------------------------- checkpoints
# Official reduce-on-plateau scheduler attributes read by its load_state_dict (_init_is_better,
# _prepare_for_warmup) and step (spec: OFFICIAL_NOTES.md section 6; image_synthesis/engine/lr_scheduler.py)
_PLATEAU_ATTRS = {"factor", "min_lrs", "patience", "verbose", "cooldown", "cooldown_counter", "mode", "threshold",
                  "threshold_mode", "warmup_lr", "warmup", "best", "num_bad_epochs", "mode_worse", "eps", "last_epoch"}


def _official_resume_problems(ckpt: dict, has_ema: bool, has_clip: bool, op_names: set) -> list:
    """The official ``Solver.resume`` rules applied to ``ckpt`` key by key; returns what would break it."""
    problems = []
    for key in ("last_epoch", "last_iter"):
        if not isinstance(ckpt.get(key), int):
            problems.append(f"{key} is not an int")
    if not isinstance(ckpt.get("model"), dict) or not all(torch.is_tensor(v) for v in ckpt["model"].values()):
        problems.append("model is not a state dict")
    # "if 'ema' in state_dict and self.ema is not None: self.ema.load_state_dict(state_dict['ema'])"
    ema = ckpt.get("ema")
    if "ema" in ckpt and has_ema and not (isinstance(ema, dict) and all(torch.is_tensor(v) for v in ema.values())):
        problems.append(f"ema is {type(ckpt['ema']).__name__}, not a state dict")
    # "if 'clip_grad_norm' in state_dict and ...: self.clip_grad_norm.load_state_dict(...)" (__dict__.update)
    if "clip_grad_norm" in ckpt and has_clip:
        cg = ckpt["clip_grad_norm"]
        if not isinstance(cg, dict) or not {"start_iteration", "end_iteration", "max_norm", "last_epoch"} <= set(cg):
            problems.append(f"clip_grad_norm is {cg!r}")
    # "for op_sc_n, op_sc in state_dict['optimizer_and_scheduler'].items(): ... [op_sc_n][k][kk]"
    ops = ckpt.get("optimizer_and_scheduler")
    if not isinstance(ops, dict):
        return problems + ["optimizer_and_scheduler is not a dict"]
    for name, entry in ops.items():
        if name not in op_names:
            problems.append(f"optimizer '{name}' unknown to the config")
        for k in ("name", "start_epoch", "end_epoch", "start_iteration", "end_iteration"):
            if not isinstance(entry.get(k), (int, str)):
                problems.append(f"optimizer_and_scheduler.{name}.{k} missing")
        for part in ("optimizer", "scheduler"):
            if part in entry:
                sub = entry[part]
                if not isinstance(sub, dict) or not isinstance(sub.get("module"), dict):
                    problems.append(f"{name}.{part}.module is not a state dict")
                elif not isinstance(sub.get("step_iteration"), int):  # official: compared with (iter + 1) % n
                    problems.append(f"{name}.{part}.step_iteration is {sub.get('step_iteration')!r}")
    return problems


@pytest.mark.parametrize("with_parts", [True, False])
def test_checkpoint_loads_by_the_official_resume_rules(tmp_path, with_parts):
    over = {"max_epochs": 1}
    if with_parts:
        plateau = {"target": "vqdiff.engine.lr_scheduler.ReduceLROnPlateauWithWarmup", "step_iteration": "epoch",
                   "params": {"warmup_lr": 0.2, "warmup": 2}}
        over.update(ema={"decay": 0.5}, clip_grad_norm={"target": "vqdiff.engine.clip_grad_norm.ClipGradNorm",
                                                        "params": {"max_norm": 0.5}},
                    optimizers_and_schedulers=[{"name": "none", "optimizer": {"target": "torch.optim.AdamW"},
                                                "scheduler": plateau}])
    solver = _solver(tmp_path, **over)
    solver.train()
    ckpt = load_checkpoint(tmp_path / "checkpoint" / "last.pth")
    assert None not in ckpt.values()  # the official loader calls load_state_dict on what is there
    assert ("ema" in ckpt, "clip_grad_norm" in ckpt) == (with_parts, with_parts)
    assert _official_resume_problems(ckpt, has_ema=True, has_clip=True, op_names={"none"}) == []
    entry = ckpt["optimizer_and_scheduler"]["none"]
    fresh = type(solver.optimizer_and_scheduler["none"]["optimizer"]["module"])(_Model().parameters())
    fresh.load_state_dict(entry["optimizer"]["module"])  # what the official resume does with it
    if with_parts:
        assert entry["scheduler"]["step_iteration"] == 4  # 'epoch' saved as iterations, as official
        assert _PLATEAU_ATTRS <= set(entry["scheduler"]["module"])
        assert math.isinf(entry["scheduler"]["module"]["mode_worse"])


@pytest.mark.parametrize("over, message", [
    ({"clip_grad_norm": {"target": "vqdiff.engine.clip_grad_norm.ClipGradNorm", "params": {"max_nrom": 0.5}}},
     "'solver.clip_grad_norm.params': vqdiff.engine.clip_grad_norm.ClipGradNorm does not accept "
     "parameter(s) 'max_nrom'"),
    ({"clip_grad_norm": {"target": "vqdiff.engine.clip_grad_norm.ClipGradNorm", "params": {"rule": "windowed"}}},
     "rule must be one of official, window, got 'windowed'"),
    ({"optimizers_and_schedulers": [{"optimizer": {"target": "torch.optim.SGD"}, "scheduler": {
        "target": "vqdiff.engine.lr_scheduler.ReduceLROnPlateauWithWarmup", "params": {"warmup_lrr": 1}}}]},
     "'solver.optimizers_and_schedulers.0.scheduler.params' do not fit vqdiff.engine.lr_scheduler."
     "ReduceLROnPlateauWithWarmup"),
])
def test_nested_solver_params_errors_name_the_key_path(tmp_path, over, message):
    with pytest.raises(ConfigError) as info:
        _solver(tmp_path, **over)
    assert message in str(info.value)


def test_fp16_grad_scaler_step_clips_the_unscaled_gradients(tmp_path):
    """The --amp step path (fp16 autocast + GradScaler, CPU GradScaler here): with SGD lr 1 a clipped step
    moves the weights by exactly max_norm although the loss is scaled by 16 (gradients are unscaled before
    clipping; clipping the scaled gradients, as the official code does, would move them by max_norm / 16)."""
    from vqdiff.engine.amp import AmpSettings

    model = _Model(scale=10.0)
    solver = _solver(tmp_path, model, base_lr=1.0, clip_grad_norm={
        "target": "vqdiff.engine.clip_grad_norm.ClipGradNorm", "params": {"max_norm": 0.5}})
    solver.amp = AmpSettings(True, torch.float16)
    solver.use_amp, solver.amp_dtype = True, torch.float16
    solver.scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    batch = next(iter(solver._set_epoch(0)))
    solver.last_iter += 1
    logs = solver.step(batch, 0)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert "nonfinite" not in logs and "overflow" not in logs and logs["none/grad_norm"] > 0.5
    assert float(torch.linalg.vector_norm(after - before)) == pytest.approx(0.5, rel=1e-3)
    assert solver.scaler.get_scale() == 16.0
