"""Export to a diffusers ``VQDiffusionPipeline`` folder (issue 17): the official ITHQ fixture and a tiny text
model load with ``from_pretrained`` with no missing keys, the pipeline's prompt embedding and transformer
equal ours, it samples, the tokenizer files give our ids, and what diffusers cannot express is refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import Transformer2DModel, VQDiffusionPipeline, VQModel
from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import LearnedClassifierFreeSamplingEmbeddings
from transformers import CLIPTextModel, CLIPTokenizer

from conftest import fixtures_dir
from inference_VQ_Diffusion import VQ_Diffusion
from test_inference import TINY_CFG, TINY_CKPT, _one_thread, official_layout_checkpoint, tiny_official  # noqa: F401
from vqdiff.inference.diffusers_export import DiffusersExportError, export_diffusers
from vqdiff.inference.diffusers_import import load_diffusers
from vqdiff.inference.diffusers_tokenizer import VocabFileTokenizer, write_clip_tokenizer
from vqdiff.modeling.codecs.text.bpe import SimpleTokenizer
from vqdiff.modeling.codecs.text.tokenize import tokenize
from vqdiff.modeling.diffusion.log_ops import index_to_log_onehot
from vqdiff.utils.config import load_yaml_config, save_yaml_config

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "a red circle at the top left",
    "Two dogs playing in the snow, 4K photo!",  # '!' is the official pad id 0: must stay text
    "",
    "Café naïve — résumé «quotes» 日本語 🐶!!  tabs\tand   spaces",
    "it's what they'd've done... (really?) #tag @user 3.14 !",
    " ".join(["word"] * 100),  # 102 tokens: cut to 77 with the end token kept
]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load_checked(folder: Path) -> VQDiffusionPipeline:
    """The pipeline, after checking that each stored component loads with no missing/unexpected keys."""
    for cls, sub in ((Transformer2DModel, "transformer"), (VQModel, "vqvae"), (CLIPTextModel, "text_encoder")):
        _, info = cls.from_pretrained(folder, subfolder=sub, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (sub, info)
        assert not info.get("mismatched_keys"), (sub, info)
    _, info = LearnedClassifierFreeSamplingEmbeddings.from_pretrained(
        folder, subfolder="learned_classifier_free_sampling_embeddings", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return VQDiffusionPipeline.from_pretrained(folder)


@pytest.fixture
def official_tiny_ithq(monkeypatch) -> Path:
    """The official ITHQ fixture (PatchVQGAN, 1-layer CLIP 512 wide, learned null text) as working directory."""
    root = fixtures_dir("official_tiny_ithq")
    monkeypatch.chdir(root)  # its config names files relative to it; nothing is written there
    return root


# --------------------------------------------------------------------------------------------------
# the official ITHQ fixture: the "done when"
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_official_ithq_fixture_exports_loads_matches_and_samples(official_tiny_ithq, tmp_path):
    ex = torch.load("expected.pt", weights_only=False)
    out = tmp_path / "ithq-diffusers"
    assert _script("export_diffusers").main(
        ["--config", "config_tiny_ithq.yaml", "--ckpt", "tiny_ithq_official.pth", "--out", str(out)]) == 0
    pipe = _load_checked(out)
    assert pipe.learned_classifier_free_sampling_embeddings.learnable

    # prompt embedding: official CLIP ran in fp16 -> 2e-3
    emb = pipe._encode_prompt(ex["captions"], 1, False)
    torch.testing.assert_close(emb, ex["cond_emb"], rtol=0, atol=2e-3)

    # log p(x0 | x_t) of the exported transformer, one t per call (diffusers' AdaLN takes one timestep)
    K = pipe.transformer.config.num_vector_embeds - 1
    for i in range(ex["x_t"].shape[0]):
        theirs = pipe.transformer(ex["x_t"][i:i + 1], encoder_hidden_states=ex["cond_emb"][i:i + 1],
                                  timestep=ex["t"][i]).sample.clamp(min=-70)
        torch.testing.assert_close(theirs, ex["predict_start"][i:i + 1, :K], rtol=0, atol=1e-4)

    images = pipe(ex["captions"][:2], num_inference_steps=10, truncation_rate=0.86, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all() and images.std() > 0

    # and back: the imported model computes the official predict_start again
    model = load_diffusers(out)
    log_x_t = index_to_log_onehot(ex["x_t"], K + 1)
    torch.testing.assert_close(model.transformer.predict_start(log_x_t, ex["cond_emb"], ex["t"]),
                               ex["predict_start"], rtol=0, atol=1e-4)
    tok = model.condition_codec.get_tokens(ex["captions"])
    assert torch.equal(tok["token"], ex["condition_token"]) and torch.equal(tok["mask"], ex["condition_mask"])
    torch.testing.assert_close(model.transformer.condition_emb(tok["token"]), ex["cond_emb"], rtol=0, atol=2e-3)
    torch.testing.assert_close(model.content_codec.decode(ex["content_token"]), ex["decoded"], rtol=0, atol=1e-2)
    assert torch.equal(model.content_codec.get_tokens(ex["images"])["token"], ex["content_token"])


# --------------------------------------------------------------------------------------------------
# a tiny text model with a tiny CLIP (64 wide), round trip
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_tiny_text_model_round_trip(official_tiny_text):
    eng = VQ_Diffusion(TINY_CFG, TINY_CKPT, device="cpu")
    out = official_tiny_text / "hf"
    export_diffusers(eng.model, out, allow_inexact_encoder=True)  # its codec is a Gumbel one
    pipe = _load_checked(out)
    assert pipe.transformer.config.num_vector_embeds == 41 and pipe.transformer.config.sample_size == 8
    assert not pipe.learned_classifier_free_sampling_embeddings.learnable

    diff = eng.model.transformer
    K = diff.num_classes - 1
    g = torch.Generator().manual_seed(0)
    x_t = torch.randint(0, K + 1, (2, 64), generator=g)
    texts = CAPTIONS[:2]
    cond = diff.condition_emb(eng.model.condition_codec.get_tokens(texts)["token"])
    torch.testing.assert_close(pipe._encode_prompt(texts, 1, False), cond, rtol=0, atol=1e-5)
    for step in (3, 77):
        ours = diff.predict_start_index(x_t, cond, torch.full((2,), step))[:, :K]
        theirs = pipe.transformer(x_t, encoder_hidden_states=cond, timestep=torch.tensor(step)).sample
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)

    tokens = torch.randint(0, K, (2, 64), generator=g)  # the codebook is exported remapped: compact ids decode
    vq = pipe.vqvae
    emb = vq.quantize.get_codebook_entry(tokens, shape=(2, 8, 8, vq.config.vq_embed_dim))
    theirs_img = (vq.decode(emb, force_not_quantize=True).sample.clamp(-1, 1) + 1) * 127.5
    torch.testing.assert_close(theirs_img, eng.model.content_codec.decode(tokens), rtol=0, atol=1e-2)

    images = pipe(texts[0], num_inference_steps=5, guidance_scale=3.0, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()

    back = load_diffusers(out)  # the same outputs from the imported model
    torch.testing.assert_close(back.transformer.predict_start_index(x_t, cond, torch.tensor([3, 50])),
                               diff.predict_start_index(x_t, cond, torch.tensor([3, 50])), rtol=0, atol=1e-5)
    assert torch.equal(back.condition_codec.get_tokens(texts)["token"], eng.model.condition_codec.get_tokens(texts)["token"])
    torch.testing.assert_close(back.content_codec.decode(tokens), eng.model.content_codec.decode(tokens), rtol=0, atol=1e-3)


def test_tokenizer_files_give_our_ids(tmp_path):
    ours = SimpleTokenizer()
    write_clip_tokenizer(ours, tmp_path / "tok", pad_id=0)
    theirs = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert theirs.pad_token_id == 0 and theirs.model_max_length == 77
    with pytest.warns(UserWarning, match="truncated"):
        expected = tokenize(CAPTIONS, ours, 77)["token"]
    got = theirs(CAPTIONS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(got, expected)
    assert expected[-1, -1] == ours.eot_token and (expected[1] == 256).any()  # '!</w>' kept as text
    # and read back by vqdiff: the same ids, and the configured padding
    back = VocabFileTokenizer(tmp_path / "tok")
    assert back.pad_token == 0 and back.model_max_length == 77
    assert all(back.encode(c) == ours.encode(c) for c in CAPTIONS)
    assert back.decode(ours.encode("two dogs!")) == ours.decode(ours.encode("two dogs!"))


# --------------------------------------------------------------------------------------------------
# learnable null text, and what diffusers cannot express
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_learnable_cf_model_exports_its_null_text(official_tiny_text):
    cfg = tiny_official(official_tiny_text, "configs__coco_tune.yaml")
    data = load_yaml_config(cfg)
    data["model"]["params"]["diffusion_config"]["params"]["transformer_config"]["params"]["mlp_hidden_times"] = 4
    save_yaml_config(data, cfg)  # diffusers' blocks have a 4 x n_embd MLP
    official_layout_checkpoint(cfg, official_tiny_text / "learn.pth")
    eng = VQ_Diffusion(str(cfg), "learn.pth", device="cpu")
    export_diffusers(eng.model, official_tiny_text / "hf", allow_inexact_encoder=True)
    pipe = VQDiffusionPipeline.from_pretrained(official_tiny_text / "hf")
    emb = pipe.learned_classifier_free_sampling_embeddings
    assert emb.learnable and emb.embeddings.shape == (77, 64)
    torch.testing.assert_close(emb.embeddings, eng.model.transformer.empty_text_embed.float())
    back = load_diffusers(official_tiny_text / "hf")
    assert back.transformer.learnable_cf and back.learnable_cf
    torch.testing.assert_close(back.transformer.empty_text_embed.float(), emb.embeddings)


def test_export_refuses_what_diffusers_cannot_express(official_tiny_text):
    eng = VQ_Diffusion(TINY_CFG, TINY_CKPT, device="cpu")
    with pytest.raises(DiffusersExportError, match="Gumbel encoder.*allow_inexact_encoder"):
        export_diffusers(eng.model, official_tiny_text / "hf")
    assert not (official_tiny_text / "hf").exists()  # nothing half-written
    cfg = tiny_official(official_tiny_text, "configs__coco.yaml")  # mlp_hidden_times 2
    official_layout_checkpoint(cfg, official_tiny_text / "t.pth")
    with pytest.raises(DiffusersExportError, match="mlp_hidden_times = 2"):
        export_diffusers(VQ_Diffusion(str(cfg), "t.pth", device="cpu").model, official_tiny_text / "hf",
                         allow_inexact_encoder=True)
    cfg = tiny_official(official_tiny_text, "config_imagenet.yaml")
    official_layout_checkpoint(cfg, official_tiny_text / "c.pth")
    with pytest.raises(DiffusersExportError, match="text-to-image"):
        export_diffusers(VQ_Diffusion(str(cfg), "c.pth", device="cpu").model, official_tiny_text / "hf")


def test_export_script_writes_every_component(official_tiny_text):
    assert _script("export_diffusers").main(["--config", TINY_CFG, "--ckpt", TINY_CKPT, "--out", "hf2",
                                             "--allow-inexact-encoder"]) == 0
    index = json.loads((official_tiny_text / "hf2" / "model_index.json").read_text())
    for sub in ("transformer", "vqvae", "text_encoder", "tokenizer", "scheduler",
                "learned_classifier_free_sampling_embeddings"):
        assert sub in index and (official_tiny_text / "hf2" / sub).is_dir(), sub
    with pytest.raises(DiffusersExportError, match="Gumbel"):
        _script("export_diffusers").main(["--config", TINY_CFG, "--ckpt", TINY_CKPT, "--out", "hf3"])
