"""Faults of issue 18 one at a time, without training runs (fast): data-set index files that would run code,
config typos and wrong types named by key path, flags after overrides, checkpoint size mismatches naming
the file, listed-but-missing images, leftover .tmp files, signals in DataLoader workers, the run lock, the
environment variable for unsafe pickles, inference inputs (NaN guidance, huge seed, unwritable folder)
and one-line command-line errors."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]

from vqdiff.data.cub200 import Cub200Dataset
from vqdiff.data.layouts import write_layout
from vqdiff.data.robust import MissingImageError
from vqdiff.data.safe_index import UnsafeIndexError, read_name_list
from vqdiff.engine.checkpoint import CheckpointError, env_allows_unsafe_pickle, save_checkpoint
from vqdiff.engine.run_lock import RunLock, RunLockError
from vqdiff.engine.solver import Solver
from vqdiff.modeling.diffusion.guidance import guidance_scales
from vqdiff.utils.cli_errors import run_cli
from vqdiff.utils.config import ConfigError, load_yaml_config, merge_opts_to_config
from vqdiff.utils.config_sections import check_config_sections


# ---------------------------------------------------------------------------------------------- data sets
class _RunsCode:
    def __reduce__(self):
        return (os.makedirs, ("PWNED",))


def test_index_file_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_layout("cub200", tmp_path / "cub", num_images=2, resolution=16)
    names = read_name_list(root / "train" / "filenames.pickle")
    assert len(names) >= 1 and all(isinstance(n, str) and "/" in n for n in names)
    (root / "train" / "filenames.pickle").write_bytes(pickle.dumps([names[0], _RunsCode()]))
    with pytest.raises(UnsafeIndexError, match=r"filenames\.pickle.*makedirs"):
        Cub200Dataset(str(root), "train")
    assert not (tmp_path / "PWNED").exists()


def test_index_reader_takes_python2_bytes_and_refuses_non_lists(tmp_path):
    p = tmp_path / "names.pickle"
    p.write_bytes(pickle.dumps([b"001.Albatross/a", "002.Bird/b"], protocol=2))  # bytes via _codecs.encode
    assert read_name_list(p) == ["001.Albatross/a", "002.Bird/b"]
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UnsafeIndexError, match="holds a dict"):
        read_name_list(p)
    p.write_bytes(pickle.dumps(["a", 3]))
    with pytest.raises(UnsafeIndexError, match="entry 1 is a int"):
        read_name_list(p)
    p.write_bytes(b"junk")
    with pytest.raises(UnsafeIndexError, match="names.pickle"):
        read_name_list(p)


def test_listed_but_missing_image_is_skipped_or_raised_naming_it(tmp_path):
    root = write_layout("cub200", tmp_path / "cub", num_images=3, resolution=16)
    ds = Cub200Dataset(str(root), "train")
    gone = ds.image_path(1)
    gone.unlink()  # still listed in filenames.pickle
    item = ds[1]  # replaced by the next readable image
    assert item["image"].shape == (3, 16, 16) and ds.bad_images == 1 and ds.bad_paths == [str(gone)]
    with pytest.raises(MissingImageError, match=gone.name):
        Cub200Dataset(str(root), "train", on_bad_image="raise")[1]


# ---------------------------------------------------------------------------------------------- configs
def _tiny_config() -> dict:
    return load_yaml_config(REPO / "configs" / "tiny_text_shapes.yaml")


@pytest.mark.parametrize("name", ["coco", "cub200", "ffhq", "imagenet", "tiny_text_shapes", "tiny_vqvae_shapes"])
def test_shipped_configs_pass_the_section_checks(name):
    check_config_sections(load_yaml_config(REPO / "configs" / f"{name}.yaml"))


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["dataloader"].update(num_worker=2), r"unknown key 'dataloader\.num_worker'; did you mean 'dataloader\.num_workers'\?"),
    (lambda c: c["dataloader"].update(batch_size="four"), r"'dataloader\.batch_size' must be an integer, got str 'four'"),
    (lambda c: c["dataloader"].update(batch_size=0), r"'dataloader\.batch_size' must be positive"),
    (lambda c: c["solver"]["ema"].update(decy=0.5), r"unknown key 'solver\.ema\.decy'; did you mean 'solver\.ema\.decay'\?"),
    (lambda c: c["solver"]["ema"].update(decay="high"), r"'solver\.ema\.decay' must be a number, got str"),
    (lambda c: c["solver"]["ema"].update(update_interval=2.5), r"'solver\.ema\.update_interval' must be an integer"),
    (lambda c: c.update(dataloder={}), r"'dataloder' is not a known config section; did you mean 'dataloader'"),
])
def test_config_typos_and_wrong_types_name_the_key_path(edit, message):
    cfg = _tiny_config()
    edit(cfg)
    with pytest.raises(ConfigError, match=message):
        check_config_sections(cfg)


def test_a_flag_after_the_overrides_is_named_as_such():
    for opts in (["solver.base_lr=1", "--no_progress_bar"], ["solver.base_lr", "--no_progress_bar"]):
        with pytest.raises(ConfigError, match="'--no_progress_bar' is a flag after the config overrides: flags go "
                                              "before overrides"):
            merge_opts_to_config(_tiny_config(), opts)


# ---------------------------------------------------------------------------------------------- engine
class _Lin(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.lin = nn.Linear(2, width)

    def get_ema_model(self):
        return self.lin

    def forward(self, batch, return_loss=True, step=0, **kw):  # pragma: no cover - not trained here
        return {"loss": self.lin(batch["x"]).sum()}


def _solver(tmp_path: Path, model: nn.Module) -> Solver:
    sc = {"base_lr": 0.01, "adjust_lr": "none", "max_epochs": 1, "ema": {"decay": 0.5},
          "optimizers_and_schedulers": [{"name": "none", "optimizer": {"target": "torch.optim.AdamW", "params": {}}}]}
    args = types.SimpleNamespace(save_dir=str(tmp_path), seed=0, progress_bar=False)
    return Solver({"solver": sc, "dataloader": {"batch_size": 1}}, args, model, {"train_iterations": 1},
                  logging.getLogger("test_reliability_faults"))


def test_checkpoint_of_another_size_names_the_file_and_the_keys(tmp_path):
    small = _solver(tmp_path / "small", _Lin(3))
    small.save(force=True)
    big = _solver(tmp_path / "big", _Lin(5))
    path = tmp_path / "small" / "checkpoint" / "last.pth"
    for kwargs in ({}, {"load_optimizer_and_scheduler": False, "load_others": False}):  # --auto_resume, --load_path
        with pytest.raises(CheckpointError, match=rf"{path}.*2 tensor\(s\) of another size: lin\.weight: "
                                                  r"checkpoint \[3, 2\] vs model \[5, 2\]; lin\.bias"):
            big.resume(path, **kwargs)


class _SignalledInValidation(_Lin):
    """Trains normally; its first validation forward delivers SIGTERM the way the handler would."""

    solver: Solver

    def forward(self, batch, return_loss=True, step=0, **kw):
        if not self.training and self.solver._stop_signal is None:
            self.solver._stop_signal = int(signal.SIGTERM)
        return {"loss": (self.lin(batch["x"]) ** 2).mean()}


def test_a_signal_during_validation_stops_after_the_epoch_end_checkpoint(tmp_path):
    data = [{"x": torch.randn(2)} for _ in range(4)]
    loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=torch.utils.data.DistributedSampler(
        data, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True), drop_last=True)
    model = _SignalledInValidation(1)
    sc = {"base_lr": 0.01, "adjust_lr": "none", "max_epochs": 3, "validation_epochs": 1, "sample_iterations": -1,
          "optimizers_and_schedulers": [{"name": "none", "optimizer": {"target": "torch.optim.AdamW", "params": {}}}]}
    model.solver = Solver({"solver": sc, "dataloader": {"batch_size": 2}},
                          types.SimpleNamespace(save_dir=str(tmp_path), seed=0, progress_bar=False), model,
                          {"train_loader": loader, "validation_loader": loader, "train_iterations": 2},
                          logging.getLogger("test_reliability_faults"))
    assert model.solver.train()["stopped_by"] == "signal SIGTERM"
    ck = torch.load(tmp_path / "checkpoint" / "last.pth", weights_only=True)
    assert (ck["last_epoch"], ck["last_iter"], ck["data_state"]["batches_done"]) == (0, 1, 0)  # no step after


def test_a_save_removes_the_tmp_file_a_killed_save_left(tmp_path):
    stale = tmp_path / ".last.pth.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    other = tmp_path / ".other.pth.abc123.tmp"  # another file's temporary: not ours to delete
    other.write_bytes(b"x")
    save_checkpoint({"a": torch.ones(1)}, tmp_path / "last.pth")
    assert not stale.exists() and other.exists() and (tmp_path / "last.pth").is_file()


def test_signal_handler_ignores_forked_dataloader_workers(tmp_path, monkeypatch):
    solver = _solver(tmp_path, _Lin(1))
    previous = solver._install_signal_handlers()
    try:
        handler = signal.getsignal(signal.SIGINT)
        real_pid = os.getpid()
        monkeypatch.setattr(os, "getpid", lambda: real_pid + 1)  # as in a forked worker
        handler(signal.SIGINT, None)
        assert solver._stop_signal is None
        monkeypatch.setattr(os, "getpid", lambda: real_pid)
        handler(signal.SIGINT, None)
        assert solver._stop_signal == signal.SIGINT
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path):
    messages: list[str] = []
    (tmp_path / "run.lock").write_text("999999999 somehost\n")  # left by a process that no longer runs
    with RunLock(tmp_path, log=messages.append):
        assert "left by PID 999999999" in messages[0]
        assert (tmp_path / "run.lock").read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunLockError, match=rf"PID {os.getpid()} .*holds the lock {tmp_path / 'run.lock'}"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released: free again
        pass


def test_unsafe_pickle_variable_names_files_and_a_blanket_value_opens_none(tmp_path, monkeypatch):
    trusted, other = tmp_path / "a.pth", tmp_path / "b.pth"
    monkeypatch.setenv("VQDIFF_ALLOW_UNSAFE_PICKLE", f"{trusted}{os.pathsep}/elsewhere/c.pth")
    assert env_allows_unsafe_pickle(trusted) and not env_allows_unsafe_pickle(other)
    monkeypatch.setenv("VQDIFF_ALLOW_UNSAFE_PICKLE", "1")
    with pytest.warns(UserWarning, match="no longer allows"):
        assert not env_allows_unsafe_pickle(trusted)


# ---------------------------------------------------------------------------------------------- inference
def test_non_finite_guidance_scale_is_refused():
    for spec in (float("nan"), float("inf"), "linear:nan:1"):
        with pytest.raises(ValueError, match="guidance scale must be finite"):
            guidance_scales(spec, 10)
    assert guidance_scales(2.0, 3) == [2.0, 2.0, 2.0]


def test_seed_and_output_folder_are_checked_before_sampling(tmp_path):
    from vqdiff.inference.api import VQ_Diffusion

    engine = VQ_Diffusion.__new__(VQ_Diffusion)  # only the checks, no model
    engine.device = torch.device("cpu")
    for seed in (2**64, -2**63 - 1, 1.5, True):
        with pytest.raises(ValueError, match="seed must be an integer"):
            engine._generator(seed)
    assert engine._generator(2**64 - 1) is not None
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write samples to .*a_file"):
        engine._output_folder(blocker, "a caption")
    engine._output_folder(tmp_path / "out", "a caption")
    assert (tmp_path / "out" / "a caption").is_dir()


# ---------------------------------------------------------------------------------------------- command line
def test_cli_error_is_one_line_plus_hint_and_debug_shows_the_traceback(capsys):
    def main(argv):
        raise ConfigError("'dataloader.batch_size' must be an integer, got str 'four'")

    with pytest.raises(SystemExit) as e:
        run_cli(main, ["x"], "train.py")
    assert e.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["train.py: error: ConfigError: 'dataloader.batch_size' must be an integer, got str 'four'",
                   "train.py: (run with --debug for the full traceback)"]
    with pytest.raises(ConfigError):
        run_cli(main, ["--debug"], "train.py")


def test_train_py_input_error_prints_two_lines(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "train.py"), "--config_file", "missing.yaml", "--name", "x"],
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and "missing.yaml" in lines[0] and "--debug" in lines[1], out.stderr


def test_data_warnings_reach_the_training_log(tmp_path):
    import train
    from vqdiff.utils.logger import get_logger

    logger = get_logger("test_reliability_faults.train_log", tmp_path / "log.txt")
    try:
        undo = train._share_log_file(logger, "vqdiff.data")
        logging.getLogger("vqdiff.data.robust").warning("skipping unreadable image 'x.jpg'")
        undo()
        logging.getLogger("vqdiff.data.robust").warning("after the run")
    finally:
        for h in list(logger.handlers):
            h.close()
            logger.removeHandler(h)
    text = (tmp_path / "log.txt").read_text()
    assert "skipping unreadable image 'x.jpg'" in text and "after the run" not in text


def test_demo_exits_after_a_signal_instead_of_sampling(tmp_path, monkeypatch):
    from vqdiff.demo import shapes as demo

    monkeypatch.setattr(demo, "_train_all", lambda *a, **k: {"stopped_by": "signal SIGTERM", "signal": 15})
    monkeypatch.setattr(demo, "_evaluate", lambda *a, **k: pytest.fail("sampled after SIGTERM"))
    try:
        with pytest.raises(SystemExit) as e:
            demo.main(["--quick", "--output", str(tmp_path / "demo")])
    finally:
        torch.set_flush_denormal(False)  # demo.main turns it on for the process
    assert e.value.code == 128 + signal.SIGTERM


def test_train_py_refuses_a_seed_torch_cannot_take(capsys):
    import train

    with pytest.raises(SystemExit):
        train.get_args(["--config_file", "c.yaml", "--seed", str(10**23)])
    assert "--seed must be between -2**62 and 2**62" in capsys.readouterr().err
    assert train.get_args(["--config_file", "c.yaml", "--seed", "-5"]).seed == -5


def test_train_py_needs_a_config_file_or_a_run_to_resume(capsys):
    """No default config path (the one train.py had named a file that does not exist)."""
    import train

    with pytest.raises(SystemExit):
        train.get_args(["--seed", "0"])
    assert "--config_file is required (or --resume_name NAME" in capsys.readouterr().err
    args = train.get_args(["--resume_name", "run1"])
    assert args.config_file == os.path.join("OUTPUT", "run1", "configs", "config.yaml") and args.auto_resume
    assert train.get_args(["--config_file", "configs/coco.yaml"]).name == "coco"
