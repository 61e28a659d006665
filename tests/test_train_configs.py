"""The four training recipes: configs/{coco,cub200,imagenet,ffhq}.yaml keep the official hyper-parameters,
name importable vqdiff classes, build their data sections on the seed layouts, and the
running_command/run_train_*.py launchers pass extra arguments through to train.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from conftest import fixtures_dir  # noqa: E402

from vqdiff.data.build import build_dataloader  # noqa: E402
from vqdiff.data.layouts import write_layout  # noqa: E402
from vqdiff.utils.config import load_yaml_config, merge_opts_to_config, resolve_target  # noqa: E402

RECIPES = [("coco", "configs__coco.yaml", "coco", {"image", "text"}),
           ("cub200", "configs__cub200.yaml", "cub", {"image", "text"}),
           ("imagenet", "configs__imagenet.yaml", "imagenet", {"image", "label"}),
           ("ffhq", "configs__ffhq.yaml", "ffhq", {"image"})]


def _targets(node, path="") -> dict:
    out = {}
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "target":
                out[path] = v
            else:
                out.update(_targets(v, f"{path}.{k}" if path else k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            out.update(_targets(v, f"{path}.{i}"))
    return out


def _strip(node):
    """Config without targets and data paths, tuples as lists (what must equal the official file)."""
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k not in ("target", "data_root", "max_nonfinite_steps",
                                                                   "print_specific_things")}
    if isinstance(node, (list, tuple)):
        return [_strip(v) for v in node]
    return None if node == "None" else node


@pytest.mark.parametrize("name,official,short,keys", RECIPES)
def test_recipe_matches_official_hyper_parameters_and_resolves(name, official, short, keys):
    ours = load_yaml_config(REPO / "configs" / f"{name}.yaml")
    theirs = load_yaml_config(fixtures_dir("official_configs") / official)
    assert _strip(ours) == _strip(theirs)
    t_ours, t_theirs = _targets(ours), _targets(theirs)
    assert set(t_ours) == set(t_theirs)
    for path, target in t_ours.items():
        assert target.startswith(("vqdiff.", "torch.")), (path, target)
        assert resolve_target(target, path) is resolve_target(t_theirs[path], path)
    roots = [ours["dataloader"]["data_root"]] + [d["params"]["data_root"] for d in
                                                  ours["dataloader"]["train_datasets"] + ours["dataloader"]["validation_datasets"]]
    assert set(roots) == {f"data/{name}" if name != "coco" else "data/mscoco"}


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


def _launcher(short: str):
    path = REPO / "running_command" / f"run_train_{short}.py"
    spec = importlib.util.spec_from_file_location(f"run_train_{short}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name,official,short,keys", RECIPES)
def test_launcher_command_passes_arguments_through(name, official, short, keys):
    mod = _launcher(short)
    cmd = mod.build_command(["--auto_resume", "dataloader.batch_size=2"])
    assert cmd[0] == sys.executable and Path(cmd[1]) == REPO / "train.py"
    assert Path(cmd[cmd.index("--config_file") + 1]) == REPO / "configs" / f"{name}.yaml"
    assert cmd[cmd.index("--name") + 1] == name and cmd[-2:] == ["--auto_resume", "dataloader.batch_size=2"]
    assert mod.build_command(["--name", "mine"]).count("--name") == 1


def test_launcher_runs_train_py(tmp_path):
    """The subprocess really reaches train.py (its --help), with the launcher's own interpreter."""
    out = subprocess.run([sys.executable, str(REPO / "running_command" / "run_train_coco.py"), "--help"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--auto_resume" in out.stdout and "--config_file" in out.stdout
