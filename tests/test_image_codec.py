"""Image codec: taming VQGAN / Gumbel / FFHQ wrappers, PatchVQVAE, checkpoints, remapping, training."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
import torch

from conftest import fixtures_dir
from vqdiff.modeling.codecs.image.checkpoint import load_codec_weights
from vqdiff.modeling.codecs.image.patch_vqvae import PatchVQVAE
from vqdiff.modeling.codecs.image.taming_vqvae import TamingFFHQVQVAE, TamingGumbelVQVAE, TamingVQVAE
from vqdiff.modeling.codecs.image.token_mapping import (
    build_token_mapping,
    count_tokens,
    invert_token_mapping,
    load_token_mapping,
)
from vqdiff.engine.codec_training import train_vqvae
from vqdiff.modeling.codecs.image.vqgan import GumbelVQ, VQModel
from vqdiff.utils.config import instantiate_from_config, load_yaml_config, save_yaml_config


def _ddconfig(resolution: int = 32, ch_mult=(1, 1, 1, 1), z: int = 8, attn=()) -> dict:
    return dict(double_z=False, z_channels=z, resolution=resolution, in_channels=3, out_ch=3, ch=32,
                ch_mult=list(ch_mult), num_res_blocks=1, attn_resolutions=list(attn), dropout=0.0)


def _write_taming_yaml(path: Path, gumbel: bool, n_embed: int = 16, **dd) -> Path:
    dd_cfg = _ddconfig(**dd)
    params = {"ddconfig": dd_cfg, "n_embed": n_embed, "embed_dim": dd_cfg["z_channels"],
              "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"}}
    if gumbel:
        params.update(kl_weight=1e-8, temperature_scheduler_config={
            "target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler", "params": {"warm_up_steps": 0}})
    target = "image_synthesis.taming.models.vqgan." + ("GumbelVQ" if gumbel else "VQModel")
    save_yaml_config({"model": {"target": target, "params": params}}, path)
    return path


def _images(b: int = 2, res: int = 32) -> torch.Tensor:
    return torch.rand(b, 3, res, res, generator=torch.Generator().manual_seed(1)) * 255


# ------------------------------------------------------------------------------------------------
# against the official tiny model
# ------------------------------------------------------------------------------------------------
def _official_codec() -> TamingGumbelVQVAE:
    cfg = load_yaml_config("config_tiny_text.yaml")
    return instantiate_from_config(cfg["model"]["params"]["content_codec_config"])


def test_official_tokens_and_decode_match(official_tiny_text):
    codec = _official_codec()
    assert isinstance(codec, TamingGumbelVQVAE)
    expected = torch.load("expected.pt", weights_only=True)
    tokens = codec.get_tokens(expected["images"])["token"]
    assert tokens.dtype == torch.long and tokens.shape == (2, 64)
    assert torch.equal(tokens, expected["content_token"])
    decoded = codec.decode(expected["content_token"])
    ref = expected["decoded"]
    assert decoded.shape == ref.shape
    assert float((decoded - ref).abs().max() / ref.abs().max()) < 2e-5
    assert float(decoded.min()) >= 0 and float(decoded.max()) <= 255
    assert codec.get_number_of_tokens() == 40 and codec.token_shape == (8, 8)


def test_official_dalle_checkpoint_keys_load_strictly(official_tiny_text):
    codec = _official_codec()
    model_sd = torch.load("tiny_text_official.pth", weights_only=True)["model"]
    sub = {k[len("content_codec."):]: v for k, v in model_sd.items() if k.startswith("content_codec.")}
    result = codec.load_state_dict(sub, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    shapes = json.loads(Path("state_dict_keys.json").read_text())
    ours = {f"content_codec.{k}": list(v.shape) for k, v in codec.state_dict().items()}
    theirs = {k: v for k, v in shapes.items() if k.startswith("content_codec.")}
    assert ours == theirs
    # the mapping tensors are not part of the state dict
    assert not any("quantize_to_full" in k or "full_to_quantize" in k for k in codec.state_dict())


def test_frozen_codec_stays_eval_without_grads(official_tiny_text):
    codec = _official_codec()
    codec.train()
    assert not codec.training and not codec.enc.encoder.training
    assert all(not p.requires_grad for p in codec.parameters())


def test_gumbel_encoding_deterministic_and_optional_sampling(official_tiny_text):
    codec = _official_codec()
    x = torch.load("expected.pt", weights_only=True)["images"]
    assert torch.equal(codec.get_tokens(x)["token"], codec.get_tokens(x)["token"])
    g = torch.Generator().manual_seed(0)
    sampled = [codec.get_tokens(x, sample=True, generator=g)["token"] for _ in range(3)]
    assert any(not torch.equal(s, sampled[0]) for s in sampled[1:])
    assert codec.tokenize({"image": x})["token"].shape == (2, 64)


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gumbel", [False, True])
def test_lightning_ckpt_and_plain_state_dict_load_strict(tmp_path, gumbel, caplog):
    cls = GumbelVQ if gumbel else VQModel
    yaml_path = _write_taming_yaml(tmp_path / "m.yaml", gumbel)
    params = load_yaml_config(yaml_path)["model"]["params"]
    src = cls(**params)
    sd = src.state_dict()
    lightning = {"state_dict": {**sd, "loss.discriminator.main.0.weight": torch.zeros(2),
                                "loss.perceptual_loss.lin0.model.1.weight": torch.zeros(1)},
                 "global_step": 7, "epoch": 1}
    torch.save(lightning, tmp_path / "last.ckpt")
    torch.save(sd, tmp_path / "plain.pth")
    for name in ("last.ckpt", "plain.pth"):
        dst = cls(**params)
        with caplog.at_level(logging.INFO):
            dropped = load_codec_weights(dst, tmp_path / name)
        assert sorted(dropped) == (sorted(k for k in lightning["state_dict"] if k.startswith("loss."))
                                   if name == "last.ckpt" else [])
        for k, v in dst.state_dict().items():
            assert torch.equal(v, sd[k]), k
    assert "dropped 2 training-only keys" in caplog.text
    # and through the codec wrapper, by config_path / ckpt_path
    wrapper = (TamingGumbelVQVAE if gumbel else TamingVQVAE)(
        config_path=str(yaml_path), ckpt_path=str(tmp_path / "last.ckpt"), num_tokens=16, quantize_number=0,
        mapping_path=None, token_shape=[4, 4])
    assert torch.equal(wrapper.enc.quant_conv.weight, sd["quant_conv.weight"])


def test_strict_loading_reports_missing_and_unexpected(tmp_path):
    params = load_yaml_config(_write_taming_yaml(tmp_path / "m.yaml", False))["model"]["params"]
    model = VQModel(**params)
    sd = model.state_dict()
    sd.pop("quant_conv.bias")
    sd["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"missing keys \[quant_conv.bias\].*encoder.extra.weight"):
        load_codec_weights(VQModel(**params), sd)


def test_unsafe_pickle_refused_unless_opted_in(tmp_path, monkeypatch):
    params = load_yaml_config(_write_taming_yaml(tmp_path / "m.yaml", False))["model"]["params"]
    model = VQModel(**params)
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": model.state_dict(), "hparams": argparse.Namespace(lr=1)}, path)
    monkeypatch.delenv("VQDIFF_ALLOW_UNSAFE_PICKLE", raising=False)
    with pytest.raises(RuntimeError, match="allow_unsafe_pickle"):
        load_codec_weights(VQModel(**params), path)
    load_codec_weights(VQModel(**params), path, allow_unsafe_pickle=True)
    monkeypatch.setenv("VQDIFF_ALLOW_UNSAFE_PICKLE", str(path))  # the variable names the trusted files
    load_codec_weights(VQModel(**params), path)
    monkeypatch.setenv("VQDIFF_ALLOW_UNSAFE_PICKLE", "1")  # a blanket value no longer opens every file
    with pytest.warns(UserWarning, match="no longer allows"), pytest.raises(RuntimeError, match="allow_unsafe_pickle"):
        load_codec_weights(VQModel(**params), path)


def test_missing_checkpoint_names_the_path(tmp_path):
    yaml_path = _write_taming_yaml(tmp_path / "m.yaml", False)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        TamingVQVAE(config_path=str(yaml_path), ckpt_path="nope.pth", num_tokens=16, quantize_number=0)


def test_ffhq_net2net_yaml_builds_first_stage_only(tmp_path):
    first = load_yaml_config(_write_taming_yaml(tmp_path / "fs.yaml", False, resolution=32,
                                                ch_mult=(1, 1, 1, 1, 1)))["model"]
    net2net = {"model": {"target": "image_synthesis.taming.models.cond_transformer.Net2NetTransformer",
                         "params": {"cond_stage_config": "__is_unconditional__", "first_stage_key": "image",
                                    "transformer_config": {"target": "image_synthesis.taming.modules.transformer.mingpt.GPT",
                                                           "params": {"vocab_size": 16, "n_layer": 24}},
                                    "first_stage_config": first}}}
    save_yaml_config(net2net, tmp_path / "ffhq.yaml")
    src = VQModel(**first["params"])
    sd = {f"first_stage_model.{k}": v for k, v in src.state_dict().items()}
    sd["transformer.tok_emb.weight"] = torch.zeros(3, 3)
    torch.save({"state_dict": sd}, tmp_path / "ffhq.pth")
    codec = TamingFFHQVQVAE(config_path=str(tmp_path / "ffhq.yaml"), ckpt_path=str(tmp_path / "ffhq.pth"),
                            num_tokens=16, token_shape=[2, 2])
    assert torch.equal(codec.dec.post_quant_conv.weight, src.post_quant_conv.weight)
    assert codec.get_tokens(_images(1))["token"].shape == (1, 4)
    assert not any(k.startswith("transformer") for k in codec.state_dict())


# ------------------------------------------------------------------------------------------------
# shapes, gradients
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gumbel", [False, True])
@pytest.mark.parametrize("levels,grid", [(4, 4), (5, 2)])  # f8 and f16 on 32x32 images
def test_encode_decode_shapes(tmp_path, gumbel, levels, grid):
    yaml_path = _write_taming_yaml(tmp_path / "m.yaml", gumbel, ch_mult=(1,) * levels, attn=(grid,))
    cls = TamingGumbelVQVAE if gumbel else TamingVQVAE
    codec = cls(config_path=str(yaml_path), ckpt_path=None, num_tokens=16, quantize_number=0,
                mapping_path="None", token_shape=[grid, grid])
    tokens = codec.get_tokens(_images(3))["token"]
    assert tokens.shape == (3, grid * grid) and tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 16
    images = codec.decode(tokens)
    assert images.shape == (3, 3, 32, 32)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 255.0
    with pytest.raises(ValueError, match="0..15"):
        codec.decode(torch.full((1, grid * grid), 16))


@pytest.mark.parametrize("cls", [VQModel, GumbelVQ])
def test_straight_through_gradient_reaches_encoder(tmp_path, cls):
    params = load_yaml_config(_write_taming_yaml(tmp_path / "m.yaml", cls is GumbelVQ))["model"]["params"]
    model = cls(**params).train()
    x = _images(2) / 127.5 - 1
    xrec, qloss = model(x)
    ((x - xrec).abs().mean()).backward()  # reconstruction only: the encoder gets gradient through z_q
    grad = model.encoder.conv_in.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


# ------------------------------------------------------------------------------------------------
# remapping
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,num_tokens,k", [("taming_vqvae_2887.pt", 8192, 2887), ("taming_vqvae_974.pt", 16384, 974)])
def test_released_mapping_round_trip(name, num_tokens, k):
    path = fixtures_dir("help_folder/statistics") / name
    full_to_q = load_token_mapping(path, num_tokens, k)
    q_to_full = invert_token_mapping(full_to_q, k)
    assert q_to_full.shape == (k,)
    assert torch.equal(full_to_q[q_to_full], torch.arange(k))  # compact -> full -> compact
    first = {}
    for j, i in enumerate(full_to_q.tolist()):
        first.setdefault(i, j)
    assert q_to_full.tolist() == [first[i] for i in range(k)]  # the first preimage
    counts = torch.zeros(num_tokens, dtype=torch.long)
    counts[q_to_full] = 5  # the codes the map keeps
    rebuilt, k2 = build_token_mapping(counts)
    assert k2 == k and torch.equal(rebuilt, full_to_q)
    with pytest.raises(ValueError, match="num_tokens"):
        load_token_mapping(path, num_tokens + 1, k)


def test_codec_with_mapping_round_trips_tokens(tmp_path):
    yaml_path = _write_taming_yaml(tmp_path / "m.yaml", False, n_embed=16)
    mapping = torch.tensor([0, 0, 1, 2, 2, 3, 4, 0, 5, 6, 7, 7, 8, 9, 3, 1])
    torch.save(mapping, tmp_path / "map.pt")
    codec = TamingVQVAE(config_path=str(yaml_path), ckpt_path=None, num_tokens=16, quantize_number=10,
                        mapping_path=str(tmp_path / "map.pt"), token_shape=[4, 4])
    assert codec.get_number_of_tokens() == 10
    tokens = torch.arange(10).repeat(2)[:16].view(1, 16)
    # decoding then re-encoding the decoder's codes gives back the compact tokens
    full = codec.quantize_to_full[tokens]
    assert torch.equal(codec.full_to_quantize[full], tokens)
    assert codec.decode(tokens).shape == (1, 3, 32, 32)
    assert int(codec.get_tokens(_images(2))["token"].max()) < 10
    counts = count_tokens(torch.tensor([[1, 1, 3]]), 5)
    assert counts.tolist() == [0, 2, 0, 1, 0]


# ------------------------------------------------------------------------------------------------
# ITHQ PatchVQVAE
# ------------------------------------------------------------------------------------------------
def _tiny_patch_config(path: Path) -> Path:
    cfg = load_yaml_config(fixtures_dir("official_configs") / "taming_dvae__config.yaml")
    for side in ("encoder_config", "decoder_config"):
        p = cfg["model"]["params"][side]["params"]
        p.update(ch=32, ch_mult=[1, 1, 1, 1], num_res_blocks=1, z_channels=32, resolution=[32, 32],
                 attn_resolutions=[[4, 4]])
    cfg["model"]["params"].update(n_embed=32, embed_dim=8)
    save_yaml_config(cfg, path)
    return path


def test_ithq_patch_vqvae_builds_from_tiny_config(tmp_path):
    config_path = _tiny_patch_config(tmp_path / "config.yaml")
    ithq = load_yaml_config(fixtures_dir("official_configs") / "configs__ithq.yaml")
    node = ithq["model"]["params"]["content_codec_config"]
    node["params"].update(config_path=str(config_path), ckpt_path=None, token_shape=[4, 4])
    codec = instantiate_from_config(node)
    assert isinstance(codec, PatchVQVAE) and codec.get_number_of_tokens() == 32
    keys = codec.state_dict()
    assert {"enc.quantize.embedding", "enc.quantize.cluster_size", "enc.quantize.embedding_avg",
            "dec.quantize.embedding"} <= set(keys)
    # a checkpoint in the released {'model': PatchVQGAN state dict} form loads strictly
    src = PatchVQVAE.load_model(str(config_path), None)
    torch.save({"model": src.state_dict()}, tmp_path / "ithq_vqvae.pth")
    node["params"]["ckpt_path"] = str(tmp_path / "ithq_vqvae.pth")
    again = instantiate_from_config(node)
    assert torch.equal(again.enc.quant_conv.weight, src.quant_conv.weight)
    assert torch.equal(again.dec.quantize.embedding, src.quantize.embedding)
    tokens = again.get_tokens(_images(2))["token"]
    assert tokens.shape == (2, 16) and int(tokens.max()) < 32
    assert again.decode(tokens).shape == (2, 3, 32, 32)
    assert not again.training and all(not p.requires_grad for p in again.parameters())


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def test_training_on_shapes_cuts_reconstruction_loss(tmp_path):
    cfg = {
        "model": {"target": "vqdiff.modeling.codecs.image.vqgan.VQModel",
                  "params": {"embed_dim": 8, "n_embed": 32,
                             "ddconfig": _ddconfig(resolution=16, ch_mult=(1, 1), z=8),
                             "lossconfig": {"target": "vqdiff.modeling.codecs.image.losses.VQLPIPSWithDiscriminator",
                                            "params": {"disc_start": 10**6, "perceptual_weight": 0.0,
                                                       "disc_num_layers": 1, "disc_ndf": 8}}}},
        "solver": {"base_lr": 3e-3, "batch_size": 8, "log_frequency": 10},
        "dataloader": {"train_datasets": [{"target": "vqdiff.data.synthetic.ShapesDataset",
                                           "params": {"num_samples": 256, "resolution": 16, "split": "all"}}]},
    }
    result = train_vqvae(cfg, output_dir=tmp_path / "run", max_steps=100, progress=False)
    first = result["first"]
    late = sum(r for _, r in result["history"][-3:]) / 3
    assert first > 0.2
    assert late < first / 3.5, result["history"]
    # the run's outputs load into the codec wrapper
    node = load_yaml_config(tmp_path / "run" / "configs" / "codec.yaml")["content_codec_config"]
    codec = instantiate_from_config(node)
    assert isinstance(codec, TamingVQVAE) and codec.token_shape == (8, 8)
    ckpt = torch.load(tmp_path / "run" / "checkpoint" / "last.pth", weights_only=True)
    assert any(k.startswith("loss.discriminator.") for k in ckpt["state_dict"])
    assert torch.equal(codec.enc.quant_conv.weight, result["model"].quant_conv.weight)


def test_vqgan_loss_adaptive_weight_and_hinge_discriminator(tmp_path):
    from vqdiff.modeling.codecs.image.losses import VQLPIPSWithDiscriminator, hinge_d_loss

    params = load_yaml_config(_write_taming_yaml(tmp_path / "m.yaml", False))["model"]["params"]
    model = VQModel(**params).train()
    loss_fn = VQLPIPSWithDiscriminator(disc_start=5, perceptual_weight=0.0, disc_num_layers=1, disc_ndf=8)
    x = _images(2) / 127.5 - 1
    xrec, qloss = model(x)
    before, log_before = loss_fn(qloss, x, xrec, 0, global_step=4, last_layer=model.get_last_layer())
    assert float(log_before["train/g_loss"]) == 0.0
    assert torch.allclose(before, (x - xrec).abs().mean() + qloss)
    after, log_after = loss_fn(qloss, x, xrec, 0, global_step=5, last_layer=model.get_last_layer())
    assert float(log_after["train/d_weight"]) > 0
    d_loss, _ = loss_fn(qloss, x, xrec, 1, global_step=5)
    assert torch.isfinite(d_loss) and float(d_loss.detach()) >= 0
    assert float(hinge_d_loss(torch.full((3,), 2.0), torch.full((3,), -2.0))) == 0.0
    assert float(hinge_d_loss(torch.zeros(3), torch.zeros(3))) == 1.0
    with pytest.raises(ValueError, match="optimizer_idx"):
        loss_fn(qloss, x, xrec, 2, global_step=5)


def test_train_and_mapping_scripts_run_end_to_end(tmp_path, monkeypatch):
    import importlib.util

    def load(name):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_vqvae_shapes.yaml"
    monkeypatch.chdir(tmp_path)
    result = load("train_vqvae").main([
        "--config", str(config), "--output", "run", "--max_steps", "3",
        "model.params.ddconfig.ch_mult=[1, 1]", "model.params.ddconfig.resolution=16",
        "dataloader.train_datasets.0.params.num_samples=16", "dataloader.train_datasets.0.params.resolution=16"])
    assert len(result["history"]) >= 2
    mapping, k = load("make_token_mapping").main([
        "--codec_config", "run/configs/codec.yaml", "--resolution", "16", "--num_samples", "16", "--out", "map.pt"])
    assert 1 <= k <= 64 and mapping.shape == (64,)
    node = load_yaml_config("run/configs/codec.yaml")["content_codec_config"]
    node["params"].update(quantize_number=k, mapping_path="map.pt")
    codec = instantiate_from_config(node)
    tokens = codec.get_tokens(_images(2, 16))["token"]
    assert tokens.shape == (2, 64) and int(tokens.max()) < k


def test_d2_seeding_gives_the_rare_cluster_a_code():
    from vqdiff.engine.codebook_seeding import d2_sample as _d2_sample

    # 990 background vectors at 0 and 10 foreground vectors far away: uniform picks would seldom hit them
    z = torch.cat([torch.zeros(990, 4), torch.full((10, 4), 5.0)])
    codes = torch.zeros(1, 4)
    picks = _d2_sample(z, codes, 3, torch.Generator().manual_seed(0))
    assert torch.equal(picks, torch.full((3, 4), 5.0))  # zero distance = zero probability for the background


def test_dead_code_restarts_move_unused_codes_onto_the_data():
    from vqdiff.engine.codebook_seeding import restart_dead_codes
    from vqdiff.modeling.codecs.image.quantizers import EMAVectorQuantizer, VectorQuantizer

    torch.manual_seed(0)
    z = torch.tensor([[0.1, 0.0], [0.9, 1.0], [3.0, 3.0], [3.0, 3.1]])
    for vq in (VectorQuantizer(n_e=4, e_dim=2), EMAVectorQuantizer(n_e=4, e_dim=2)):
        codes = vq.embedding.weight if isinstance(vq, VectorQuantizer) else vq.embedding
        with torch.no_grad():
            codes.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [1.0, 1.0]]))
        counts = torch.bincount(vq.get_indices(z.view(1, 2, 2, 2).permute(0, 3, 1, 2)).flatten(), minlength=4)
        assert counts.tolist() == [1, 0, 0, 3]
        assert restart_dead_codes(vq, counts, z) == 2  # codes 1 and 2 were never chosen
        assert all(any(torch.equal(row, d) for d in z) for row in codes[1:3])
        assert counts.sum() == 0 and torch.equal(codes[0], torch.zeros(2))  # live codes stay
        if isinstance(vq, EMAVectorQuantizer):  # its running averages restart at the new codes
            assert torch.equal(vq.embedding_avg[1:3], codes[1:3]) and vq.cluster_size[1:3].tolist() == [1.0, 1.0]
        assert restart_dead_codes(vq, torch.ones(4, dtype=torch.long), z) == 0
