"""benchmarks/compare_objectives.py --tiny: every stage (shared parts, both objectives trained through train.py
on the text and the class set, notebook-API sampling, attribute scores, the validation bound) in seconds."""

from __future__ import annotations

import math
from benchmarks import compare_objectives


def test_tiny_comparison_runs_every_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = compare_objectives.main(["--tiny", "--seeds", "0", "--output", str(tmp_path / "out"), "--threads", "1"])
    runs = {(r["kind"], r["objective"]): r for r in result["runs"]}
    assert set(runs) == {(k, o) for k in ("text", "class") for o in ("vq_diffusion", "masked_elbo")}
    for (kind, _), r in runs.items():
        assert math.isfinite(r["bits_per_token"]) and r["bits_per_token"] > 0 and r["train_s"] > 0
        conds = ["text", "empty text"] if kind == "text" else ["class"]
        assert list(r["accuracy"]) == conds
        for acc in r["accuracy"].values():
            assert acc["n"] == 8 and 0 <= acc["all"] <= min(acc["color"], acc["shape"]) <= 1
    assert (tmp_path / "out" / "results.json").is_file()
    lines = result["table"].splitlines()
    assert len(lines) == 2 + 6 and all(line.count("|") == 11 for line in lines)
