"""CLIP text transformer, its weight loaders, and CLIPTextEmbedding."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from vqdiff.modeling.embeddings.clip_model import (
    CLIPTextConfig,
    CLIPTextTransformer,
    extract_text_state_dict,
    infer_text_config,
    is_torchscript_archive,
    load_clip_state_dict,
    read_torchscript_tensors,
)
from vqdiff.modeling.embeddings.clip_text_embedding import CLIPTextEmbedding
from vqdiff.utils.config import instantiate_from_config, load_yaml_config

CFG = CLIPTextConfig(vocab_size=300, context_length=77, width=128, layers=2, heads=2, embed_dim=24)
PREFIX = "transformer.condition_emb."


def _random_clip() -> CLIPTextTransformer:
    model = CLIPTextTransformer(CFG)
    with torch.no_grad():  # non-trivial LayerNorm affine and biases, so every weight matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


class _FakeReleasedCLIP(nn.Module):
    """A module laid out as OpenAI's CLIP: text parts at top level, a visual tower, logit_scale,
    attention masks as tensor attributes, and fp16 linear/attention weights (as the release)."""

    def __init__(self, text: CLIPTextTransformer):
        super().__init__()
        self.visual = nn.Sequential(nn.Conv2d(3, 4, 2), nn.Linear(4, 4))
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))
        self.register_buffer("attn_mask", torch.full((77, 77), float("-inf")).triu(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(x).sum() * self.logit_scale


def _to_release_dtypes(sd: dict) -> dict:
    """fp16 for linear and attention weights and the projection, fp32 elsewhere (OpenAI's convert_weights)."""
    half = ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj", "text_projection", "visual.")
    return {k: (v.half() if any(h in k for h in half) else v) for k, v in sd.items()}


@pytest.fixture
def clip_files(tmp_path: Path):
    """The same random tiny CLIP as a full state dict file and as a TorchScript archive, fp16 weights."""
    text = _random_clip()
    full = _FakeReleasedCLIP(text)
    full.load_state_dict(_to_release_dtypes(full.state_dict()), assign=True)
    sd_path = tmp_path / "clip_state_dict.pt"
    torch.save(full.state_dict(), sd_path)
    ts_path = tmp_path / "clip_torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(full, torch.zeros(1, 77, dtype=torch.long)).save(str(ts_path))
    return sd_path, ts_path, full


def _tokens(b: int = 3, length: int = 77) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, CFG.vocab_size - 2, (b, length), generator=g)
    for i, n in enumerate([5, 20, 77][:b]):  # SOT ... EOT then padding 0, the EOT is each row's max id
        ids[i, 0] = CFG.vocab_size - 2
        ids[i, n - 1] = CFG.vocab_size - 1
        ids[i, n:] = 0
    return ids


def _reference_features(sd: dict, tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """CLIP's forward written independently with torch's nn.MultiheadAttention and an explicit -inf mask."""
    sd = {k: v.float() for k, v in sd.items()}
    width = sd["token_embedding.weight"].shape[1]
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    mask = torch.full((77, 77), float("-inf")).triu(1)
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        mha = nn.MultiheadAttention(width, heads, batch_first=True)
        mha.load_state_dict({k[len(p + "attn."):]: v for k, v in sd.items() if k.startswith(p + "attn.")})
        h = nn.functional.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = nn.functional.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = nn.functional.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)
        x = x + nn.functional.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    return nn.functional.layer_norm(x, (width,), sd["ln_final.weight"], sd["ln_final.bias"])


def _embedding(path: Path, **kw) -> CLIPTextEmbedding:
    params = dict(clip_name="ViT-B/32", num_embed=CFG.vocab_size, normalize=False, pick_last_embedding=False,
                  embed_dim=512, clip_path=str(path))
    params.update(kw)
    return CLIPTextEmbedding(**params)


# ---------------------------------------------------------------------------------------------
# architecture and loaders
# ---------------------------------------------------------------------------------------------
def test_state_dict_keys_are_exactly_clip_text_keys():
    keys = set(CLIPTextTransformer(CFG).state_dict())
    expected = {"token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection"}
    for i in range(CFG.layers):
        for name in ("attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
                     "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
                     "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias"):
            expected.add(f"transformer.resblocks.{i}.{name}")
    assert keys == expected


def test_matches_an_independent_multihead_attention_reference():
    model = _random_clip()
    tokens = _tokens()
    ours = model(tokens)
    ref = _reference_features(model.state_dict(), tokens, heads=CFG.heads)
    assert ours.shape == (3, 77, CFG.width)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_causal_mask_later_tokens_do_not_change_earlier_features():
    model = _random_clip()
    a = _tokens()
    b = a.clone()
    b[:, 40:] = (b[:, 40:] + 7) % CFG.vocab_size
    fa, fb = model(a), model(b)
    torch.testing.assert_close(fa[:, :40], fb[:, :40], rtol=0, atol=1e-6)
    assert not torch.allclose(fa[:, 40:], fb[:, 40:])


def test_infer_config_from_state_dict():
    sd = CLIPTextTransformer(CLIPTextConfig(49408, 77, 512, 3, 8, 512)).state_dict()
    assert infer_text_config(sd) == CLIPTextConfig(49408, 77, 512, 3, 8, 512)  # heads = width // 64
    assert infer_text_config(sd, heads=4).heads == 4
    sd.pop("text_projection")
    with pytest.raises(KeyError, match="text_projection"):
        infer_text_config(sd)


def test_torchscript_and_state_dict_give_identical_embeddings(clip_files):
    sd_path, ts_path, full = clip_files
    assert is_torchscript_archive(ts_path) and not is_torchscript_archive(sd_path)
    from_sd, from_ts = load_clip_state_dict(sd_path), load_clip_state_dict(ts_path)
    assert set(from_sd) == set(from_ts) == set(CLIPTextTransformer(CFG).state_dict())  # no visual, no logit_scale
    for k in from_sd:
        assert from_sd[k].dtype == from_ts[k].dtype and torch.equal(from_sd[k], from_ts[k]), k
    assert from_ts["transformer.resblocks.0.attn.in_proj_weight"].dtype == torch.float16
    e_sd, e_ts = _embedding(sd_path), _embedding(ts_path)
    tokens = _tokens()
    out_sd, out_ts = e_sd(tokens), e_ts(tokens)
    assert out_sd.dtype == torch.float32 and all(p.dtype == torch.float32 for p in e_ts.parameters())
    assert torch.equal(out_sd, out_ts)
    ref = _reference_features({k: v for k, v in full.state_dict().items() if not k.startswith("visual")}, tokens, CFG.heads)
    torch.testing.assert_close(out_sd, ref, rtol=1e-5, atol=1e-5)


def test_safe_archive_reader_agrees_with_torch_jit_load(clip_files):
    _, ts_path, _ = clip_files
    safe = read_torchscript_tensors(ts_path, allow_jit_fallback=False)
    jit = torch.jit.load(str(ts_path), map_location="cpu").state_dict()
    assert set(jit) <= set(safe)
    for k, v in jit.items():
        assert safe[k].dtype == v.dtype and torch.equal(safe[k], v), k


def _unknown_archive(path) -> None:
    """A zip laid out as torch.jit.save writes (so it is taken for a TorchScript archive) whose pickle names
    a class the safe reader does not accept."""
    import collections
    import pickle
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/constants.pkl", pickle.dumps(()))
        zf.writestr("archive/data.pkl", pickle.dumps(collections.Counter(a=1)))


def test_an_archive_the_safe_reader_does_not_know_is_refused_unless_the_jit_fallback_is_opted_in(tmp_path,
                                                                                                monkeypatch):
    from vqdiff.modeling.embeddings.clip_model import JIT_CLIP_ENV, load_clip_state_dict

    path = tmp_path / "odd_clip.pt"
    _unknown_archive(path)
    assert is_torchscript_archive(path)
    calls = []
    monkeypatch.setattr(torch.jit, "load", lambda p, map_location=None: calls.append(p) or CLIPTextTransformer(CFG))
    monkeypatch.delenv(JIT_CLIP_ENV, raising=False)
    for read in (read_torchscript_tensors, load_clip_state_dict):
        with pytest.raises(ValueError, match=r"odd_clip.pt: cannot read the TorchScript archive safely.*"
                                             r"collections.Counter.*allow_jit_fallback=True"):
            read(path)
    assert calls == []  # never silently compiled
    with pytest.warns(UserWarning, match="torch.jit.load"):
        assert "token_embedding.weight" in read_torchscript_tensors(path, allow_jit_fallback=True)
    monkeypatch.setenv(JIT_CLIP_ENV, str(path))
    with pytest.warns(UserWarning, match="allowed for this file"):
        read_torchscript_tensors(path)
    assert calls == [str(path)] * 2


def test_text_keys_from_a_prefixed_checkpoint():
    sd = {PREFIX + k: v for k, v in CLIPTextTransformer(CFG).state_dict().items()}
    sd["transformer.transformer.blocks.0.attn1.key.weight"] = torch.zeros(1)
    sd[PREFIX + "transformer.resblocks.0.attn_mask"] = torch.zeros(1)
    out = extract_text_state_dict(sd, prefix=PREFIX)
    assert set(out) == set(CLIPTextTransformer(CFG).state_dict())


def test_missing_weight_file_names_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="OUTPUT/pretrained_model/ViT-B-32.pt"):
        CLIPTextEmbedding(clip_name="ViT-B/32", embed_dim=512)
    with pytest.raises(FileNotFoundError, match="elsewhere.pt"):
        CLIPTextEmbedding(clip_path=str(tmp_path / "elsewhere.pt"))


def test_default_location_relative_to_working_directory(clip_files, tmp_path, monkeypatch):
    sd_path, _, _ = clip_files
    target = tmp_path / "run" / "OUTPUT" / "pretrained_model" / "ViT-B-32.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(sd_path.read_bytes())
    monkeypatch.chdir(tmp_path / "run")
    emb = CLIPTextEmbedding(clip_name="ViT-B/32", num_embed=CFG.vocab_size, embed_dim=512)
    assert emb.embed_dim == CFG.embed_dim
    with pytest.raises(ValueError, match="num_embed=49408"):
        CLIPTextEmbedding(clip_name="ViT-B/32", num_embed=49408)


def test_mismatched_weights_are_refused(clip_files):
    sd_path, _, _ = clip_files
    model = CLIPTextTransformer(CLIPTextConfig(300, 77, 128, 3, 2, 24))
    with pytest.raises(KeyError, match="resblocks.2"):
        model.load_text_weights(load_clip_state_dict(sd_path))


# ---------------------------------------------------------------------------------------------
# CLIPTextEmbedding behaviour
# ---------------------------------------------------------------------------------------------
def test_normalize(clip_files):
    sd_path, _, _ = clip_files
    tokens = _tokens()
    raw = _embedding(sd_path, normalize=False)(tokens)
    unit = _embedding(sd_path, normalize=True)(tokens)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(3, 77))
    torch.testing.assert_close(unit, raw / raw.norm(dim=-1, keepdim=True))


def test_pick_last_embedding_and_keep_seq_len_dim(clip_files):
    sd_path, _, _ = clip_files
    tokens = _tokens()
    emb = _embedding(sd_path, pick_last_embedding=True)
    last = emb(tokens)
    assert last.shape == (3, CFG.embed_dim)
    feats = CLIPTextTransformer.forward(emb, tokens)
    eot = torch.tensor([4, 19, 76])  # where each row's EOT (its largest id) sits
    torch.testing.assert_close(last, feats[torch.arange(3), eot] @ emb.text_projection)
    kept = _embedding(sd_path, pick_last_embedding=True, keep_seq_len_dim=True)(tokens)
    assert kept.shape == (3, 1, CFG.embed_dim)
    torch.testing.assert_close(kept[:, 0], last)


def test_additional_last_embedding_and_1024_concatenation(clip_files):
    sd_path, _, _ = clip_files
    tokens = _tokens()
    base = _embedding(sd_path, normalize=False)(tokens)
    feats, last = _embedding(sd_path, normalize=True, additional_last_embedding=True, keep_seq_len_dim=True)(tokens)
    torch.testing.assert_close(feats, base / base.norm(dim=-1, keepdim=True))
    assert last.shape == (3, 1, CFG.embed_dim)
    torch.testing.assert_close(last[:, 0], _embedding(sd_path, pick_last_embedding=True)(tokens))
    doubled = _embedding(sd_path, embed_dim=1024)
    assert doubled.embed_dim == 2 * CFG.embed_dim
    out = doubled(tokens)
    assert out.shape == (3, 77, 2 * CFG.width)
    torch.testing.assert_close(out, torch.cat((base, base), dim=-1))


def test_negative_ids_count_as_zero_and_input_is_kept(clip_files):
    sd_path, _, _ = clip_files
    emb = _embedding(sd_path)
    tokens = _tokens()
    neg = tokens.clone()
    neg[0, 10:] = -1
    zero = neg.clamp_min(0)
    assert torch.equal(emb(neg), emb(zero))
    assert (neg[0, 10:] == -1).all()  # the caller's tensor is not modified
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        emb(tokens[0])


def test_frozen_no_gradient(clip_files):
    sd_path, _, _ = clip_files
    emb = _embedding(sd_path)
    assert all(not p.requires_grad for p in emb.parameters())
    emb.train()
    assert not emb.training and not any(m.training for m in emb.modules())
    head = nn.Linear(CFG.width, 1)
    out = emb(_tokens())
    assert not out.requires_grad
    head(out).sum().backward()
    assert head.weight.grad is not None
    assert all(p.grad is None for p in emb.parameters())


# ---------------------------------------------------------------------------------------------
# the official tiny model
# ---------------------------------------------------------------------------------------------
def _official_embedding() -> CLIPTextEmbedding:
    cfg = load_yaml_config("config_tiny_text.yaml")
    return instantiate_from_config(cfg["model"]["params"]["diffusion_config"]["params"]["condition_emb_config"])


def test_official_fixture_cond_emb(official_tiny_text):
    emb = _official_embedding()
    expected = torch.load("expected.pt", map_location="cpu", weights_only=True)
    out = emb(expected["condition_token"])
    ref = expected["cond_emb"]
    assert out.shape == ref.shape == (2, 77, 64) and out.dtype == torch.float32
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 2e-3, rel


def test_official_checkpoint_clip_weights_load_and_cast(official_tiny_text):
    emb = _official_embedding()
    model_sd = torch.load("tiny_text_official.pth", map_location="cpu", weights_only=True)["model"]
    clip_sd = {k[len(PREFIX):]: v for k, v in model_sd.items() if k.startswith(PREFIX)}
    assert any(v.dtype == torch.float16 for v in clip_sd.values())
    assert set(emb.state_dict()) == set(clip_sd)
    result = emb.load_state_dict(clip_sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(p.dtype == torch.float32 for p in emb.parameters())
    torch.testing.assert_close(emb.text_projection, clip_sd["text_projection"].float(), rtol=0, atol=0)
    expected = torch.load("expected.pt", map_location="cpu", weights_only=True)
    out = emb(expected["condition_token"])
    assert ((out - expected["cond_emb"]).norm() / expected["cond_emb"].norm()).item() < 2e-3


def test_archive_the_safe_reader_cannot_parse_falls_back_or_fails(clip_files, monkeypatch):
    from vqdiff.modeling.embeddings import clip_model

    _, ts_path, _ = clip_files
    safe = read_torchscript_tensors(ts_path, allow_jit_fallback=False)

    def refuse(self, module, name):
        raise clip_model._UnsupportedArchive(f"pretend '{module}.{name}' is unknown")

    monkeypatch.setattr(clip_model._ArchiveUnpickler, "find_class", refuse)
    with pytest.raises(ValueError, match="pretend"):
        read_torchscript_tensors(ts_path, allow_jit_fallback=False)
    with pytest.warns(UserWarning, match="torch.jit.load"):
        via_jit = read_torchscript_tensors(ts_path, allow_jit_fallback=True)
    for k, v in via_jit.items():
        assert torch.equal(v, safe[k]), k


def test_a_file_without_clip_weights_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(KeyError, match="token_embedding.weight"):
        load_clip_state_dict(path)


def test_tokenize_with_clip_embedding(official_tiny_text):
    from vqdiff.modeling.codecs.text.tokenize import Tokenize

    cfg = load_yaml_config("config_tiny_text.yaml")
    emb_cfg = cfg["model"]["params"]["diffusion_config"]["params"]["condition_emb_config"]
    codec = Tokenize(context_length=77, add_start_and_end=True, clip_embedding=True, condition_emb_config=emb_cfg)
    captions = ["a red circle at the top left", "Two dogs playing in the snow, 4K photo!"]
    out = codec.get_tokens(captions)
    expected = torch.load("expected.pt", map_location="cpu", weights_only=True)
    assert torch.equal(out["token"], expected["condition_token"])
    assert torch.equal(out["embed_token"], _official_embedding()(out["token"]))
