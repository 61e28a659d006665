"""benchmarks/bench_train.py smoke test: both input modes train one step and report consistent figures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():
    from benchmarks import bench_train

    return bench_train


@pytest.mark.parametrize("mode", ["images", "tokens"])
def test_bench_train_one_step_each_mode(tmp_path, mode):
    bench = _bench()
    args = argparse.Namespace(codec="tiny", steps=1, warmup=0, batch_size=2, layers=1, width=32, num_workers=0,
                              threads=None, device="cpu", amp=False, workdir=str(tmp_path))
    row = bench.run_mode(mode, args)
    assert row["mode"] == mode and row["steps"] == 1 and row["tokens_per_image"] == 16
    assert row["images_per_s"] > 0 and row["tokens_per_s"] == pytest.approx(16 * row["images_per_s"])
    assert row["ms_per_step"] == pytest.approx(1000 * 2 / row["images_per_s"])
    assert row["peak_memory_mib"] > 0
    if mode == "tokens":
        assert (tmp_path / "cache" / "meta.json").is_file()
