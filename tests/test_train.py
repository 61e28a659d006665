"""train.py end to end on CPU: exact resume on the tiny text config, SIGTERM checkpoint, and a 2-process
gloo torchrun step equal to one process on the same global batch."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from vqdiff.utils.tiny_parts import write_tiny_parts

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_train")
    write_tiny_parts(root)
    return root


CFG = str(REPO / "configs" / "tiny_text_shapes.yaml")


def _run(name: str, *extra: str) -> dict:
    return train.main(["--config_file", CFG, "--name", name, "--seed", "0", "--no_progress_bar", *extra])


def test_auto_resume_reproduces_losses_bit_for_bit(tiny_root, monkeypatch):
    monkeypatch.chdir(tiny_root)
    full = _run("full", "solver.max_iterations=6")
    first = _run("part", "solver.max_iterations=3")
    ck = torch.load("OUTPUT/part/checkpoint/last.pth", weights_only=True)
    assert ck["last_iter"] == 2 and ck["data_state"]["batches_done"] == 3 and len(ck["rng"]) == 1
    second = _run("part", "--auto_resume", "solver.max_iterations=6")  # crosses the epoch end (4 batches/epoch)
    assert len(full["losses"]) == 6 and first["losses"] + second["losses"] == full["losses"]
    a = torch.load("OUTPUT/full/checkpoint/last.pth", weights_only=True)
    b = torch.load("OUTPUT/part/checkpoint/last.pth", weights_only=True)
    assert a["last_iter"] == b["last_iter"] == 5
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    out = Path("OUTPUT/full")
    assert (out / "configs" / "config.yaml").is_file() and (out / "configs" / "args.txt").is_file()
    assert "training finished (max_iterations)" in (out / "logs" / "log.txt").read_text()
    assert (out / "checkpoint" / "000000e_3iter.pth").is_file()  # save_epochs: 1


def test_sigterm_saves_last_checkpoint(tiny_root):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--config_file", CFG, "--name", "sig",
                             "--seed", "0", "--no_progress_bar", "--log_frequency", "1", "solver.max_epochs=1000",
                             "solver.save_epochs=1000", "solver.validation_epochs=1000"],
                            cwd=tiny_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tiny_root / "OUTPUT" / "sig" / "logs" / "log.txt"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.is_file() and "iter 2/" in log.read_text()):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "received signal SIGTERM" in out
    ck = torch.load(tiny_root / "OUTPUT" / "sig" / "checkpoint" / "last.pth", weights_only=True)
    assert ck["last_iter"] >= 1 and ck["data_state"]["batches_done"] + 4 * (ck["last_epoch"] + 1) == ck["last_iter"] + 1


FAKE_MODEL = '''
import torch
from torch import nn

class FakeModel(nn.Module):
    """Deterministic: loss = mean((Linear(image) - label)^2) over the batch."""
    def __init__(self, size: int = 16):
        super().__init__()
        torch.manual_seed(123)
        self.lin = nn.Linear(3 * size * size, 1)
    def get_ema_model(self):
        return self.lin
    def parameters_to_optimize(self):
        return list(self.parameters())
    def forward(self, batch, return_loss=True, step=0, **kw):
        x = batch["image"].flatten(1) / 255.0
        return {"loss": ((self.lin(x).squeeze(1) - batch["label"].float()) ** 2).mean()}
'''


def _fake_config(tmp: Path, batch: int) -> Path:
    from vqdiff.utils.config import save_yaml_config

    cfg = {
        "model": {"target": "fake_engine_model.FakeModel", "params": {"size": 16}},
        "solver": {"base_lr": 0.05, "adjust_lr": "none", "max_epochs": 1, "save_epochs": 100, "validation_epochs": 1,
                   "sample_iterations": -1, "ema": {"decay": 0.5, "update_interval": 1},
                   "clip_grad_norm": {"target": "vqdiff.engine.clip_grad_norm.ClipGradNorm", "params": {"max_norm": 0.5}},
                   "optimizers_and_schedulers": [{"name": "none", "optimizer": {"target": "torch.optim.AdamW",
                                                                             "params": {"weight_decay": 0.01}}}]},
        "dataloader": {"batch_size": batch, "num_workers": 0, "train_datasets": [
            {"target": "vqdiff.data.synthetic.ShapesDataset", "params": {"num_samples": 16, "resolution": 16}}],
            "validation_datasets": [{"target": "vqdiff.data.synthetic.ShapesDataset",
                                     "params": {"num_samples": 8, "resolution": 16, "split": "heldout"}}]},
    }
    path = tmp / f"fake_b{batch}.yaml"
    save_yaml_config(cfg, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_step_equals_one_process(tmp_path):
    (tmp_path / "fake_engine_model.py").write_text(FAKE_MODEL)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    one = subprocess.run([sys.executable, str(REPO / "train.py"), "--config_file", str(_fake_config(tmp_path, 8)),
                          "--name", "one", "--seed", "0", "--no_progress_bar", "--log_frequency", "1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stdout + one.stderr
    for _attempt in range(2):  # a port taken between _free_port() and the launch gets one retry
        two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                              f"--master_port={_free_port()}", str(REPO / "train.py"),
                              "--config_file", str(_fake_config(tmp_path, 4)), "--name", "two", "--seed", "0",
                              "--no_progress_bar", "--log_frequency", "1"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        if two.returncode == 0 or "address already in use" not in (two.stdout + two.stderr).lower():
            break
    assert two.returncode == 0, (two.stdout + two.stderr)[-4000:]
    a = torch.load(tmp_path / "OUTPUT" / "one" / "checkpoint" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "OUTPUT" / "two" / "checkpoint" / "last.pth", weights_only=True)
    assert a["last_iter"] == b["last_iter"] == 1 and len(b["rng"]) == 2
    assert b["rng"][0]["python"] != b["rng"][1]["python"]  # ranks seeded with seed + rank, both gathered
    torch.manual_seed(123)
    init = torch.nn.Linear(3 * 16 * 16, 1)
    moved = (a["model"]["lin.weight"] - init.weight.detach()).abs().max()
    assert moved > 1e-3  # it trained
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    # validation scores the raw weights (official), then the EMA weights on both ranks (rank 0 broadcasts
    # them): each summed loss over the two shards equals the one-process loss
    def val_loss(out):
        found = re.findall(r"validation epoch 0: loss ([0-9.]+) \((\d+) items\) \| EMA weights: loss ([0-9.]+)", out)
        assert found, out[-2000:]
        return float(found[-1][0]), int(found[-1][1]), float(found[-1][2])

    loss_one, n_one, ema_one = val_loss(one.stdout + one.stderr)
    loss_two, n_two, ema_two = val_loss(two.stdout + two.stderr)
    assert n_one == n_two == 8
    assert loss_two == pytest.approx(loss_one, rel=1e-3) and ema_two == pytest.approx(ema_one, rel=1e-3)
    assert ema_one != pytest.approx(loss_one, rel=1e-3)  # the two passes used different weights
    # the log line's training loss is averaged over ranks: the mean of the two 4-item means = the 8-item mean
    def train_losses(out):
        return [float(v) for v in re.findall(r"iter \d+/2 \| none/loss ([0-9.]+)", out)]

    assert len(train_losses(one.stdout + one.stderr)) == 2
    assert train_losses(two.stdout + two.stderr) == pytest.approx(train_losses(one.stdout + one.stderr), rel=1e-3)
    torch.testing.assert_close(a["ema"], b["ema"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a["ema"]["weight"], a["model"]["lin.weight"])  # EMA differs from the raw weights


@pytest.mark.parametrize("name,script", [("coco", "coco"), ("cub200", "cub"), ("imagenet", "imagenet"), ("ffhq", "ffhq")])
def test_dataset_configs_are_official_with_vqdiff_targets(name, script):
    from conftest import fixtures_dir
    from vqdiff.utils.config import OFFICIAL_ALIASES, load_yaml_config, resolve_target

    ours = load_yaml_config(REPO / "configs" / f"{name}.yaml")
    official = load_yaml_config(fixtures_dir("official_configs") / f"configs__{name}.yaml")

    def mapped(node):
        if isinstance(node, dict):
            return {k: mapped(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(mapped(v) for v in node)
        return OFFICIAL_ALIASES.get(node, node) if isinstance(node, str) else node

    assert ours == mapped(official)
    targets = []

    def walk(node):
        if isinstance(node, dict):
            if "target" in node:
                targets.append(node["target"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(ours)
    assert all(t.startswith(("vqdiff.", "torch.")) for t in targets), targets
    for t in targets:
        resolve_target(t)
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"run_{script}", REPO / "running_command" / f"run_train_{script}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cmd = mod.build_command(["--amp", "dataloader.data_root=/x"])
    assert cmd[0] == sys.executable and cmd[1].endswith("train.py")
    assert cmd[cmd.index("--config_file") + 1].endswith(f"configs/{name}.yaml") and cmd[-2:] == ["--amp", "dataloader.data_root=/x"]
    args = train.get_args(cmd[2:])
    assert args.amp and args.opts == ["dataloader.data_root=/x"] and args.name == f"{name}_train"  # official run names


def test_sample_grids_and_tensorboard(tiny_root, monkeypatch):
    monkeypatch.chdir(tiny_root)
    out = _run("smp", "--tensorboard", "--log_frequency", "1", "solver.sample_iterations=2", "solver.max_iterations=2")
    assert out["stopped_by"] == "max_iterations"
    grids = sorted(str(p.relative_to("OUTPUT/smp/images")) for p in Path("OUTPUT/smp/images").rglob("*.jpg"))
    assert {"train/reconstruction_image/e0000000000_itr0000000001_rank0_ema.jpg",
            "train/cond1_cont1_fr1.0_image/e0000000000_itr0000000001_rank0_ema.jpg"} <= set(grids)
    events = list(Path("OUTPUT/smp/logs").glob("events.out.tfevents.*"))  # official: beside log.txt
    assert events and events[0].stat().st_size > 0
