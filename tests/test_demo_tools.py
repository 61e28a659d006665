"""The demo's evidence tools (issue 23): the codec robustness table, the seed-spread summary, the editing
region grown by the codec's reach, and the demo's preset switch."""

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load(name):
    """A demo benchmark as the package module ``benchmarks.<name>`` (pytest.ini puts the root on the path)."""
    import importlib

    return importlib.import_module(f"benchmarks.{name}")


def test_dilate_token_mask_grows_by_the_radius_and_stops_at_the_border():
    from vqdiff.editing import dilate_token_mask

    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, :4, :4] = True      # the top-left quadrant of an 8x8 grid
    mask[1, 7, 7] = True        # a corner token
    grown = dilate_token_mask(mask.view(2, 64), (8, 8), radius=1).view(2, 8, 8)
    assert grown[0, :5, :5].all() and grown[0].sum() == 25  # one ring on the two open sides
    assert grown[1, 6:, 6:].all() and grown[1].sum() == 4   # clipped at the corner
    assert torch.equal(dilate_token_mask(mask.view(2, 64), (8, 8), 0), mask.view(2, 64))
    assert dilate_token_mask(mask[0].flatten(), (8, 8), 2).view(8, 8)[:6, :6].all()  # unbatched
    with pytest.raises(ValueError, match="radius"):
        dilate_token_mask(mask.view(2, 64), (8, 8), -1)
    with pytest.raises(ValueError, match="64 positions"):
        dilate_token_mask(mask.view(2, 64), (4, 4), 1)


def test_robustness_table_prints_a_row_per_codec_and_fails_below_the_floor(monkeypatch, tmp_path, capsys):
    bench = _load("demo_robustness")
    out = tmp_path / "rows.json"
    argv = ["--seeds", "0-1", "--threads", "1", "--presets", "quick,full", "--images", "8", "--max-steps", "3",
            "--classifier-steps", "5", "--json", str(out)]
    with pytest.raises(SystemExit) as stop:  # three steps of training cannot reach a 0.97 ceiling
        bench.main(argv)
    assert stop.value.code == 1
    printed = capsys.readouterr().out
    assert "below 0.97" in printed and "classifier on the real held-out images" in printed
    saved = json.loads(out.read_text())
    rows = saved["rows"]
    # the two presets train the same codec at the same step count: trained once per seed and thread count
    assert [(r["preset"], r["seed"], r["threads"]) for r in rows] == [("quick+full", 0, 1), ("quick+full", 1, 1)]
    for row in rows:
        assert {"color", "shape", "position", "all", "pixel_l1", "shape_pixel_l1", "mean_intensity_recon",
                "mean_intensity_input", "codes_used"} <= set(row)
        assert 0 <= row["shape_pixel_l1"] <= 255 and 0 < row["mean_intensity_input"] < 255
    rows = bench.main(argv[:-2] + ["--min-ceiling", "0", "--seeds", "0"])  # with no floor the same run passes
    assert len(rows) == 1
    # a codec that scripts/train_vqvae.py trained (e.g. under torchrun) is scored from its output folder
    from vqdiff.engine.codec_training import train_vqvae
    from vqdiff.utils.config import load_yaml_config

    train_vqvae(load_yaml_config(REPO / "configs" / "tiny_vqvae_shapes.yaml"), tmp_path / "codec", max_steps=3,
                progress=False)
    rows = bench.main(["--seeds", "", "--images", "8", "--classifier-steps", "5", "--min-ceiling", "0",
                       "--from-codecs", str(tmp_path / "codec")])
    assert [r["preset"] for r in rows] == ["codec codec"] and rows[0]["codes_used"] >= 1


def test_seed_spread_summary_reads_every_row_and_editing_variant(monkeypatch):
    spread = _load("demo_spread")

    def result(v):
        row = {"color": v, "shape": v, "position": v, "all": v}
        return {"accuracy": {key: row for key in spread.ROWS.values()}}

    def edit(v):
        variant = {k: v for k in spread.EDIT_KEYS}
        return {"inpainting": variant, "inpainting_variants": {"quadrant": variant, "ring": variant}}

    summary = spread.summarize([result(0.5), result(1.0)], [edit(0.25), edit(0.75)])
    assert summary["demo"]["with text"]["shape"] == [0.5, 1.0]
    assert summary["editing"]["ring"]["asked_colour_rate"] == [0.25, 0.75]
    assert spread.spread([0.5, 1.0]) == "0.750 (0.500-1.000)"


def test_demo_preset_switch(monkeypatch, tmp_path):
    from vqdiff.demo import shapes as demo
    assert {"quick", "full", "ci"} <= set(demo.PRESETS)
    with pytest.raises(SystemExit):  # --quick and another preset contradict each other
        demo.main(["--quick", "--preset", "full", "--output", str(tmp_path), "--eval-only"])
    with pytest.raises(FileNotFoundError, match="--eval-only needs a trained demo"):
        demo.main(["--preset", "ci", "--output", str(tmp_path), "--eval-only"])


def test_recipe_fields_are_typed_and_set_by_name():
    from vqdiff.demo.presets import PRESETS, DemoPreset
    from vqdiff.demo.shapes import preset_with

    quick = PRESETS["quick"]
    changed = preset_with(quick, ["iters=3000", "padding_mask=true", "captions=partial", "lr=2e-3"])
    assert (changed.iters, changed.padding_mask, changed.captions, changed.lr) == (3000, True, "partial", 2e-3)
    assert changed.replace(iters=quick.iters, padding_mask=quick.padding_mask, captions=quick.captions,
                           lr=quick.lr) == quick
    for bad, words in ((["itres=3"], "FIELD one of"), (["iters=many"], "iters takes a int"),
                       (["padding_mask=maybe"], "padding_mask takes a bool"), (["captions=some"], "captions must be"),
                       (["context_length=8"], "context_length must be in 13 .. 77"), (["width=102"], "multiple of")):
        with pytest.raises(ValueError, match=words):
            preset_with(quick, bad)
    with pytest.raises(TypeError):
        DemoPreset(vq_steps=1, iters=1).replace(itres=2)


def test_demo_config_follows_the_preset(tmp_path):
    from vqdiff.demo.presets import PRESETS
    from vqdiff.demo.recipe import diffusion_config, make_random_clip

    clip = make_random_clip(tmp_path / "clip.pt", width=64, layers=1)
    codec = {"target": "x", "params": {"num_tokens": 64, "token_shape": [8, 8]}}
    p = PRESETS["quick"].replace(padding_mask=True, context_length=16, layers=3)
    cfg = diffusion_config(codec, clip, tmp_path / "cache", p, seed=0)
    mp = cfg["model"]["params"]
    dp = mp["diffusion_config"]["params"]
    assert mp["condition_codec_config"]["params"]["context_length"] == 16
    assert dp["transformer_config"]["params"]["condition_seq_len"] == 16
    assert dp["condition_padding_mask"] is True and dp["transformer_config"]["params"]["n_layer"] == 3
    assert cfg["solver"]["max_iterations"] == p.iters and cfg["dataloader"]["batch_size"] == p.batch


def test_codec_from_needs_a_finished_codec(tmp_path):
    from vqdiff.demo import shapes

    (tmp_path / "other" / "vqvae").mkdir(parents=True)
    with pytest.raises(SystemExit):  # argparse's error: the folder holds no configs/codec.yaml
        shapes.main(["--quick", "--codec-from", str(tmp_path / "other"), "--output", str(tmp_path / "run"),
                     "--eval-only"])


def test_heldout_figure_puts_each_caption_over_its_column():
    from PIL import Image

    from vqdiff.demo.figure import heldout_figure

    red, blue = Image.new("RGB", (32, 32), (220, 40, 40)), Image.new("RGB", (32, 32), (40, 80, 230))
    captions = ["a red circle at the top left on a gray background", "a blue square"]
    with_text, empty = [red] * 3 + [blue] * 3, [blue] * 6
    fig = heldout_figure(with_text, empty, captions, per_caption=3, rows=2)
    assert fig.width == 2 * (64 + 4) + 4
    # column 0 shows the red samples under its caption, then the empty caption's (blue) samples
    top_half = [fig.getpixel((4 + 32, y)) for y in range(fig.height // 2)]
    assert (220, 40, 40) in top_half and (40, 80, 230) in [fig.getpixel((4 + 32, y)) for y in range(fig.height)]
    assert fig.getpixel((4 + 68 + 32, fig.height // 2 - 40)) == (40, 80, 230)  # column 1: blue with text too
    with pytest.raises(ValueError, match="samples for 2 captions x 3"):
        heldout_figure(with_text[:5], empty, captions, per_caption=3)
