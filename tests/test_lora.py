"""LoRA fine-tuning through peft (issue 26): the solver.lora section, training an adapter from a base checkpoint
with train.py (exact resume, SIGTERM, only adapter state), the adapter folder, applying it (scale 0 = base bit
for bit, SHA-256 check), merging it into a plain checkpoint, the sampling CLI, and DDP on gloo."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from vqdiff.adapters.lora import (LoraError, add_lora, apply_adapter, linear_layer_names, lora_network,
                                set_lora_scale)
from vqdiff.adapters.config import LoraConfig, parse_lora_config
from vqdiff.engine.lora_training import adapter_folder_for
from vqdiff.utils.config import ConfigError, instantiate_from_config, load_yaml_config, save_yaml_config
from vqdiff.utils.tiny_parts import write_tiny_parts

REPO = Path(__file__).resolve().parents[1]

TINY_SOURCE = REPO / "configs" / "tiny_text_shapes.yaml"
# in the runs folder: the tiny config with diffusers' MLP width (4 x n_embd) and 2 blocks (20 adapted layers: peft
# then stores target_modules as its shortest suffixes, which applying the adapter must accept)
TINY = Path("tiny.yaml")
LORA = {"rank": 2, "alpha": 4, "train_also": ["to_logits.0"]}


def _write_configs(root: Path) -> Path:
    cfg = load_yaml_config(TINY_SOURCE)
    network = cfg["model"]["params"]["diffusion_config"]["params"]["transformer_config"]["params"]
    network.update(mlp_hidden_times=4, n_layer=2)
    save_yaml_config(cfg, root / TINY)
    cfg["solver"]["lora"] = dict(LORA)
    save_yaml_config(cfg, root / "lora.yaml")
    return root / "lora.yaml"


def _train(config: Path, name: str, *extra: str) -> dict:
    return train.main(["--config_file", str(config), "--name", name, "--seed", "0", "--no_progress_bar", *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A tiny base (4 iterations), a LoRA run of 6 iterations, and the same LoRA run as 3 + 3 (--auto_resume)."""
    root = tmp_path_factory.mktemp("lora")
    write_tiny_parts(root)
    here = os.getcwd()
    os.chdir(root)
    try:
        cfg = _write_configs(root)
        _train(TINY, "base", "solver.max_iterations=4")
        base = "OUTPUT/base/checkpoint/last.pth"
        full = _train(cfg, "full", "--load_path", base, "solver.max_iterations=6")
        first = _train(cfg, "part", "--load_path", base, "solver.max_iterations=3")
        second = _train(cfg, "part", "--auto_resume", "solver.max_iterations=6")  # base from last.pth's record
        (root / "losses.txt").write_text(repr((full["losses"], first["losses"] + second["losses"])))
    finally:
        os.chdir(here)
    return root


def _base_model(root: Path):
    cfg = load_yaml_config(TINY)
    model = instantiate_from_config(cfg["model"])
    ckpt = torch.load(root / "OUTPUT/base/checkpoint/last.pth", weights_only=True)
    model.load_state_dict(ckpt["model"])
    model.get_ema_model().load_state_dict(ckpt["ema"])
    return model


# ------------------------------------------------------------------------------------------- config
def test_lora_section_is_typed_and_checked():
    assert parse_lora_config({}) == LoraConfig()
    assert LoraConfig().rank == 16 and LoraConfig().alpha == 32  # aMUSEd's rank and alpha
    with pytest.raises(ConfigError, match=r"solver.lora.rnak'; did you mean 'solver.lora.rank'"):
        parse_lora_config({"rnak": 4})
    with pytest.raises(ConfigError, match="rank' must be an integer >= 1"):
        parse_lora_config({"rank": 0})
    with pytest.raises(ConfigError, match=r"dropout' must be a number in \[0, 1\)"):
        parse_lora_config({"dropout": 1.0})
    with pytest.raises(ConfigError, match="lists a name twice"):
        parse_lora_config({"target_modules": ["query", "query"]})


def test_unknown_module_is_an_error_listing_linear_layers(runs, monkeypatch):
    monkeypatch.chdir(runs)
    model = _base_model(runs)
    listed = r"'to_q' names no linear layer.*attn1\.query.*attn2\.key.*mlp\.0.*to_logits\.1"
    with pytest.raises(ConfigError, match=listed):
        add_lora(model, LoraConfig(target_modules=("to_q",)))
    with pytest.raises(ConfigError, match="'no_such_tensor' names no parameter"):
        add_lora(model, LoraConfig(train_also=("no_such_tensor",)))
    with pytest.raises(ConfigError, match="already gets a LoRA adapter"):
        add_lora(model, LoraConfig(train_also=("attn1.query",)))


def test_adapter_changes_fused_attention_and_scale_zero_is_exact(runs, monkeypatch):
    """The self attention runs q/k/v as one matmul: with an adapter it must use the adapted weights (eval) and
    agree with calling each peft layer (train mode); at scale 0 it is the base network bit for bit."""
    monkeypatch.chdir(runs)
    model = _base_model(runs).eval()
    net = lora_network(model)
    x = torch.randint(0, 16, (2, 16))
    cond = torch.randn(2, 77, 32)
    t = torch.tensor([1, 7])
    with torch.no_grad():
        base_out = net(x, cond, t)
        add_lora(model, LoraConfig(rank=2, alpha=4))
        for name, p in net.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.3)
        net.eval()
        fused = net(x, cond, t)
        net.train()  # no dropout in this network: train mode only switches to calling each layer
        per_layer = net(x, cond, t)
        net.eval()
        set_lora_scale(net, 0.0)
        zero = net(x, cond, t)
    assert (fused - base_out).abs().max() > 1e-3  # the adapter acts
    torch.testing.assert_close(fused, per_layer, rtol=1e-4, atol=1e-5)
    assert torch.equal(zero, base_out)
    queries = [n for n in linear_layer_names(net) if n.endswith("attn1.query")]
    assert queries == ["blocks.0.attn1.query", "blocks.1.attn1.query"]


# ------------------------------------------------------------------------------------------- training
def test_lora_run_trains_only_the_adapter_and_resumes_exactly(runs):
    full_losses, split_losses = eval((runs / "losses.txt").read_text())
    assert len(full_losses) == 6 and split_losses == full_losses
    a = torch.load(runs / "OUTPUT/full/checkpoint/last.pth", weights_only=True)
    b = torch.load(runs / "OUTPUT/part/checkpoint/last.pth", weights_only=True)
    assert a["last_iter"] == b["last_iter"] == 5
    trained = sorted(a["model"])
    assert trained == sorted(b["model"]) and all(".lora_" in k or "to_logits.0" in k for k in trained)
    assert sum("to_logits.0" in k for k in trained) == 2 and sum(".lora_" in k for k in trained) == 40
    for k in trained:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert sorted(a["ema"]) == sorted(k[len("transformer."):] for k in trained)  # EMA of trained tensors only
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    state = a["optimizer_and_scheduler"]["none"]["optimizer"]["module"]["state"]
    assert len(state) == len(trained)  # optimizer state for the trained tensors only
    assert a["lora"]["base_checkpoint"] == "last.pth" and len(a["lora"]["base_sha256"]) == 64
    lora_b = [v for k, v in a["model"].items() if "lora_B" in k]
    assert all(v.abs().max() > 0 for v in lora_b)  # B starts at zero: it moved


def test_adapter_folder_is_peft_format_and_small(runs):
    folder = runs / "OUTPUT/full/checkpoint/last_lora"
    assert adapter_folder_for(runs / "OUTPUT/full/checkpoint/last.pth") == folder
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors", "train_also.safetensors",
                     "vqdiff_adapter.json"]
    import json

    import peft
    from safetensors.torch import load_file

    cfg = peft.LoraConfig.from_pretrained(str(folder))
    assert cfg.r == 2 and cfg.lora_alpha == 4 and len(cfg.target_modules) < 20  # peft's shortest suffixes
    assert len(load_file(str(folder / "adapter_model.safetensors"))) == 40
    record = json.loads((folder / "vqdiff_adapter.json").read_text())
    base = runs / "OUTPUT/base/checkpoint/last.pth"
    from vqdiff.adapters.lora import file_sha256

    assert record["base_sha256"] == file_sha256(base) and record["weights"] == "ema"
    adapter_bytes = sum(p.stat().st_size for p in folder.iterdir())
    assert adapter_bytes < 0.05 * base.stat().st_size, (adapter_bytes, base.stat().st_size)
    assert (runs / "OUTPUT/full/checkpoint/000000e_3iter_lora/adapter_model.safetensors").is_file()


def test_lora_without_base_is_refused(runs, monkeypatch):
    monkeypatch.chdir(runs)
    with pytest.raises(ConfigError, match="--load_path <base.pth>"):
        _train(runs / "lora.yaml", "nobase", "solver.max_iterations=1")
    with pytest.raises(Exception, match="LoRA run's checkpoint"):
        _train(runs / "lora.yaml", "onlora", "--load_path", "OUTPUT/full/checkpoint/last.pth",
               "solver.max_iterations=1")


def test_sigterm_saves_lora_checkpoint_and_adapter(runs, monkeypatch):
    """SIGTERM during a LoRA run (sent by the process to itself after iteration 2, in-process to spare a
    second peft import): the step finishes, last.pth and the adapter folder are written, the run stops."""
    from vqdiff.engine.solver import Solver

    monkeypatch.chdir(runs)
    real_step = Solver.step

    def step(self, batch, epoch):
        logs = real_step(self, batch, epoch)
        if self.last_iter == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return logs

    monkeypatch.setattr(Solver, "step", step)
    result = _train(runs / "lora.yaml", "sig", "--load_path", "OUTPUT/base/checkpoint/last.pth",
                    "solver.max_epochs=1000", "solver.save_epochs=1000", "solver.validation_epochs=1000")
    assert result["stopped_by"] == "signal SIGTERM" and result["signal"] == signal.SIGTERM
    ck = torch.load(runs / "OUTPUT/sig/checkpoint/last.pth", weights_only=True)
    assert ck["last_iter"] == 2 and "lora" in ck and ck["data_state"]["batches_done"] == 3
    assert (runs / "OUTPUT/sig/checkpoint/last_lora/adapter_model.safetensors").is_file()


# ------------------------------------------------------------------------------------------- using it
def _api(runs: Path, **kw):
    from inference_VQ_Diffusion import VQ_Diffusion

    return VQ_Diffusion(config=str(TINY), path=str(runs / "OUTPUT/base/checkpoint/last.pth"), device="cpu", **kw)


def _samples(api, seed: int = 5) -> np.ndarray:
    images = api.inference_generate_sample_with_condition("a red circle at the top left on a gray background",
                                                          truncation_rate=0.9, save_root=None, batch_size=3,
                                                          seed=seed)
    return np.stack([np.asarray(im) for im in images])


def test_scale_zero_gives_base_samples_bit_for_bit(runs, monkeypatch):
    monkeypatch.chdir(runs)
    adapter = str(runs / "OUTPUT/full/checkpoint/last_lora")
    base = _samples(_api(runs))
    zero = _api(runs, lora=adapter, lora_scale=0.0)
    assert zero.lora_record["base_checkpoint"] == "last.pth"
    assert np.array_equal(_samples(zero), base)
    one = _api(runs, lora=adapter, lora_scale=1.0)
    net_zero, net_one = lora_network(zero.model), lora_network(one.model)
    x, cond, t = torch.randint(0, 16, (2, 16)), torch.randn(2, 77, 32), torch.tensor([2, 9])
    with torch.no_grad():
        assert (net_one(x, cond, t) - net_zero(x, cond, t)).abs().max() > 0  # scale 1: the adapter acts


def test_base_mismatch_is_refused_unless_allowed(runs, monkeypatch, tmp_path):
    monkeypatch.chdir(runs)
    other = tmp_path / "other.pth"
    ck = torch.load(runs / "OUTPUT/base/checkpoint/last.pth", weights_only=True)
    ck["last_epoch"] = 99
    torch.save(ck, other)
    adapter = str(runs / "OUTPUT/full/checkpoint/last_lora")
    from inference_VQ_Diffusion import VQ_Diffusion

    with pytest.raises(LoraError, match="was trained on 'last.pth'.*refused"):
        VQ_Diffusion(config=str(TINY), path=str(other), device="cpu", lora=adapter)
    with pytest.warns(UserWarning, match="was trained on 'last.pth'"):
        VQ_Diffusion(config=str(TINY), path=str(other), device="cpu", lora=adapter, lora_allow_base_mismatch=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        apply_adapter(_base_model(runs), adapter, base_path=runs / "OUTPUT/base/checkpoint/last.pth")


def test_merged_checkpoint_loads_everywhere_and_matches(runs, monkeypatch, tmp_path):
    monkeypatch.chdir(runs)
    from inference_VQ_Diffusion import VQ_Diffusion
    from scripts.merge_lora import main as merge_main
    from vqdiff.inference.diffusers_export import export_diffusers

    adapter = str(runs / "OUTPUT/full/checkpoint/last_lora")
    out = tmp_path / "merged.pth"
    base = str(runs / "OUTPUT/base/checkpoint/last.pth")
    assert merge_main(["--config", str(TINY), "--ckpt", base, "--lora", adapter, "--scale", "0.8",
                       "--out", str(out)]) == 0
    ck = torch.load(out, weights_only=True)
    assert not any("lora_" in k or "base_layer" in k for k in ck["model"])
    merged = VQ_Diffusion(config=str(TINY), path=str(out), device="cpu")
    assert merged.load_report.ok
    unmerged = _api(runs, lora=adapter, lora_scale=0.8)
    x, cond, t = torch.randint(0, 16, (2, 16)), torch.randn(2, 77, 32), torch.tensor([2, 9])
    with torch.no_grad():
        a = lora_network(merged.model)(x, cond, t)
        b = lora_network(unmerged.model)(x, cond, t)
        base_out = lora_network(_api(runs).model)(x, cond, t)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (a - base_out).abs().max() > 1e-6
    assert torch.equal(merged.model.transformer.transformer.to_logits[0].weight,
                       unmerged.model.transformer.transformer.to_logits[0].weight)  # train_also at 0.8
    export_diffusers(merged.model, tmp_path / "diffusers")
    assert (tmp_path / "diffusers" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()


def test_sample_cli_takes_lora(runs, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(runs)
    from vqdiff.sample import main as sample_main

    args = ["--config", str(TINY), "--ckpt", "OUTPUT/base/checkpoint/last.pth", "--text", "a blue square", "-n", "2",
            "--seed", "1", "--device", "cpu", "--no-progress", "--truncation", "0.9"]
    assert sample_main(args + ["--out", str(tmp_path / "base")]) == 0
    assert sample_main(args + ["--out", str(tmp_path / "zero"), "--lora", "OUTPUT/full/checkpoint/last_lora",
                               "--lora-scale", "0"]) == 0
    for i in range(2):
        a = np.asarray(Image_open(tmp_path / "base" / "a blue square" / f"{i:06d}.png"))
        b = np.asarray(Image_open(tmp_path / "zero" / "a blue square" / f"{i:06d}.png"))
        assert np.array_equal(a, b)


def Image_open(path):  # noqa: N802
    from PIL import Image

    return Image.open(path).convert("RGB")


# ------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lora_two_process_gloo_resumes_and_trains(runs):
    """Two gloo processes continue the one-process LoRA run 'part' (copied): both load the base its last.pth
    records, inject, wrap in DDP; rank 0 saves the trained tensors and the adapter folder."""
    shutil.copytree(runs / "OUTPUT" / "part", runs / "OUTPUT" / "ddp")
    before = torch.load(runs / "OUTPUT/ddp/checkpoint/last.pth", weights_only=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    for _attempt in range(2):  # a port taken between _free_port() and the launch gets one retry
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                               f"--master_port={_free_port()}", str(REPO / "train.py"), "--config_file",
                               str(runs / "lora.yaml"), "--name", "ddp", "--seed", "0", "--no_progress_bar",
                               "--auto_resume", "solver.validation_epochs=100", "dataloader.batch_size=2",
                               "solver.max_iterations=8"],
                              cwd=runs, env=env, capture_output=True, text=True, timeout=240)
        if done.returncode == 0 or "address already in use" not in (done.stdout + done.stderr).lower():
            break
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    after = torch.load(runs / "OUTPUT/ddp/checkpoint/last.pth", weights_only=True)
    assert before["last_iter"] == 5 and after["last_iter"] == 7 and len(after["rng"]) == 2
    assert after["lora"] == before["lora"] and sorted(after["model"]) == sorted(before["model"])
    assert any(not torch.equal(before["model"][k], after["model"][k]) for k in before["model"])  # it trained on
    assert (runs / "OUTPUT/ddp/checkpoint/last_lora/adapter_model.safetensors").is_file()
