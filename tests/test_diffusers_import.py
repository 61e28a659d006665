"""Import of a diffusers ``VQDiffusionPipeline`` folder (issue 17): a folder written by diffusers' own classes
(random tiny weights, transformers' CLIP tokenizer padding with the end token) becomes a vqdiff model whose
network, prompt embedding, codec and null text equal the pipeline's; it samples, trains, and loads through
the notebook API and the CLI; settings vqdiff cannot build are refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import Transformer2DModel, VQDiffusionPipeline, VQDiffusionScheduler, VQModel
from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import LearnedClassifierFreeSamplingEmbeddings
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from inference_VQ_Diffusion import VQ_Diffusion
from test_inference import _one_thread  # noqa: F401
from vqdiff.inference import load_diffusers  # the public name
from vqdiff.inference.diffusers_import import DiffusersImportError, diffusers_model_config
from vqdiff.inference.diffusers_keys import DiffusersKeyError
from vqdiff.inference.loading import build_model
from vqdiff.modeling.codecs.text.bpe import SimpleTokenizer
from vqdiff.utils.config import load_yaml_config, save_yaml_config

TEXTS = ["a red circle at the top left", "Two dogs playing in the snow, 4K photo!"]
K, SIDE, T, WIDTH = 16, 4, 10, 32


def _tiny_pipeline() -> VQDiffusionPipeline:
    torch.manual_seed(3)
    bpe = SimpleTokenizer()
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.__getitem__)
    tokenizer = CLIPTokenizer(vocab=dict(bpe.encoder), merges=list(merges), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=WIDTH, intermediate_size=4 * WIDTH,
                                                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                                hidden_act="quick_gelu"))
    transformer = Transformer2DModel(num_attention_heads=2, attention_head_dim=16, num_layers=1, cross_attention_dim=WIDTH,
                                     attention_bias=True, sample_size=SIDE, num_vector_embeds=K + 1,
                                     activation_fn="geglu-approximate", num_embeds_ada_norm=T, norm_type="ada_norm")
    with torch.no_grad():  # diffusers' init leaves the AdaLN projections near zero: make every weight matter
        for p in transformer.parameters():
            p.normal_(0, 0.3)
    vqvae = VQModel(down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                    up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(32, 64),
                    layers_per_block=1, latent_channels=4, num_vq_embeddings=K, vq_embed_dim=4, norm_num_groups=32)
    null = LearnedClassifierFreeSamplingEmbeddings(learnable=True, hidden_size=WIDTH, length=77)
    with torch.no_grad():
        null.embeddings.normal_()
    for module in (text_encoder, transformer, vqvae):
        module.eval()
    return VQDiffusionPipeline(vqvae=vqvae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                               scheduler=VQDiffusionScheduler(num_vec_classes=K + 1, num_train_timesteps=T),
                               learned_classifier_free_sampling_embeddings=null)


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory) -> tuple[Path, VQDiffusionPipeline]:
    folder = tmp_path_factory.mktemp("hf") / "tiny-vq-diffusion"
    pipe = _tiny_pipeline()
    pipe.save_pretrained(folder)
    return folder, pipe


@torch.no_grad()
def test_folder_made_by_diffusers_imports_with_equal_outputs(diffusers_folder):
    folder, pipe = diffusers_folder
    model = load_diffusers(folder)
    tok = model.condition_codec.get_tokens(TEXTS)["token"]
    assert (tok[0, 9:] == 49407).all()  # transformers' CLIP tokenizer pads with the end token: kept
    cond = model.transformer.condition_emb(tok)
    torch.testing.assert_close(cond, pipe._encode_prompt(TEXTS, 1, False), rtol=0, atol=1e-5)

    g = torch.Generator().manual_seed(0)
    x_t = torch.randint(0, K + 1, (2, SIDE * SIDE), generator=g)
    for step in (0, 7):
        ours = model.transformer.predict_start_index(x_t, cond, torch.full((2,), step))[:, :K]
        theirs = pipe.transformer(x_t, encoder_hidden_states=cond, timestep=torch.tensor(step)).sample
        assert ours.std() > 0.1  # not a flat distribution: the comparison can fail
        torch.testing.assert_close(ours, theirs.clamp(min=-70), rtol=0, atol=1e-4)

    tokens = torch.randint(0, K, (2, SIDE * SIDE), generator=g)
    emb = pipe.vqvae.quantize.get_codebook_entry(tokens, shape=(2, SIDE, SIDE, 4))
    theirs_img = ((pipe.vqvae.decode(emb, force_not_quantize=True).sample + 1) * 127.5).clamp(0, 255)
    torch.testing.assert_close(model.content_codec.decode(tokens), theirs_img, rtol=0, atol=1e-3)
    images = model.content_codec.decode(tokens)
    latents = pipe.vqvae.quant_conv(pipe.vqvae.encoder(images / 127.5 - 1))
    _, _, (_, _, idx) = pipe.vqvae.quantize(latents)
    assert torch.equal(model.content_codec.get_tokens(images)["token"], idx.view(2, -1))
    torch.testing.assert_close(model.transformer.empty_text_embed.float(),
                               pipe.learned_classifier_free_sampling_embeddings.embeddings)

    out = model.generate_content(batch={"text": TEXTS[:1]}, filter_ratio=0, replicate=2, sample_type="top0.9r",
                                 guidance_scale=3.0, generator=torch.Generator().manual_seed(1))
    assert out["content"].shape == (2, 3, 8, 8) and out["content_token"].max() < K


def test_imported_model_trains_and_its_config_rebuilds_it(diffusers_folder, tmp_path):
    folder, _ = diffusers_folder
    model = load_diffusers(folder).train()
    batch = {"text": TEXTS, "content_token": torch.randint(0, K, (2, SIDE * SIDE))}
    loss = model(batch)["loss"]
    loss.mean().backward()
    net_grads = [p.grad for p in model.transformer.transformer.parameters()]
    assert torch.isfinite(loss).all() and all(g is not None for g in net_grads)
    assert all(p.grad is None for p in model.transformer.condition_emb.parameters())  # CLIP stays frozen
    # the config is plain YAML: rebuilt from it, the model has the same codec, CLIP and tokenizer
    save_yaml_config(diffusers_model_config(folder), tmp_path / "config.yaml")
    rebuilt = build_model(load_yaml_config(tmp_path / "config.yaml"))
    ours, theirs = rebuilt.state_dict(), model.state_dict()
    for prefix in ("content_codec.", "transformer.condition_emb."):
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k.startswith(prefix))
    # config + a checkpoint of the (fine-tuned) model: the ordinary vqdiff loading path, every key matched
    torch.save({"model": model.state_dict(), "last_epoch": 0}, tmp_path / "tuned.pth")
    eng = VQ_Diffusion(str(tmp_path / "config.yaml"), str(tmp_path / "tuned.pth"), device="cpu")
    assert eng.load_report.ok, str(eng.load_report)
    assert all(torch.equal(v, theirs[k]) for k, v in eng.model.state_dict().items())


def test_notebook_api_and_cli_accept_a_diffusers_folder(diffusers_folder, tmp_path, capsys):
    folder, _ = diffusers_folder
    eng = VQ_Diffusion(str(folder), device="cpu")
    assert eng.load_report.ok and eng.model_name == folder.name
    images = eng.inference_generate_sample_with_condition(TEXTS[0], truncation_rate=0.9, save_root=None,
                                                          batch_size=2, guidance_scale=2.0, seed=4)
    assert len(images) == 2 and images[0].size == (8, 8)
    assert VQ_Diffusion(config=None, path=str(folder), device="cpu").model_name == folder.name  # as 'path' too

    from vqdiff.sample import main

    assert main(["--config", str(folder), "--text", "a dog", "-n", "1", "--out", str(tmp_path / "out"),
                 "--no-progress", "--seed", "0"]) == 0
    assert (tmp_path / "out" / "a dog" / "000000.png").is_file()
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "nothing.yaml"), "--text", "a dog"])
    assert "--ckpt is required" in capsys.readouterr().err


def test_unsupported_settings_and_stray_tensors_are_named(diffusers_folder, tmp_path):
    folder, _ = diffusers_folder
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    sched = bad / "scheduler" / "scheduler_config.json"
    cfg = json.loads(sched.read_text())
    sched.write_text(json.dumps({**cfg, "alpha_cum_end": 0.1}))
    with pytest.raises(DiffusersImportError, match="alpha_cum_end"):
        load_diffusers(bad)
    sched.write_text(json.dumps(cfg))

    trans = bad / "transformer" / "config.json"
    tcfg = json.loads(trans.read_text())
    trans.write_text(json.dumps({**tcfg, "norm_type": "ada_norm_zero"}))
    with pytest.raises(DiffusersImportError, match="norm_type"):
        load_diffusers(bad)
    trans.write_text(json.dumps(tcfg))

    from safetensors.torch import load_file, save_file

    weights = bad / "transformer" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    save_file({**sd, "transformer_blocks.0.extra.weight": torch.zeros(1)}, str(weights))
    with pytest.raises(DiffusersKeyError, match="transformer_blocks.0.extra.weight"):
        load_diffusers(bad)
    sd.pop("out.bias")
    save_file(sd, str(weights))
    with pytest.raises(DiffusersKeyError, match="'out.bias'"):
        load_diffusers(bad)
