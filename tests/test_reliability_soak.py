"""Training faults end to end on the tiny text config (CPU, about a minute in all): a run killed with
SIGKILL several times (at seeded moments, two of them in the middle of a checkpoint write) and resumed
each time ends bit-equal to an uninterrupted run with validation on; a resume from an epoch-end checkpoint
equals the uninterrupted run; a NaN run stops at the limit with its checkpoint; two runs on one folder:
the second refuses; a finished run is not started again without --auto_resume or --overwrite."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from vqdiff.engine.run_lock import RunLock, RunLockError
from vqdiff.engine.solver import TrainingStopped
from vqdiff.utils.tiny_parts import write_tiny_parts

REPO = Path(__file__).resolve().parents[1]

CFG = str(REPO / "configs" / "tiny_text_shapes.yaml")
# 4 epochs of 4 iterations, validation after every epoch, only last.pth written
FLAGS = ["--config_file", CFG, "--seed", "0", "--no_progress_bar", "--log_frequency", "1"]
OVERRIDES = ["solver.max_epochs=4", "solver.save_epochs=1000", "solver.validation_epochs=1"]

# runs train.py with torch.save writing half the file, flushing, then (on the SOAK_KILL_IN_SAVE-th save)
# killing its own process with SIGKILL: a kill in the middle of a checkpoint write, deterministically
KILLING_WRAPPER = '''
import io, os, runpy, signal, sys
import torch
kill_at, calls, save = int(os.environ.get("SOAK_KILL_IN_SAVE", "0")), [0], torch.save
def half_then_maybe_die(obj, f, *args, **kwargs):
    if not hasattr(f, "write"):
        return save(obj, f, *args, **kwargs)
    calls[0] += 1
    buf = io.BytesIO()
    save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    f.write(data[len(data) // 2:])
torch.save = half_then_maybe_die
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("soak")
    write_tiny_parts(root)
    return root


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _assert_same(a, b, where: str = "checkpoint") -> int:
    """Recursively compare two checkpoint trees; returns the number of tensors compared."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b), where
        return 1
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(map(str, a)), sorted(map(str, b)))
        return sum(_assert_same(a[k], b[k], f"{where}.{k}") for k in a)
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        return sum(_assert_same(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    assert a == b, (where, a, b)
    return 0


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _count_iter_lines(log: Path) -> int:
    return log.read_text().count(" | iter ") if log.is_file() else 0


def test_sigkilled_and_resumed_run_is_bit_equal_to_an_uninterrupted_one(tiny_root, monkeypatch):
    monkeypatch.chdir(tiny_root)
    train.main([*FLAGS, "--name", "reference", *OVERRIDES])
    reference = _load(tiny_root / "OUTPUT" / "reference" / "checkpoint" / "last.pth")
    assert reference["last_epoch"] == 3 and reference["last_iter"] == 15

    wrapper = tiny_root / "killing_train.py"
    wrapper.write_text(KILLING_WRAPPER)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = tiny_root / "OUTPUT" / "soak"
    log, last = out / "logs" / "log.txt", out / "checkpoint" / "last.pth"
    rng = random.Random(0)
    # in-save kills at the 1st and 2nd save of their launch; the others after k more logged iterations
    plan = [("save", 1), ("iter", rng.randint(1, 6)), ("save", 2), ("iter", rng.randint(1, 6)),
            ("iter", rng.randint(1, 6)), ("finish", 0)]
    kills, deadline, errs = 0, time.time() + 120, []  # the launches take 10-40 s on 2 busy cores
    for mode, k in plan:
        run_env = dict(env, SOAK_KILL_IN_SAVE=str(k if mode == "save" else 0))
        seen = _count_iter_lines(log)
        proc = subprocess.Popen([sys.executable, str(wrapper), str(REPO / "train.py"), *FLAGS, "--name", "soak",
                                 "--auto_resume", *OVERRIDES], cwd=tiny_root, env=run_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if mode == "iter":
            while proc.poll() is None and _count_iter_lines(log) < seen + k and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.05))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
        errs.append(err)
        if mode == "finish":
            assert proc.returncode == 0, err
        elif proc.returncode == -signal.SIGKILL:
            kills += 1
        if last.is_file():  # whatever the moment of the kill, last.pth loads ...
            _load(last)
        # ... and the temporary files of killed saves do not pile up (the next save deletes them)
        assert len(list(last.parent.glob(".*.tmp"))) <= 1
    assert kills >= 3  # both in-save kills and at least one iteration kill hit a live run
    assert "took over the lock" in "".join(errs)  # a killed run's lock is stale: the next launch takes it
    soaked = _load(last)
    assert soaked["last_iter"] == 15
    assert _assert_same(reference, soaked) > 50  # model (with Lt_history), EMA, optimizer, RNG, ...


def test_resume_from_an_epoch_end_checkpoint_with_validation_is_exact(tiny_root, monkeypatch):
    monkeypatch.chdir(tiny_root)
    base = ["--config_file", CFG, "--seed", "0", "--no_progress_bar"]
    over = ["solver.save_epochs=1000", "solver.validation_epochs=1"]
    train.main([*base, "--name", "epochs_full", *over, "solver.max_epochs=2"])
    train.main([*base, "--name", "epochs_part", *over, "solver.max_epochs=1"])  # stops at the end of epoch 0
    train.main([*base, "--name", "epochs_part", "--auto_resume", *over, "solver.max_epochs=2"])
    a = _load(tiny_root / "OUTPUT" / "epochs_full" / "checkpoint" / "last.pth")
    b = _load(tiny_root / "OUTPUT" / "epochs_part" / "checkpoint" / "last.pth")
    assert _assert_same(a, b) > 50


def test_nan_run_skips_counts_and_stops_at_the_limit_with_a_checkpoint(tiny_root, monkeypatch):
    monkeypatch.chdir(tiny_root)
    with pytest.raises(TrainingStopped, match=r"3 non-finite steps in a row .*max_nonfinite_steps=3.*last\.pth"):
        train.main(["--config_file", CFG, "--seed", "0", "--no_progress_bar", "--name", "nanx",
                    "solver.base_lr=1e8", "solver.max_nonfinite_steps=3", "solver.max_epochs=100"])
    ck = _load(tiny_root / "OUTPUT" / "nanx" / "checkpoint" / "last.pth")
    assert ck["nonfinite_steps"]["in_row"] == 3
    hist = ck["model"]["transformer.Lt_history"]
    assert torch.isfinite(hist).all() and hist.abs().sum() > 0  # the diverged steps left the history alone
    assert "step skipped (3 in a row" in (tiny_root / "OUTPUT" / "nanx" / "logs" / "log.txt").read_text()


def test_second_run_on_a_locked_folder_refuses_naming_lock_and_pid(tiny_root, monkeypatch):
    monkeypatch.chdir(tiny_root)
    with RunLock(tiny_root / "OUTPUT" / "busy"):
        with pytest.raises(RunLockError, match=rf"PID {os.getpid()}.*OUTPUT/busy/run\.lock"):
            train.main(["--config_file", CFG, "--name", "busy", "--no_progress_bar", "solver.max_epochs=1"])
    assert not (tiny_root / "OUTPUT" / "busy" / "checkpoint").exists()  # nothing was written


def test_finished_run_is_not_started_again_without_auto_resume_or_overwrite(tiny_root, monkeypatch):
    monkeypatch.chdir(tiny_root)
    run = ["--config_file", CFG, "--name", "done", "--seed", "0", "--no_progress_bar", "solver.max_epochs=1",
           "solver.save_epochs=1000"]
    train.main(run)
    last = tiny_root / "OUTPUT" / "done" / "checkpoint" / "last.pth"
    before = last.stat().st_mtime_ns
    with pytest.raises(RunLockError, match=r"already holds a run .*--auto_resume.*--overwrite"):
        train.main(run)
    assert last.stat().st_mtime_ns == before
    assert train.main([*run[:-2], "--overwrite", *run[-2:]])["stopped_by"] == "max_epochs"
