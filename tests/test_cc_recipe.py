"""configs/cc.yaml (Conceptual Captions pretraining from shards) with running_command/run_train_cc.py, and
configs/custom_text.yaml / custom_class.yaml for the user folders: their data sections read the layouts
write_layout writes, the launcher names the missing downloads, and trains one tiny epoch from shards."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from test_official_commands import P, _launcher, _tiny_model_config, fresh_clone, tiny_clone  # noqa: F401
from vqdiff.data.build import build_dataloader
from vqdiff.data.layouts import write_layout
from vqdiff.utils.config import load_yaml_config, merge_opts_to_config, save_yaml_config

REPO = Path(__file__).resolve().parents[1]

SHARDS = "dataloader.train_datasets.0.params.urls"


def test_cc_config_is_coco_network_with_the_paper_schedule_and_shard_data():
    cc, coco = load_yaml_config(REPO / "configs" / "cc.yaml"), load_yaml_config(REPO / "configs" / "coco.yaml")
    assert cc["model"] == coco["model"]
    sched = cc["solver"]["optimizers_and_schedulers"][0]
    assert sched["optimizer"]["params"]["betas"] == (0.9, 0.96)
    assert sched["scheduler"]["params"]["warmup_lr"] == 4.5e-4 and sched["scheduler"]["params"]["warmup"] == 5000
    node = cc["dataloader"]["train_datasets"][0]
    assert node["target"] == "vqdiff.data.web_shards.WebShardsImageText" and node["params"]["samples_per_epoch"] > 0


@pytest.mark.parametrize("name,kind,keys", [("cc", "shards", {"image", "text"}),
                                            ("custom_text", "text_jsonl", {"image", "text"}),
                                            ("custom_text", "text_sidecar", {"image", "text"}),
                                            ("custom_class", "class_folder", {"image", "label"})])
def test_recipe_data_sections_read_the_written_layouts(tmp_path, name, kind, keys):
    cfg = load_yaml_config(REPO / "configs" / f"{name}.yaml")
    root = write_layout(kind, tmp_path / kind, num_images=8, resolution=24)
    opts = ["dataloader.batch_size=2", "dataloader.num_workers=0"]
    if name == "cc":
        opts += [f"{SHARDS}={root}/*.tar", "dataloader.train_datasets.0.params.samples_per_epoch=8",
                 f"dataloader.validation_datasets.0.params.urls={root}/00000.tar",
                 "dataloader.validation_datasets.0.params.samples_per_epoch=4"]
    else:
        opts.append(f"dataloader.data_root={root}")
    merge_opts_to_config(cfg, opts)
    out = build_dataloader(cfg)
    if name == "cc":
        out["train_loader"].dataset.set_epoch(0)
        assert out["train_iterations"] == 4 and out["validation_iterations"] == 2
    batch = next(iter(out["train_loader"]))
    assert set(batch) == keys and tuple(batch["image"].shape) == (2, 3, 256, 256)
    if name == "custom_class":
        classes = out["train_loader"].dataset.num_classes
        params = cfg["model"]["params"]["diffusion_config"]["params"]
        assert params["condition_emb_config"]["params"]["num_embed"] == 10 and classes <= 10  # set it to yours
        assert params["transformer_config"]["params"]["class_number"] == 11  # + the learned "no class" row


def test_run_train_cc_without_weights_names_the_download_command(tmp_path, monkeypatch, capsys):
    clone = fresh_clone(tmp_path / "clone")
    monkeypatch.chdir(clone)
    mod = _launcher(clone, "run_train_cc.py")
    assert mod.launch(mod.RUN, [], mod.REPO) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("download with: python scripts/download_checkpoints.py "
                        "--only taming_f8_8192_openimages_last --only ViT-B-32")
    assert mod.build_command([])[2:] == ["--name", "cc_pretrain", "--config_file", str(mod.REPO / "configs/cc.yaml"),
                                         "--num_node", "1", "--tensorboard"]  # from scratch: no --load_path


@pytest.mark.slow
def test_run_train_cc_trains_one_tiny_epoch_from_shards(tiny_clone):
    import subprocess

    from test_official_commands import _env

    cc = _tiny_model_config(tiny_clone, "configs/cc.yaml")
    for node in cc["dataloader"]["train_datasets"] + cc["dataloader"]["validation_datasets"]:
        node["params"]["im_preprocessor_config"]["params"]["size"] = 16
    save_yaml_config(cc, tiny_clone / "configs" / "cc.yaml")
    shards = write_layout("shards", tiny_clone.parent / "cc3m", num_images=8, resolution=16)
    out = subprocess.run(
        [sys.executable, "running_command/run_train_cc.py", "--no_progress_bar", "--seed", "0",
         "solver.max_epochs=1", "solver.sample_iterations=1000", "dataloader.batch_size=2",
         "dataloader.num_workers=0", f"{SHARDS}={shards}/*.tar", "dataloader.train_datasets.0.params.samples_per_epoch=8",
         f"dataloader.validation_datasets.0.params.urls={shards}/00001.tar",
         "dataloader.validation_datasets.0.params.samples_per_epoch=4"],
        cwd=tiny_clone, env=_env(), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    last = torch.load(tiny_clone / "OUTPUT" / "cc_pretrain" / "checkpoint" / "last.pth", map_location="cpu",
                      weights_only=True)
    assert last["last_iter"] == 3  # one epoch: 8 samples / batch 2
    assert "validation epoch 0: loss" in out.stdout + out.stderr
    assert f"{P}/CC_pretrained.pth" not in out.stdout  # pretraining starts from scratch


@pytest.mark.slow
@pytest.mark.parametrize("name,kind", [("custom_text", "text_jsonl"), ("custom_class", "class_folder")])
def test_custom_configs_train_one_tiny_epoch_on_written_folders(tiny_clone, name, kind):
    """The custom configs are coherent end to end: shrunk (as the release test shrinks coco.yaml) they train
    through train.py on a folder, and the class run saves its class names."""
    import train

    cfg = _tiny_model_config(tiny_clone, f"configs/{name}.yaml")
    for node in cfg["dataloader"]["train_datasets"]:
        node["params"]["im_preprocessor_config"]["params"]["size"] = 16
    save_yaml_config(cfg, tiny_clone / "configs" / f"{name}.yaml")
    root = write_layout(kind, tiny_clone.parent / kind, num_images=4, resolution=16)
    result = train.main(["--config_file", f"configs/{name}.yaml", "--name", name, "--no_progress_bar", "--seed", "0",
                         "solver.max_epochs=1", "solver.sample_iterations=1000", "dataloader.batch_size=2",
                         "dataloader.num_workers=0", f"dataloader.data_root={root}"])
    assert result["stopped_by"] == "max_epochs"
    last = torch.load(tiny_clone / "OUTPUT" / name / "checkpoint" / "last.pth", map_location="cpu", weights_only=True)
    assert last["last_iter"] == (3 if kind == "text_jsonl" else 1)  # 8 caption rows or 4 images, batch 2
    names = tiny_clone / "OUTPUT" / name / "configs" / "class_names.json"
    assert names.is_file() == (name == "custom_class")
