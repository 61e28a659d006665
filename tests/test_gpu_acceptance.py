"""The GPU acceptance run as tests (marker ``gpu``): each section of ``benchmarks/gpu_check.py --device cuda`` in its
own process, and ``benchmarks/bench_all.py --device cuda``, both started by their paths as a user does.

    python -m pytest -m gpu        # on a CUDA machine: about 8 minutes

A section passes when none of its checks fails; a check skipped on the GPU must give its reason (the harness's
rule, shown in the failure message of any section that fails). Without CUDA every test here is skipped with that
reason; the CPU form of the same harness (``--device cpu --quick``) runs in tests/test_gpu_check.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import CAPS_S

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs CUDA: the GPU acceptance run (the CPU form runs in test_gpu_check.py)")]


def _run(script: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))  # this checkout's vqdiff, whichever one is installed
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("section", list(CAPS_S))
def test_gpu_check_section_passes_on_cuda(section, tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = _run("gpu_check.py", ["--device", "cuda", "--only", section, "--json", str(out)],
                timeout=CAPS_S[section] + 180)  # the section's own cap plus the interpreter and CUDA start
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    checks = json.loads(out.read_text())["sections"][section]["checks"]
    table = "\n".join(f"{c['name']}: {c['status']} {c['reason']}" for c in checks)
    assert checks and proc.returncode == 0, table + "\n" + proc.stderr[-2000:]
    assert all(c["status"] in ("pass", "skipped") for c in checks), table
    assert all(c["reason"] for c in checks if c["status"] == "skipped"), table


def test_bench_all_runs_on_cuda(tmp_path):
    proc = _run("bench_all.py", ["--quick", "--device", "cuda", "--no-diffusers"], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("JSON ", 1)[1])
    assert result["machine"]["device"].startswith("cuda") and result["train_step"]["peak_memory"]["peak_mib"] > 0
