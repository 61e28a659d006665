"""The CPU demo end to end (--quick): codec, token cache, train.py, notebook API, attribute classifier.

Every stage must run and report well-formed figures, and the quick model must already follow the text
on held-out combinations: colour and position well above chance and above the same model sampled with an
empty caption, and all three attributes right far more often than chance (the full demo's figures are in
the README, "Results").
"""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_demo_runs_every_stage(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.syspath_prepend(str(REPO / "running_command"))
    import run_demo_shapes

    out = tmp_path / "demo"
    results = run_demo_shapes.main(["--quick", "--output", str(out)])
    acc = results["accuracy"]
    # the attribute classifier must be reliable on real held-out images, or the other rows mean nothing
    assert acc["real held-out images (classifier check)"]["all"] > 0.9
    for row in ("VQ-VAE reconstructions (ceiling)", "generated, with text", "generated, empty text"):
        assert set(acc[row]) == {"color", "shape", "position", "all"}
        assert all(0.0 <= v <= 1.0 for v in acc[row].values())
    assert acc["chance"]["all"] == pytest.approx(1 / 48)
    # the codec keeps what the captions talk about (an L1-trained codec decoded every shape as one blob)
    assert acc["VQ-VAE reconstructions (ceiling)"]["color"] > 0.9
    # learning: on combinations never seen in training the samples show what the caption asks, far above
    # chance (0.25) and above the no-text baseline
    text, none = acc["generated, with text"], acc["generated, empty text"]
    for attr in ("color", "position"):  # measured: 1.00 / 1.00 with text, 0.19 / 0.25 without
        assert text[attr] >= 0.6, text
        assert text[attr] >= none[attr] + 0.3, (text, none)
    assert text["all"] >= 0.2, text  # all three right: chance is 1/48
    saved = json.loads((out / "results.json").read_text())
    assert saved["preset"] == "quick" and saved["accuracy"] == json.loads(json.dumps(acc))
    assert (out / "heldout_grid.png").is_file()
    assert (out / "diffusion" / "checkpoint" / "last.pth").is_file()
    assert (out / "token_cache" / "tokens.npy").is_file()
    # the samples with text were saved by the notebook API under their captions
    assert len(list((out / "samples_text").glob("*/000000.png"))) == len(saved["heldout_captions"])

    # editing and sampler comparison on the same trained demo
    import run_demo_editing

    edit = run_demo_editing.main(["--output", str(out), "--num-images", "4", "--calls", "5"])
    assert edit["inpainting"]["tokens_outside_mask_unchanged"] is True
    calls = {name: row["network_calls"] for name, row in edit["samplers"].items()}
    assert calls["ancestral, 100 steps"] == 100
    assert calls["confidence (MaskGIT), 5 calls"] == 5
    assert calls["ancestral, fast (5 calls)"] in (5, 6)  # the official skip-step list appends step 0
    assert (out / "inpaint_examples.png").is_file() and (out / "editing_results.json").is_file()
