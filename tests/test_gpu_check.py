"""benchmarks/gpu_check.py (issue 19): the CPU form (``--device cpu --quick``) runs every section and its
JSON says pass/fail/skipped-with-reason per check; the pieces that decide a status can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check, gpu_check_sections
from benchmarks.gpu_check_result import Check, Context
from benchmarks.gpu_check_tiny import amp_flags, apply_solver_settings

REPO = Path(__file__).resolve().parents[1]

SECTIONS = ["agreement", "amp_training", "compile", "distributed", "paper_speed"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check") / "out.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=180, cwd=str(REPO))
    seconds = time.monotonic() - start
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"rc": proc.returncode, "json": json.loads(out.read_text()), "stdout": proc.stdout, "seconds": seconds}


def _checks(result: dict, section: str) -> dict:
    return {c["name"]: c for c in result["json"]["sections"][section]["checks"]}


def test_quick_cpu_run_passes_every_section_in_time(quick_run):
    res = quick_run["json"]
    assert quick_run["rc"] == 0, quick_run["stdout"][-3000:]
    assert res["status"] == "pass" and list(res["sections"]) == SECTIONS
    # the quick form takes well under a minute on 2 cores; the bound is loose because the CI machine is
    # shared, and tight enough to catch --quick starting to run the paper-size networks
    assert quick_run["seconds"] < 120
    for name, sec in res["sections"].items():
        assert sec["status"] in ("pass", "skipped"), (name, sec)
        assert sec["checks"], name
        for c in sec["checks"]:
            assert c["status"] in ("pass", "fail", "skipped")
            if c["status"] != "pass":
                assert c["reason"], c
    # the table names every check
    for sec in res["sections"].values():
        for c in sec["checks"]:
            assert f"| {c['name']} | {c['status']} |" in quick_run["stdout"]


def test_quick_agreement_values_are_within_tolerance(quick_run):
    checks = _checks(quick_run, "agreement")
    assert len(checks) == 6  # text, class, uncond x (network, one sampling step)
    for kind in ("text", "class", "uncond"):
        net = next(c for n, c in checks.items() if n.startswith(f"{kind}: network"))
        step = next(c for n, c in checks.items() if n.startswith(f"{kind}: one sampling step"))
        assert net["status"] == step["status"] == "pass"
        assert 0 <= net["values"]["max_abs_diff"] <= 1e-4 and 0 <= step["values"]["max_abs_diff"] <= 1e-4
        assert step["values"]["same_token_fraction"] == 1.0


def test_quick_training_loss_fell_without_nonfinite_steps(quick_run):
    checks = _checks(quick_run, "amp_training")
    loops = [c for n, c in checks.items() if n.startswith("autocast loop")]
    solver = [c for n, c in checks.items() if n.startswith("train.py")]
    assert len(loops) == 2 and len(solver) == 2
    for c in loops + solver:
        v = c["values"]
        assert v["iterations"] == 50 and v["nonfinite_steps"] == 0 and v["loss_fell"] is True
    for c in loops:  # judged on one fixed batch and fixed draws of t (a window of step losses is too noisy)
        assert c["values"]["fixed_batch_loss_after"] < c["values"]["fixed_batch_loss_before"]
    for c in solver:
        assert c["values"]["loss_last10"] < c["values"]["loss_first10"]
    for c in solver:  # on CPU the Solver's --amp is CUDA-only today: skipped with the reason, or really run
        assert c["status"] == "pass" or "needs CUDA" in c["reason"]


def test_quick_compile_distributed_and_speed_rows(quick_run):
    comp = _checks(quick_run, "compile")
    agree = next(c for n, c in comp.items() if n.startswith("compiled vs eager"))
    assert agree["status"] == "pass" and agree["values"]["max_abs_prob_diff"] <= 1e-3
    dist = _checks(quick_run, "distributed")
    train_py = next(c for n, c in dist.items() if n.startswith("torchrun"))
    assert train_py["status"] == "pass" and train_py["values"]["checkpoint"] is True
    ddp = next(c for n, c in dist.items() if n.startswith("DDP"))
    assert ddp["status"] == "pass" and ddp["values"]["backend"] == "gloo" and ddp["values"]["all_reduce"] == 1.0
    speed = _checks(quick_run, "paper_speed")
    paper = [c for n, c in speed.items() if n.startswith("paper network")]
    assert len(paper) == 2 and all(c["status"] == "skipped" and "needs CUDA" in c["reason"] for c in paper)
    stand_in = [c for n, c in speed.items() if n.startswith("stand-in")]
    assert len(stand_in) == 2 and all(c["status"] == "pass" for c in stand_in)
    assert all(c["values"]["sample_images_per_s"] > 0 and c["values"]["train_images_per_s"] > 0 for c in stand_in)


def test_agreement_fails_when_the_two_runs_differ(tmp_path, monkeypatch):
    real = gpu_check_sections._one_at_a_time

    def shifted(*args):
        log_x0, log_post, tokens = real(*args)
        return log_x0 + 1e-3, log_post, (tokens + 1) % log_post.shape[1]

    monkeypatch.setattr(gpu_check_sections, "_one_at_a_time", shifted)
    ctx = Context(torch.device("cpu"), True, tmp_path, "aot_eager", 60)
    checks = gpu_check_sections.agreement(ctx)
    assert [c.status for c in checks] == ["fail"] * 6
    assert "> 0.0001" in checks[0].reason and "same token 0" in checks[1].reason


def test_exit_code_is_nonzero_when_a_check_fails_and_a_crash_is_a_failed_check(tmp_path, monkeypatch, capsys):
    def crashing(ctx):
        raise RuntimeError("boom")

    def skipping(ctx):
        return [Check("x", "skipped", "needs CUDA")]

    monkeypatch.setattr(gpu_check, "sections", lambda: {"agreement": crashing, "compile": skipping})
    out = tmp_path / "r.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--json", str(out)]) == 1
    res = json.loads(out.read_text())
    assert res["sections"]["agreement"]["checks"][0]["reason"] == "RuntimeError: boom"
    assert res["sections"]["compile"]["status"] == "skipped"
    monkeypatch.setattr(gpu_check, "sections", lambda: {"compile": skipping})
    assert gpu_check.main(["--device", "cpu", "--quick"]) == 0  # skipped with a reason is not a failure


def test_check_needs_a_known_status_and_a_reason_unless_pass():
    with pytest.raises(ValueError, match="needs a reason"):
        Check("c", "skipped")
    with pytest.raises(ValueError, match="status must be one of"):
        Check("c", "ok")


def test_section_cap_turns_the_rest_into_skipped_checks(tmp_path):
    ctx = Context(torch.device("cpu"), True, tmp_path, "aot_eager", cap_s=0.0)
    late = ctx.over_cap("later check")
    assert late.status == "skipped" and "cap" in late.reason
    assert Context(torch.device("cpu"), True, tmp_path, "aot_eager", cap_s=60).over_cap("x") is None


@pytest.mark.parametrize("help_text, dtype, flags, settings", [
    ("  --amp        mixed precision", "fp16", ["--amp"], {"amp_dtype": "fp16"}),
    ("  --amp {fp16,bf16}   autocast dtype", "bf16", ["--amp", "bf16"], {}),
    ("  --amp {float16,bfloat16}", "fp16", ["--amp", "float16"], {}),
    ("  --amp [{fp16,bf16}]  optional value", "fp16", ["--amp", "fp16"], {}),
    ("  --amp [AMP]   fp16 (default) or bf16", "bf16", ["--amp", "bf16"], {}),
    ("  --amp  switch\n  --amp_dtype {fp16,bf16}", "fp16", ["--amp", "--amp_dtype", "fp16"], {}),
])
def test_amp_flags_follow_the_forms_train_py_accepts(help_text, dtype, flags, settings):
    assert amp_flags(dtype, help_text) == (flags, settings)
    cfg = apply_solver_settings({"solver": {"base_lr": 1.0}}, settings)
    assert cfg["solver"] == {"base_lr": 1.0, **settings}


def test_amp_flags_reject_unknown_dtypes_and_choices():
    with pytest.raises(ValueError, match="fp8"):
        amp_flags("fp8", "--amp")
    with pytest.raises(ValueError, match="none of them is bf16"):
        amp_flags("bf16", "--amp {fp16,fp32}")


def test_amp_flags_of_this_train_py_are_accepted_by_its_parser():
    import train
    from benchmarks.gpu_check_tiny import train_help_text

    for dtype in ("fp16", "bf16"):
        flags, _ = amp_flags(dtype, train_help_text())
        assert train.get_args(["--config_file", "c.yaml", *flags]).amp


def test_autocast_probe_sees_the_dtype_of_the_first_forward_only():
    from benchmarks.gpu_check_tiny import model_autocast_probe

    lin = torch.nn.Linear(2, 2)
    handle, seen = model_autocast_probe(torch.nn.Linear)
    try:
        torch.nn.ReLU()(torch.ones(1))  # another module type: not recorded
        assert seen == {}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lin(torch.ones(1, 2))
        lin(torch.ones(1, 2))  # later forwards do not overwrite the first
    finally:
        handle.remove()
    assert seen == {"enabled": True, "dtype": "bfloat16"}
    handle, seen = model_autocast_probe(torch.nn.Linear)
    try:
        lin(torch.ones(1, 2))
    finally:
        handle.remove()
    assert seen == {"enabled": False, "dtype": None}
