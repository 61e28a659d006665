"""The engine's small parts on their own: RNG capture, the resumable loader, the LRSchedule protocol and
the typed ``solver.ema`` section built through target/params."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from vqdiff.engine.ema import EMA, build_ema
from vqdiff.engine.lr_scheduler import (CosineAnnealingLRWithWarmup, LRSchedule, ReduceLROnPlateauWithWarmup,
                                        TorchLRSchedule, build_lr_schedule)
from vqdiff.engine.resumable_loader import SkipSampler, loader_skipping
from vqdiff.engine.rng_state import get_rng_state, set_rng_state
from vqdiff.utils.config import ConfigError
from vqdiff.utils.config_sections import EMAConfig, check_config_sections, parse_ema_config


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    np.random.randn()  # a cached gaussian in numpy's state
    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    first = _draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == first
    assert _draws() != first


def test_loader_skipping_continues_the_same_epoch_order():
    data = TensorDataset(torch.arange(20))

    def loader() -> DataLoader:
        gen = torch.Generator().manual_seed(3)
        return DataLoader(data, batch_size=4, sampler=RandomSampler(data, generator=gen), drop_last=True)

    full = [b[0].tolist() for b in loader()]
    rest = [b[0].tolist() for b in loader_skipping(loader(), 2)]
    assert rest == full[2:] and len(loader_skipping(loader(), 2)) == 3
    same = loader()
    assert loader_skipping(same, 0) is same
    assert len(SkipSampler(range(5), 7)) == 0 and list(SkipSampler(range(5), 2)) == [2, 3, 4]


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_vqdiff_and_torch_schedules_follow_the_protocol():
    plateau = ReduceLROnPlateauWithWarmup(_optimizer(), patience=0, factor=0.5)
    cosine = CosineAnnealingLRWithWarmup(_optimizer(), T_max=10)
    step_lr = TorchLRSchedule(torch.optim.lr_scheduler.StepLR(_optimizer(), step_size=1, gamma=0.5))
    torch_plateau = TorchLRSchedule(torch.optim.lr_scheduler.ReduceLROnPlateau(_optimizer(), patience=0))
    for schedule in (plateau, cosine, step_lr, torch_plateau):
        assert isinstance(schedule, LRSchedule)
    assert plateau.total_steps is None and cosine.total_steps == 10 and step_lr.total_steps is None
    with pytest.raises(ValueError, match="needs the metric"):
        plateau.step()
    with pytest.raises(ValueError, match="stepped with a metric"):
        torch_plateau.step()
    plateau.step(1.0)
    plateau.step(2.0)  # no improvement, patience 0: halved
    assert plateau.get_last_lr() == [pytest.approx(0.05)]
    step_lr.scheduler.optimizer.step()
    step_lr.step(123.0)  # the metric is not passed to a torch scheduler that takes none
    assert step_lr.last_epoch == 1 and step_lr.get_last_lr() == [pytest.approx(0.05)]
    torch_plateau.step(1.0)
    assert torch_plateau.best == 1.0
    assert step_lr.state_dict() == step_lr.scheduler.state_dict()


@pytest.mark.parametrize("target", ["vqdiff.engine.lr_scheduler.CosineAnnealingLRWithWarmup",
                                    "torch.optim.lr_scheduler.CosineAnnealingLR"])
def test_a_schedule_taking_t_max_spans_the_run(target):
    schedule = build_lr_schedule(target, {"T_max": 5}, _optimizer(), run_iterations=40, key_path="s.0.scheduler")
    assert schedule.total_steps == 40 and schedule.T_max == 40


def test_schedules_live_in_one_module_reached_by_every_old_name():
    import vqdiff.engine.lr_schedule as former
    import vqdiff.engine.lr_scheduler as schedules
    from pathlib import Path

    from vqdiff.utils.config import resolve_target

    assert (former.LRSchedule, former.TorchLRSchedule, former.build_lr_schedule) == (
        LRSchedule, TorchLRSchedule, build_lr_schedule)
    for name in ("ReduceLROnPlateauWithWarmup", "CosineAnnealingLRWithWarmup", "LambdaWarmUpCosineScheduler"):
        cls = getattr(schedules, name)
        assert cls.__module__ == "vqdiff.engine.lr_scheduler"  # the path config targets and checkpoints name
        assert resolve_target(f"vqdiff.engine.lr_scheduler.{name}") is cls
    assert resolve_target("image_synthesis.engine.lr_scheduler.ReduceLROnPlateauWithWarmup") is ReduceLROnPlateauWithWarmup
    assert resolve_target("image_synthesis.taming.lr_scheduler.LambdaWarmUpCosineScheduler") is (
        schedules.LambdaWarmUpCosineScheduler)
    engine = Path(__file__).resolve().parents[1] / "vqdiff" / "engine"
    assert "class " not in (engine / "lr_schedule.py").read_text(encoding="utf-8")  # an alias, no second home


def test_build_lr_schedule_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"'s\.0\.scheduler\.params' do not fit torch\.optim\.lr_scheduler\.StepLR"):
        build_lr_schedule("torch.optim.lr_scheduler.StepLR", {"step": 1}, _optimizer(), 10, "s.0.scheduler")
    with pytest.raises(ConfigError, match=r"'s\.0\.scheduler\.target' copy\.copy is neither a torch scheduler"):
        build_lr_schedule("copy.copy", {}, _optimizer(), 10, "s.0.scheduler")


def test_ema_section_official_and_target_params_forms_parse_alike():
    official = parse_ema_config({"decay": 0.5, "update_interval": 25})
    explicit = parse_ema_config({"target": "vqdiff.engine.ema.EMA", "params": {"decay": 0.5, "update_interval": 25}})
    assert official == explicit == EMAConfig(decay=0.5, update_interval=25)
    assert parse_ema_config({}) == EMAConfig() and EMAConfig().target == "vqdiff.engine.ema.EMA"
    ema = build_ema(explicit, torch.nn.Linear(2, 2))
    assert type(ema) is EMA and (ema.decay, ema.update_interval, ema.device.type) == (0.5, 25, "cpu")


@pytest.mark.parametrize("section, message", [
    ({"decay": 0.5, "params": {"update_interval": 2}}, r"'solver\.ema\.decay' cannot sit beside 'solver\.ema\.params'"),
    ({"params": {"decay": 1.5}}, r"'solver\.ema\.decay' must be in \[0, 1\], got 1\.5"),
    ({"params": {"decy": 0.5}}, r"unknown key 'solver\.ema\.decy'; did you mean 'solver\.ema\.decay'\?"),
    ({"params": [0.5]}, r"'solver\.ema\.params' must be a mapping of EMA options"),
])
def test_ema_section_errors_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        check_config_sections({"solver": {"ema": section}})


def test_ema_target_that_does_not_fit_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'solver\.ema\.target' torch\.nn\.Linear does not take"):
        build_ema(EMAConfig(target="torch.nn.Linear"), torch.nn.Linear(2, 2))


def test_engine_modules_stay_small():
    """One concept per module (issue 16): no engine file over ~450 lines."""
    from pathlib import Path

    engine = Path(__file__).resolve().parents[1] / "vqdiff" / "engine"
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in engine.glob("*.py")}
    assert "solver.py" in sizes and max(sizes.values()) <= 450, sizes


def test_ema_class_and_section_share_defaults_and_range_check():
    ema = EMA(torch.nn.Linear(2, 2))
    assert (ema.decay, ema.update_interval, ema.device.type) == (EMAConfig.decay, EMAConfig.update_interval, "cpu")
    with pytest.raises(ValueError, match=r"'solver\.ema\.decay' must be in \[0, 1\], got -0\.1"):
        EMA(torch.nn.Linear(2, 2), decay=-0.1)
    with pytest.raises(ValueError, match=r"'solver\.ema\.update_interval' must be >= 1, got 0"):
        EMA(torch.nn.Linear(2, 2), update_interval=0)


def test_ema_with_a_parameter_filter_averages_and_swaps_only_the_chosen_parameters():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    full = EMA(model, decay=0.5)
    part = EMA(model, decay=0.5, params=lambda name, _: name.startswith("1."))
    assert part.names == ["1.weight", "1.bias"] and set(part.state_dict()) == {"1.weight", "1.bias"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert full.update(0) and part.update(0)
    for name in part.names:  # the same rule as the full EMA: 0.5 old + 0.5 new
        torch.testing.assert_close(part.state_dict()[name], full.state_dict()[name])
        torch.testing.assert_close(part.state_dict()[name], before[name] + 0.5)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with part.swapped():
        torch.testing.assert_close(model[1].weight, before["1.weight"] + 0.5)
        torch.testing.assert_close(model[0].weight, live["0.weight"])  # not chosen: untouched
    torch.testing.assert_close(model[1].weight, live["1.weight"])
    with pytest.raises(Exception, match="missing"):
        part.load_state_dict({"1.weight": before["1.weight"]})
