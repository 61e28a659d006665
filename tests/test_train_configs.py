"""The four training recipes: the data sections of configs/{coco,cub200,imagenet,ffhq}.yaml read the seed
layouts (with the dataloader.data_root override), and a running_command launcher really reaches train.py.
(Equality with the official hyper-parameters and the launchers' argument pass-through: tests/test_train.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vqdiff.data.build import build_dataloader
from vqdiff.data.layouts import write_layout
from vqdiff.utils.config import load_yaml_config, merge_opts_to_config

REPO = Path(__file__).resolve().parents[1]

RECIPES = [("coco", "configs__coco.yaml", "coco", {"image", "text"}),
           ("cub200", "configs__cub200.yaml", "cub", {"image", "text"}),
           ("imagenet", "configs__imagenet.yaml", "imagenet", {"image", "label"}),
           ("ffhq", "configs__ffhq.yaml", "ffhq", {"image"})]


@pytest.mark.parametrize("name,official,short,keys", RECIPES)
def test_recipe_data_section_reads_the_seed_layout(tmp_path, name, official, short, keys):
    cfg = load_yaml_config(REPO / "configs" / f"{name}.yaml")
    root = write_layout(name, tmp_path / name, num_images=12, resolution=24)
    merge_opts_to_config(cfg, [f"dataloader.data_root={root}", "dataloader.batch_size=2", "dataloader.num_workers=0"])
    if name == "imagenet":
        index = {str(k): [f"n{k:08d}", f"class{k}"] for k in range(12)}
        (tmp_path / "idx.json").write_text(json.dumps(index))
        for node in cfg["dataloader"]["train_datasets"] + cfg["dataloader"]["validation_datasets"]:
            node["params"]["class_index_path"] = str(tmp_path / "idx.json")
    out = build_dataloader(cfg)
    batch = next(iter(out["train_loader"]))
    assert set(batch) == keys and tuple(batch["image"].shape) == (2, 3, 256, 256)


def test_launcher_runs_train_py(tmp_path):
    """The subprocess really reaches train.py (its --help), with the launcher's own interpreter."""
    out = subprocess.run([sys.executable, str(REPO / "running_command" / "run_train_coco.py"), "--help"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--auto_resume" in out.stdout and "--config_file" in out.stdout
