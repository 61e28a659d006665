"""benchmarks/bench_precision.py --quick: the paired table runs in seconds, names the CPU and its bf16 flags,
says what was not measured, and its reduced / compiled networks agree with fp32. Timings are not checked."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench():
    from benchmarks import bench_precision

    return bench_precision


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


@pytest.mark.parametrize("with_init", [True, False])
def test_the_official_package_imports_from_its_checkout_without_a_path_entry(bench, tmp_path, with_init):
    import sys

    pkg = tmp_path / "image_synthesis"
    (pkg / "modeling").mkdir(parents=True)
    if with_init:
        (pkg / "__init__.py").write_text("LOADED = True\n")
    (pkg / "modeling" / "__init__.py").write_text("")
    (pkg / "modeling" / "a.py").write_text("from image_synthesis.modeling.b import VALUE\n")  # the official style
    (pkg / "modeling" / "b.py").write_text("VALUE = 3\n")
    path_before = list(sys.path)
    try:
        package = bench.import_official_package(tmp_path)
        from image_synthesis.modeling.a import VALUE

        assert VALUE == 3 and getattr(package, "LOADED", False) == with_init
        assert sys.path == path_before
    finally:
        for name in [n for n in sys.modules if n == "image_synthesis" or n.startswith("image_synthesis.")]:
            del sys.modules[name]
