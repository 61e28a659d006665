"""benchmarks/bench_precision.py --quick: the paired table runs in seconds, names the CPU and its bf16 flags,
says what was not measured, and its reduced / compiled networks agree with fp32. Timings are not checked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_precision.py"
    spec = importlib.util.spec_from_file_location("bench_precision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_the_paired_table(bench, tmp_path, capsys):
    out_file = tmp_path / "precision.json"
    res = bench.main(["--quick", "--json", str(out_file)])
    printed = capsys.readouterr().out
    assert json.loads(printed.split("JSON ", 1)[1]) == json.loads(out_file.read_text())
    columns = ["vqdiff fp32", "vqdiff bf16", "vqdiff auto", "vqdiff auto+compile"]
    assert "| what | " + " | ".join(columns) + " | diffusers |" in printed
    for row in ("network forward (ms)", "one sampling step (ms)", "10-step sampling of 2 images (s)"):
        assert f"| {row} |" in printed
    for key in ("forward_s", "step_s", "sampling_s"):
        assert set(res[key]) == set(columns) | {"diffusers"} and all(v > 0 for v in res[key].values())
    assert f"Machine: {res['machine']['cpu']} (" in printed  # the CPU model is named
    assert "avx512_bf16" in printed and "amx_tile" in printed  # the CPU's bf16 flags are named
    assert f"precision='auto' -> {res['auto']['chosen']}" in printed
    assert "official: not measured (give --official-root" in printed
    assert "GPU row: not measured" in printed
    assert res["compile_seconds"] > 0 and res["compile_backend"] == "aot_eager"
    diffs = res["max_abs_diff_log_p_vs_fp32"]
    assert diffs["vqdiff auto+compile"] < 1e-4 if res["auto"]["chosen"] == "fp32" else diffs["vqdiff auto+compile"] < 0.5
    assert (diffs["vqdiff auto"] == 0.0) == (res["auto"]["chosen"] == "fp32")
    assert 0.0 < diffs["vqdiff bf16"] < 0.5  # bf16 really ran, and stayed close


def test_a_wrong_official_root_and_a_missing_gpu_are_errors(bench, tmp_path):
    with pytest.raises(SystemExit, match="no image_synthesis folder"):
        bench.build_official(tmp_path, None, {}, None)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA is not available"):
            bench.main(["--quick", "--device", "cuda"])
