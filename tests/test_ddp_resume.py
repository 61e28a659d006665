"""A two-process gloo run interrupted mid-epoch and resumed (``--auto_resume``) ends with the very weights
of the uninterrupted two-process run (issue 35: the older DDP resume test only checked that some tensor
changed). The model draws noise from each rank's global RNG, so the per-rank RNG states, the data order
of both ranks, the optimizer and EMA states must all come back for the weights to be equal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from test_train import FAKE_MODEL, _fake_config

REPO = Path(__file__).resolve().parents[1]

# test_train's deterministic model plus input noise from the rank's global RNG (what resume must restore)
NOISY_MODEL = FAKE_MODEL.replace(
    '        x = batch["image"].flatten(1) / 255.0\n',
    '        x = batch["image"].flatten(1) / 255.0\n        x = x + 0.5 * torch.randn_like(x)\n').replace(
    "Deterministic: loss", "Noisy: loss")
assert NOISY_MODEL != FAKE_MODEL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp: Path) -> Path:
    """test_train's fake-model config (16 shapes, batch 2 a rank) with room for ``max_iterations``."""
    from vqdiff.utils.config import load_yaml_config, save_yaml_config

    cfg = load_yaml_config(_fake_config(tmp, 2))
    cfg["solver"].update(max_epochs=100, validation_epochs=100, max_iterations=6)
    save_yaml_config(cfg, tmp / "noisy.yaml")
    return tmp / "noisy.yaml"


def _torchrun(tmp: Path, env: dict, name: str, iterations: int, *flags: str) -> None:
    for _attempt in range(2):  # a port taken between _free_port() and the launch gets one retry
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                               f"--master_port={_free_port()}", str(REPO / "train.py"), "--config_file",
                               str(_config(tmp)), "--name", name, "--seed", "0", "--no_progress_bar", *flags,
                               f"solver.max_iterations={iterations}"],
                              cwd=tmp, env=env, capture_output=True, text=True, timeout=180)
        if done.returncode == 0 or "address already in use" not in (done.stdout + done.stderr).lower():
            break
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def test_two_process_resume_mid_epoch_equals_the_uninterrupted_run(tmp_path):
    (tmp_path / "fake_engine_model.py").write_text(NOISY_MODEL)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    # 16 samples, 2 a batch on each of 2 ranks: 4 iterations an epoch; the break after 3 is inside epoch 0
    _torchrun(tmp_path, env, "whole", 6)
    _torchrun(tmp_path, env, "broken", 3)
    middle = torch.load(tmp_path / "OUTPUT/broken/checkpoint/last.pth", weights_only=True)
    assert middle["last_iter"] == 2 and middle["data_state"]["batches_done"] == 3 and len(middle["rng"]) == 2
    _torchrun(tmp_path, env, "broken", 6, "--auto_resume")
    a = torch.load(tmp_path / "OUTPUT/whole/checkpoint/last.pth", weights_only=True)
    b = torch.load(tmp_path / "OUTPUT/broken/checkpoint/last.pth", weights_only=True)
    assert a["last_iter"] == b["last_iter"] == 5
    assert not torch.equal(a["model"]["lin.weight"], middle["model"]["lin.weight"])  # it trained on after the break
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
