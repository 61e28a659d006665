"""scripts/make_tiny_parts.py: the parts configs/tiny_text_shapes.yaml needs, and the tiny config trained
from a clean checkout exactly as configs/README.md and docs/training.md say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from vqdiff.utils.tiny_parts import random_clip_text_tower, write_tiny_parts

REPO = Path(__file__).resolve().parents[1]


def test_tiny_parts_are_the_same_every_time_and_leave_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected_next = torch.rand(2)
    torch.manual_seed(123)
    a = write_tiny_parts(tmp_path / "a")
    assert torch.equal(torch.rand(2), expected_next)
    b = write_tiny_parts(tmp_path / "b")
    assert a == tmp_path / "a" / "OUTPUT" / "tiny_parts"
    assert sorted(f.name for f in a.iterdir()) == ["clip_tiny.pt", "vq.pth", "vq.yaml"]
    for name in ("clip_tiny.pt", "vq.pth"):
        sa, sb = torch.load(a / name, weights_only=True), torch.load(b / name, weights_only=True)
        sa, sb = sa.get("state_dict", sa), sb.get("state_dict", sb)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    clip = torch.load(a / "clip_tiny.pt", weights_only=True)
    assert clip["token_embedding.weight"].shape == (49408, 32)


def test_random_clip_text_tower_draws_as_asked():
    plain = random_clip_text_tower(width=64, layers=2, seed=1)
    demo = random_clip_text_tower(width=64, layers=2, seed=1, other_std=0.01, token_std=1.0)
    again = random_clip_text_tower(width=64, layers=2, seed=1, other_std=0.01, token_std=1.0)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in demo.state_dict().items())
    one_d = [(n, p) for n, p in plain.named_parameters() if p.dim() == 1 and not ("ln" in n and n.endswith("weight"))]
    assert one_d and all(torch.count_nonzero(p) == 0 for _, p in one_d)
    assert all(torch.count_nonzero(dict(demo.named_parameters())[n]) > 0 for n, _ in one_d)
    assert 0.9 < float(demo.token_embedding.weight.detach().std()) < 1.1
    assert float(plain.token_embedding.weight.detach().std()) < 0.03


def test_tiny_config_trains_from_a_clean_checkout(tmp_path):
    for name in ("train.py", "scripts", "configs"):  # a checkout without OUTPUT/
        (tmp_path / name).symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"

    def run(*cmd: str) -> str:
        done = subprocess.run([sys.executable, *cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    assert "to OUTPUT/tiny_parts" in run("scripts/make_tiny_parts.py")
    log = run("train.py", "--config_file", "configs/tiny_text_shapes.yaml", "--name", "tiny", "--seed", "0",
              "--no_progress_bar", "solver.max_iterations=2")
    assert "training finished (max_iterations)" in log
    assert (tmp_path / "OUTPUT" / "tiny" / "checkpoint" / "last.pth").is_file()
