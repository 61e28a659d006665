"""Codec training on the engine (issue 33): a killed and resumed run equals an uninterrupted one bit for bit,
a 2-process gloo torchrun run that ``--auto_resume`` extends, class folders and streamed shards written by the
project's layouts trained through ``scripts/train_vqvae.py``, ``scripts/evaluate_codec.py``'s JSON, metrics
summed over ranks, and FSQ tokens that train the tiny diffusion config. Tiny sizes (16 px images, a few steps)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

from vqdiff.engine.codec_solver import CodecSolver
from vqdiff.engine.codec_training import train_vqvae
from vqdiff.engine.run_lock import RunLockError
from vqdiff.utils.config import instantiate_from_config, load_yaml_config, save_yaml_config

VQ = "vqdiff.modeling.codecs.image.vqgan.VQModel"
LOSS = "vqdiff.modeling.codecs.image.losses.VQLPIPSWithDiscriminator"
SHAPES = "vqdiff.data.synthetic.ShapesDataset"


def _ddconfig(ch_mult=(1, 1)) -> dict:
    return dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=list(ch_mult),
                num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def tiny_config(**solver) -> dict:
    """A 16 px VQGAN: the discriminator from step 2, dead-code restarts, validation every 3 steps."""
    return {
        "model": {"target": VQ, "params": {
            "ddconfig": _ddconfig(), "n_embed": 16, "embed_dim": 8, "legacy_quantizer_loss": False,
            "lossconfig": {"target": LOSS, "params": {"disc_start": 2, "perceptual_weight": 0.0, "pixel_loss": "l2",
                                                      "disc_num_layers": 1, "disc_ndf": 8}}}},
        "solver": {"max_steps": 6, "batch_size": 4, "log_frequency": 1, "dead_code_restart": 2,
                   "validation_every": 3, **solver},
        "dataloader": {
            "train_datasets": [{"target": SHAPES, "params": {"num_samples": 12, "resolution": 16, "split": "train"}}],
            "validation_datasets": [{"target": SHAPES, "params": {"num_samples": 4, "resolution": 16,
                                                                  "split": "heldout"}}]},
    }


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = tiny_config()  # 3 batches per epoch: the kill falls inside the second epoch
    full = train_vqvae(cfg, tmp_path / "full", progress=False)
    assert full["stopped_by"] == "max_iterations" and full["restarted_codes"] >= 0
    assert [v["step"] for v in full["validations"]] == [3, 6]

    original = CodecSolver.step

    def sigterm_during_step_4(self, batch, epoch):
        logs = original(self, batch, epoch)
        if self.last_iter == 3:
            self._stop_signal = int(signal.SIGTERM)  # what the solver's SIGTERM handler records
        return logs

    monkeypatch.setattr(CodecSolver, "step", sigterm_during_step_4)
    with pytest.raises(SystemExit) as stopped:
        train_vqvae(cfg, tmp_path / "part", progress=False)
    assert stopped.value.code == 128 + int(signal.SIGTERM)
    monkeypatch.setattr(CodecSolver, "step", original)
    part = torch.load(tmp_path / "part" / "checkpoint" / "last.pth", weights_only=True)
    assert part["global_step"] == 4 and part["data_state"]["batches_done"] == 1
    assert not (tmp_path / "part" / "configs" / "codec.yaml").exists()  # an unfinished run is no codec
    with pytest.raises(RunLockError, match="--auto_resume"):
        train_vqvae(cfg, tmp_path / "part", progress=False)  # a fresh start would overwrite it

    resumed = train_vqvae(cfg, tmp_path / "part", progress=False, auto_resume=True)
    assert [h[0] for h in resumed["history"]] == [4, 5]
    a = torch.load(tmp_path / "full" / "checkpoint" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoint" / "last.pth", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert any(k.startswith("loss.discriminator.") for k in a["state_dict"])  # taming's layout beside it
    assert torch.equal(a["state_dict"]["quantize.embedding.weight"], a["model"]["codec.quantize.embedding.weight"])
    assert set(a["optimizer_and_scheduler"]) == {"generator", "discriminator"}
    assert resumed["history"][-1][1] == full["history"][-1][1]


def test_two_process_gloo_run_resumes_and_its_codec_loads(tmp_path):
    config = tmp_path / "vq.yaml"
    save_yaml_config(tiny_config(max_steps=3, validation_every=3), config)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)

    def torchrun(*extra: str) -> subprocess.CompletedProcess:
        for _attempt in range(2):  # a port taken between _free_port() and the launch gets one retry
            run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                                  f"--master_port={_free_port()}", str(REPO / "scripts" / "train_vqvae.py"),
                                  "--config", str(config), "--output", "run", "--no_progress_bar", *extra],
                                 cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
            if run.returncode == 0 or "address already in use" not in (run.stdout + run.stderr).lower():
                break
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
        return run

    first = torchrun()
    assert "world size 2" in first.stdout + first.stderr
    assert "validation step 3: l1" in first.stdout + first.stderr  # the held-out split scored on both ranks
    assert (tmp_path / "run" / "images" / "val" / "step0000003.png").is_file()
    second = torchrun("--auto_resume", "solver.max_steps=5")
    assert "resumed from run/checkpoint/last.pth" in second.stdout + second.stderr
    ckpt = torch.load(tmp_path / "run" / "checkpoint" / "last.pth", weights_only=True)
    assert ckpt["global_step"] == 5 and len(ckpt["rng"]) == 2 and ckpt["data_state"]["world_size"] == 2

    os.chdir(tmp_path)
    try:
        node = load_yaml_config("run/configs/codec.yaml")["content_codec_config"]
        codec = instantiate_from_config(node)
        assert codec.token_shape == (8, 8) and codec.get_number_of_tokens() == 16
        assert torch.equal(codec.enc.quant_conv.weight, ckpt["state_dict"]["quant_conv.weight"])
        report = _load_script("evaluate_codec").main(["--config", "run/configs/codec.yaml",
                                                      "--ckpt", "run/checkpoint/last.pth"])
    finally:
        os.chdir(REPO)
    assert report["rfid"] is None and "Inception" in report["rfid_note"]
    assert 0 < report["l1"] < 2 and report["psnr"] > 0 and 0 < report["codebook_usage"] <= 1
    assert report["num_images"] == 4  # the held-out split of the training config


@pytest.mark.parametrize("layout", ["class_folder", "shards"])
def test_data_layouts_train_through_the_command(tmp_path, monkeypatch, layout):
    """Class folders (ImageClassFolder) and WebDataset shards (WebShardsImageText, streamed) written by the
    project's layouts train through scripts/train_vqvae.py."""
    from vqdiff.data.layouts import write_layout

    root = write_layout(layout, tmp_path / layout, num_images=8, resolution=16)
    if layout == "class_folder":
        node = {"target": "vqdiff.data.image_class_folder.ImageClassFolder", "params": {"data_root": str(root)}}
    else:
        node = {"target": "vqdiff.data.web_shards.WebShardsImageText",
                "params": {"urls": sorted(str(p) for p in root.glob("*.tar")), "samples_per_epoch": 8}}
    cfg = tiny_config(max_steps=2, validation_every=0)
    cfg["dataloader"] = {"train_datasets": [node]}
    save_yaml_config(cfg, tmp_path / "data.yaml")
    monkeypatch.chdir(tmp_path)
    result = _load_script("train_vqvae").main(["--config", "data.yaml", "--output", "run", "--no_progress_bar",
                                               "--tensorboard"])
    assert result["stopped_by"] == "max_iterations" and len(result["history"]) == 2
    assert (tmp_path / "run" / "configs" / "codec.yaml").is_file()
    assert list((tmp_path / "run" / "logs").glob("events.out.tfevents.*"))  # TensorBoard beside log.txt


def test_fsq_codec_trains_and_its_tokens_train_the_tiny_diffusion_config(tmp_path, monkeypatch):
    import train
    from vqdiff.utils.tiny_parts import write_tiny_parts

    cfg = {
        "model": {"target": "vqdiff.modeling.codecs.image.vqgan.FSQModel",
                  "params": {"ddconfig": _ddconfig((1, 1, 1)), "levels": [4, 4],
                             "lossconfig": {"target": LOSS, "params": {"perceptual_weight": 0.0, "pixel_loss": "l2",
                                                                       "use_discriminator": False}}}},
        "solver": {"max_steps": 2, "batch_size": 4},
        "dataloader": {"train_datasets": [{"target": SHAPES, "params": {"num_samples": 8, "resolution": 16}}]},
    }
    monkeypatch.chdir(tmp_path)
    result = train_vqvae(cfg, "fsq", progress=False)
    assert len(result["history"]) == 2 and result["restarted_codes"] == 0
    node = load_yaml_config("fsq/configs/codec.yaml")["content_codec_config"]
    assert node["params"]["num_tokens"] == 16 and node["params"]["token_shape"] == [4, 4]
    tokens = instantiate_from_config(node).get_tokens(torch.rand(2, 3, 16, 16) * 255)["token"]
    assert tokens.shape == (2, 16) and 0 <= int(tokens.min()) and int(tokens.max()) < 16

    write_tiny_parts(tmp_path)  # the tiny CLIP text tower the diffusion config reads
    out = train.main(["--config_file", str(REPO / "configs" / "tiny_text_shapes.yaml"), "--name", "dalle_fsq",
                      "--seed", "0", "--no_progress_bar", "solver.max_iterations=2",
                      "model.params.content_codec_config.params.config_path=fsq/configs/model.yaml",
                      "model.params.content_codec_config.params.ckpt_path=fsq/checkpoint/last.pth"])
    assert out["stopped_by"] == "max_iterations" and len(out["losses"]) == 2
    assert all(torch.isfinite(torch.tensor(out["losses"])))


def test_fsq_quantizer_levels_indices_and_straight_through():
    from vqdiff.modeling.codecs.image.quantizers import FSQuantizer

    q = FSQuantizer([8, 5, 5, 5])
    assert q.n_e == 1000 and q.codebook.shape == (1000, 4)
    assert torch.equal(q.codes_to_indices(q.codebook), torch.arange(1000))  # index <-> code is a bijection
    assert all(len(torch.unique(q.codebook[:, i])) == n for i, n in enumerate([8, 5, 5, 5]))
    z = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    z_q, loss, (_, _, idx) = q(z)
    assert float(loss) == 0.0 and idx.shape == (2, 3, 3) and z_q.abs().max() <= 1.0
    assert torch.equal(q.get_codebook_entry(idx, (2, 3, 3)), z_q.detach())
    assert torch.equal(q.get_indices(z.detach()), idx)
    z_q.sum().backward()
    assert z.grad is not None and bool((z.grad > 0).all())  # rounding passes the tanh bound's gradient through
    with pytest.raises(ValueError, match="levels"):
        FSQuantizer([1, 4])


def test_perceptual_loss_names_the_missing_weights_file(tmp_path):
    from vqdiff.modeling.codecs.image.losses import VQLPIPSWithDiscriminator

    missing = tmp_path / "vgg16.pth"
    with pytest.raises(FileNotFoundError, match="vgg16.pth.*nothing is downloaded"):
        VQLPIPSWithDiscriminator(perceptual_weight=1.0, vgg_path=str(missing))


def test_load_path_starts_from_a_taming_checkpoint(tmp_path):
    from vqdiff.engine.codec_model import CodecTrainingModel
    from vqdiff.engine.codec_training import load_pretrained_codec

    cfg = tiny_config()

    def build():
        codec = instantiate_from_config(cfg["model"])
        return CodecTrainingModel(codec, instantiate_from_config(cfg["model"]["params"]["lossconfig"]), max_steps=1)

    released = build()
    with torch.no_grad():  # a codebook no initialisation would give
        released.codec.quantize.embedding.weight.copy_(torch.linspace(-2, 2, 16 * 8).view(16, 8))
    torch.save({"state_dict": released.taming_state_dict(), "global_step": 7}, tmp_path / "taming.ckpt")
    fresh = build()
    assert not torch.equal(fresh.codec.quant_conv.weight, released.codec.quant_conv.weight)
    logs = []
    load_pretrained_codec(fresh, tmp_path / "taming.ckpt", False, type("L", (), {"info": staticmethod(logs.append)}))
    for k, v in released.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert "discriminator" in logs[0]
    # through the run: one step from the file's weights (the codebook is not re-seeded from data)
    result = train_vqvae(tiny_config(max_steps=1, validation_every=0), tmp_path / "tuned", progress=False,
                         load_path=tmp_path / "taming.ckpt")
    start = released.codec.quantize.embedding.weight
    assert torch.allclose(result["model"].quantize.embedding.weight, start, atol=1e-2)


@pytest.mark.parametrize("variant", ["gumbel", "ema"])
def test_gumbel_and_ema_codebooks_train_through_the_same_run(tmp_path, variant):
    cfg = tiny_config(max_steps=3, validation_every=3)
    params = cfg["model"]["params"]
    if variant == "gumbel":
        cfg["model"]["target"] = "vqdiff.modeling.codecs.image.vqgan.GumbelVQ"
        params.pop("legacy_quantizer_loss")
        params["embed_dim"] = params["ddconfig"]["z_channels"]
        cfg["solver"]["gumbel_temperature"] = [1.0, 0.5]
    else:
        params["codebook_update"] = "ema"
    result = train_vqvae(cfg, tmp_path / variant, progress=False)
    assert result["stopped_by"] == "max_iterations" and result["validations"][-1]["num_images"] == 4
    quantizer = result["model"].quantize
    if variant == "gumbel":
        assert quantizer.temperature == pytest.approx(0.5)  # annealed to the end value at the last step
    else:
        assert quantizer.cluster_size.sum() > 0  # the EMA statistics moved
    node = load_yaml_config(tmp_path / variant / "configs" / "codec.yaml")["content_codec_config"]
    expected = "TamingGumbelVQVAE" if variant == "gumbel" else "TamingVQVAE"
    assert node["target"].endswith(expected)
    assert instantiate_from_config(node).get_tokens(torch.rand(1, 3, 16, 16) * 255)["token"].shape == (1, 64)


def test_validation_reports_rfid_with_inception_weights(tmp_path):
    from test_evaluation_fid import save_random_tf_inception

    weights = save_random_tf_inception(tmp_path / "inception.pth")
    cfg = tiny_config(max_steps=1, validation_every=1, validation_images=2, inception_path=str(weights))
    result = train_vqvae(cfg, tmp_path / "run", progress=False)
    report = result["validations"][0]
    assert isinstance(report["rfid"], float) and report["rfid"] >= 0 and "rfid_note" not in report
    assert (tmp_path / "run" / "images" / "val" / "step0000001.png").is_file()


@pytest.mark.parametrize("name", ["tiny_vqvae_shapes", "tiny_fsq_shapes", "vqgan_256_custom"])
def test_shipped_codec_configs_parse(name):
    from vqdiff.engine.codec_solver_config import CodecSolverConfig
    from vqdiff.utils.config_sections import check_config_sections

    config = load_yaml_config(REPO / "configs" / f"{name}.yaml")
    check_config_sections(config)
    cfg = CodecSolverConfig.from_mapping(config["solver"])
    assert cfg.max_steps > 0 and config["dataloader"]["train_datasets"]
    if name == "tiny_fsq_shapes":
        assert instantiate_from_config(config["model"]).n_embed == 64


def test_dead_gumbel_codes_are_split_off_used_ones():
    from vqdiff.engine.codebook_seeding import restart_dead_codes
    from vqdiff.modeling.codecs.image.quantizers import GumbelQuantize

    torch.manual_seed(0)
    q = GumbelQuantize(num_hiddens=4, embedding_dim=4, n_embed=4)
    z = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        before = q.proj(z)
    counts = torch.tensor([10, 0, 0, 5])
    assert restart_dead_codes(q, counts, None) == 2 and counts.sum() == 0
    with torch.no_grad():
        after = q.proj(z)
    # each dead code copied a distinct used code's logit row, and the pair's mass e^a + e^b is the donor's old
    # e^z: log(e^a + e^b) = z (the dead codes' own, unused mass is given up)
    donors = set()
    for dead in (1, 2):
        donor = 0 if torch.equal(q.proj.weight[dead], q.proj.weight[0]) else 3
        donors.add(donor)
        assert torch.equal(q.proj.weight[dead], q.proj.weight[donor])
        pair = torch.logsumexp(torch.stack([after[:, dead], after[:, donor]]), dim=0)
        assert torch.allclose(pair, before[:, donor], atol=1e-5)
        assert torch.allclose(q.embed.weight[dead], q.embed.weight[donor], atol=1e-2)
    assert donors == {0, 3}
    assert restart_dead_codes(q, torch.ones(4, dtype=torch.long), None) == 0


TWO_RANK_METRICS = """
import json, sys, torch
import torch.distributed as dist
from vqdiff.evaluation.codec_metrics import CodecMetrics
dist.init_process_group("gloo")
torch.set_num_threads(1)
rank = dist.get_rank()
images, recon, codes = torch.load(sys.argv[1], weights_only=True)
metrics = CodecMetrics(16, sys.argv[2])
half = slice(2 * rank, 2 * rank + 2)  # rank 0 the first two images, rank 1 the last two
metrics.update(images[half], recon[half], codes[half])
out = metrics.compute(distributed=True)
if rank == 0:
    json.dump(out, open(sys.argv[3], "w"))
dist.destroy_process_group()
"""


def test_codec_metrics_summed_over_two_gloo_ranks_equal_one_process(tmp_path):
    from test_evaluation_fid import save_random_tf_inception

    from vqdiff.evaluation.codec_metrics import CodecMetrics

    weights = save_random_tf_inception(tmp_path / "inception.pth")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 16, 16), generator=g).float()
    recon = (images + torch.randn(4, 3, 16, 16, generator=g) * 20).clamp(0, 255)
    codes = torch.randint(0, 12, (4, 4, 4), generator=g)  # codes 12..15 unused
    torch.save((images, recon, codes), tmp_path / "batch.pt")
    (tmp_path / "two_ranks.py").write_text(TWO_RANK_METRICS)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                          f"--master_port={_free_port()}", str(tmp_path / "two_ranks.py"), str(tmp_path / "batch.pt"),
                          str(weights), str(tmp_path / "out.json")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    two = json.loads((tmp_path / "out.json").read_text())
    one_metrics = CodecMetrics(16, str(weights))
    one_metrics.update(images, recon, codes)
    one = one_metrics.compute()
    assert two["num_images"] == one["num_images"] == 4 and two["codes_used"] == one["codes_used"] == 12
    assert two["codebook_usage"] == pytest.approx(0.75)
    for key in ("l1", "psnr", "perplexity", "rfid"):
        assert two[key] == pytest.approx(one[key], rel=1e-4), key
    assert one["rfid"] > 0


def test_validation_settings_are_checked_before_training(tmp_path):
    from vqdiff.utils.config import ConfigError

    with pytest.raises(ConfigError, match=r"'solver\.inception_path': .*no_such\.pth"):
        train_vqvae(tiny_config(inception_path=str(tmp_path / "no_such.pth")), tmp_path / "a", progress=False)
    cfg = tiny_config()
    del cfg["dataloader"]["validation_datasets"]
    with pytest.raises(ConfigError, match=r"'solver\.validation_every' is set but 'dataloader\.validation_datasets'"):
        train_vqvae(cfg, tmp_path / "b", progress=False)
