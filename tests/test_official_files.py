"""The files the official repository ships in git are here (issue 15): configs/ithq.yaml and
coco_tune.yaml, OUTPUT/pretrained_model/*.yaml and the taming codec YAMLs, the two token maps; their
values are the official ones, every path they name is a tracked file or a released download, and git
tracks them while downloaded weights stay ignored."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from conftest import fixtures_dir
from vqdiff.utils.config import OFFICIAL_ALIASES, load_yaml_config, resolve_target
from vqdiff.utils.released_files import files_needed_by_config, released_file_for_path

REPO = Path(__file__).resolve().parents[1]

MODEL_CONFIGS = {  # ours -> official file in fixtures/official_configs
    "configs/ithq.yaml": "configs__ithq.yaml",
    "configs/coco_tune.yaml": "configs__coco_tune.yaml",
    "configs/coco.yaml": "configs__coco.yaml",
    "configs/cub200.yaml": "configs__cub200.yaml",
    "configs/imagenet.yaml": "configs__imagenet.yaml",
    "configs/ffhq.yaml": "configs__ffhq.yaml",
    "OUTPUT/pretrained_model/config_text.yaml": "config_text.yaml",
    "OUTPUT/pretrained_model/config_imagenet.yaml": "config_imagenet.yaml",
}
CODEC_YAMLS = {
    "OUTPUT/pretrained_model/taming_dvae/config.yaml": "taming_dvae__config.yaml",
    "OUTPUT/pretrained_model/taming_dvae/taming_f8_8192_openimages.yaml": "taming_dvae__taming_f8_8192_openimages.yaml",
    "OUTPUT/pretrained_model/taming_dvae/vqgan_imagenet_f16_16384.yaml": "taming_dvae__vqgan_imagenet_f16_16384.yaml",
    "OUTPUT/pretrained_model/taming_dvae/vqgan_ffhq_f16_1024.yaml": "taming_dvae__vqgan_ffhq_f16_1024.yaml",
}
TOKEN_MAPS = {"help_folder/statistics/taming_vqvae_2887.pt": (8192, 2887),
              "help_folder/statistics/taming_vqvae_974.pt": (16384, 974)}


def _mapped(node):
    if isinstance(node, dict):
        return {k: _mapped(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_mapped(v) for v in node)
    return OFFICIAL_ALIASES.get(node, node) if isinstance(node, str) else node


def _targets(node):
    if isinstance(node, dict):
        if "target" in node:
            yield node["target"]
        for v in node.values():
            yield from _targets(v)
    elif isinstance(node, list):
        for v in node:
            yield from _targets(v)


@pytest.mark.parametrize("ours,official", sorted(MODEL_CONFIGS.items()))
def test_model_configs_hold_the_official_values_with_vqdiff_targets(ours, official):
    cfg = load_yaml_config(REPO / ours)
    assert cfg == _mapped(load_yaml_config(fixtures_dir("official_configs") / official))
    targets = list(_targets(cfg))
    assert targets and all(t.startswith(("vqdiff.", "torch.")) for t in targets), targets
    for t in targets:
        resolve_target(t)


@pytest.mark.parametrize("ours,official", sorted(CODEC_YAMLS.items()))
def test_codec_yamls_hold_the_official_values(ours, official):
    assert load_yaml_config(REPO / ours) == load_yaml_config(fixtures_dir("official_configs") / official)


@pytest.mark.parametrize("ours", sorted(MODEL_CONFIGS))
def test_every_file_a_config_names_is_tracked_or_released(ours):
    needed = files_needed_by_config(load_yaml_config(REPO / ours))
    assert needed, ours
    for path in needed:
        assert (REPO / path).is_file() or released_file_for_path(path) is not None, (ours, path)
    # the weights are the released ones at their release destination
    for path in needed:
        entry = released_file_for_path(path)
        if entry is not None:
            assert Path(path).as_posix().lstrip("./") == entry.path, (path, entry.path)


@pytest.mark.parametrize("path,sizes", sorted(TOKEN_MAPS.items()))
def test_token_maps_are_the_released_tables(path, sizes):
    table = torch.load(REPO / path, weights_only=True)
    num_tokens, compact = sizes
    assert table.dtype == torch.int64 and table.shape == (num_tokens,)
    assert int(table.max()) + 1 == compact and set(table.unique().tolist()) == set(range(compact))
    used = table[table > 0]
    assert torch.all(used[1:] > used[:-1])  # consecutive ids in increasing codebook order
    released = torch.load(fixtures_dir("help_folder/statistics") / Path(path).name, weights_only=True)
    assert torch.equal(table, released)


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)


def test_gitignore_tracks_the_yamls_and_maps_and_ignores_weights():
    shipped = list(MODEL_CONFIGS) + list(CODEC_YAMLS) + list(TOKEN_MAPS)
    ignored = _git("check-ignore", "--no-index", *shipped)
    assert ignored.stdout.strip() == "", f"shipped files ignored by .gitignore: {ignored.stdout}"
    weights = ["OUTPUT/pretrained_model/ithq_learnable.pth", "OUTPUT/pretrained_model/ViT-B-32.pt",
               "OUTPUT/pretrained_model/taming_dvae/ithq_vqvae.pth", "OUTPUT/pretrained_model/coco_learnable_aa",
               "OUTPUT/coco_train/checkpoint/last.pth"]
    out = _git("check-ignore", "--no-index", *weights)
    assert sorted(out.stdout.split()) == sorted(weights)
