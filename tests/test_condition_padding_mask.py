"""The cross attention's text padding mask (``diffusion_config.params.condition_padding_mask``) and short
``context_length`` text models: the network ignores padded positions only with the mask, the cached keys/values
path equals the uncached one, masks follow the condition through training, guided and composed sampling (parts
then null), and a 16-token model trains and samples end to end through ``train.py`` and the notebook API."""

from __future__ import annotations

import copy

import pytest
import torch

from _app_parts import TINY_CONFIG, working_directory
from vqdiff.inference.loading import build_model, prepare_config
from vqdiff.modeling.diffusion.condition_input import padding_mask_from_tokens, training_condition
from vqdiff.modeling.diffusion.sampling import sample_tokens
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions
from vqdiff.modeling.diffusion.validation_bound import negative_elbo
from vqdiff.modeling.transformers.networks import Text2ImageTransformer
from vqdiff.utils.config import ConfigError, load_yaml_config, save_yaml_config
from vqdiff.utils.tiny_parts import write_tiny_parts

SOT, EOT = 49406, 49407


def tiny_config(mask: bool, length: int = 16, seq_len: int | None = None, learnable_cf: bool = True) -> dict:
    """configs/tiny_text_shapes.yaml with the padding mask on or off and ``length``-token captions."""
    cfg = copy.deepcopy(load_yaml_config(TINY_CONFIG))
    model = cfg["model"]["params"]
    diff = model["diffusion_config"]["params"]
    model["condition_codec_config"]["params"]["context_length"] = length
    diff["transformer_config"]["params"]["condition_seq_len"] = length if seq_len is None else seq_len
    diff["condition_padding_mask"] = mask
    model["learnable_cf"] = diff["learnable_cf"] = learnable_cf
    return cfg


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("padding_mask")
    write_tiny_parts(root)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with working_directory(root):
        yield root
    torch.set_num_threads(before)


def model(mask: bool, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(prepare_config(tiny_config(mask, **kw))).eval()


def padded_twice(m, captions):
    """The captions' token rows padded with 0 (the codec's) and with other ids below the end token."""
    tok = m.condition_codec.get_tokens(captions)
    zero, mask = tok["token"], tok["mask"]
    other = torch.where(mask, zero, torch.randint(1, 40000, zero.shape, generator=torch.Generator().manual_seed(1)))
    return zero, other, mask


def test_mask_ends_at_the_end_of_text_token():
    rows = torch.tensor([[SOT, 320, 1000, EOT, 0, 0], [SOT, EOT, 0, 0, 0, 0], [SOT, 5, 6, 7, 8, EOT],
                         [SOT, 9, EOT, 3, 2, 1]])
    expected = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]).bool()
    assert torch.equal(padding_mask_from_tokens(rows), expected)


def tiny_net(seed=0) -> Text2ImageTransformer:
    torch.manual_seed(seed)
    emb = {"target": "vqdiff.modeling.embeddings.dalle_mask_image_embedding.DalleMaskImageEmbedding",
           "params": {"num_embed": 9, "spatial_size": [4, 4], "embed_dim": 32, "trainable": True,
                      "pos_emb_type": "embedding"}}
    return Text2ImageTransformer(condition_seq_len=8, n_layer=2, n_embd=32, n_head=2, content_seq_len=16,
                                 content_spatial_size=[4, 4], condition_dim=24, diffusion_step=10,
                                 block_activate="GELU2", content_emb_config=emb).eval()


def test_network_ignores_padded_positions_only_with_the_mask_and_caches_the_same():
    net = tiny_net()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randint(0, 9, (3, 16), generator=g), torch.tensor([0, 4, 9])
    cond = torch.randn(3, 8, 24, generator=g)
    mask = torch.arange(8)[None] < torch.tensor([[2], [5], [8]])  # 2, 5 and 8 valid positions
    changed = torch.where(mask[..., None], cond, torch.randn(3, 8, 24, generator=g) * 3)
    with torch.no_grad():
        masked, masked_changed = net(x, cond, t, cond_mask=mask), net(x, changed, t, cond_mask=mask)
        plain, plain_changed = net(x, cond, t), net(x, changed, t)
        cached = net(x, cond, t, cond_cache=net.precompute_condition(cond), cond_mask=mask)
        all_valid = net(x, cond, t, cond_mask=torch.ones(3, 8, dtype=torch.bool))
        valid_changed = net(x, cond + 0.5 * mask[..., None], t, cond_mask=mask)
    torch.testing.assert_close(masked_changed, masked, rtol=0, atol=1e-6)
    assert (plain_changed - plain)[:2].abs().amax() > 1e-3  # without the mask the padding is read
    assert torch.equal(plain_changed[2], plain[2])  # (row 2 has no padding)
    assert torch.equal(cached, masked)
    torch.testing.assert_close(all_valid, plain, rtol=0, atol=1e-6)
    assert (valid_changed - masked).abs().amax() > 1e-3  # the caption itself still counts
    with pytest.raises(ValueError, match=r"condition mask has shape \(3, 7\)"):
        net(x, cond, t, cond_mask=mask[:, :7])


def test_training_loss_ignores_padding_only_with_the_mask(parts):
    captions = ["a red circle", "a blue square at the top", ""]
    for on in (True, False):
        m = model(on)
        zero, other, mask = padded_twice(m, captions)
        content = {"content_token": torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(2))}
        losses = []
        for tokens in (zero, other):
            inp = {**content, "condition_token": tokens, "condition_mask": mask}
            out = m.transformer(inp, return_loss=True, generator=torch.Generator().manual_seed(3))
            losses.append(out["loss"].detach())
        if on:
            assert torch.equal(losses[0], losses[1])
            bounds = []
            for tokens in (zero, other):
                emb, cond_mask = training_condition(m.transformer, {**content, "condition_token": tokens,
                                                                    "condition_mask": mask})
                bounds.append(negative_elbo(m.transformer, content["content_token"], emb,
                                            torch.Generator().manual_seed(4), cond_mask))
            assert torch.equal(bounds[0], bounds[1])  # the validation bound too
            assert torch.equal(cond_mask[:2], mask[:2]) and bool(cond_mask[2].all())  # '' = the learned null
        else:
            assert abs(float(losses[0] - losses[1])) > 1e-6


def test_sampling_derives_the_mask_from_the_tokens(parts):
    for on in (True, False):
        m = model(on)
        zero, other, _ = padded_twice(m, ["a red circle", "a green triangle on the left"])
        first = []
        for tokens in (zero, other):
            steps = []
            options = SamplingOptions(guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
            sample_tokens(m.transformer, options, condition_token=tokens,
                          callback=lambda info: steps.append(info["log_x0"]))
            first.append(steps[0])
        if on:
            assert torch.equal(first[0], first[1])
        else:
            assert (first[0] - first[1]).abs().amax() > 1e-4


def record_masks(monkeypatch, net):
    seen = []
    forward = net.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("cond_mask"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(net, "forward", spy)
    return seen


def test_guided_masks_stack_parts_then_null(parts, monkeypatch):
    m = model(True, learnable_cf=False)  # the null branch is '' through the tower: its own padding
    seen = record_masks(monkeypatch, m.transformer.transformer)
    from vqdiff.modeling.diffusion.prompt_parts import PromptPart

    m.generate_content(filter_ratio=0, replicate=2, sample_type="top0.85r,fast9",
                       prompt_parts=[PromptPart("a red shape", 3.0), PromptPart("a circle at the top left", 2.0)])
    lengths = seen[0].sum(1).tolist()  # (P + 1) B rows: part 1 x2, part 2 x2, null x2
    tok = m.condition_codec.get_tokens(["a red shape", "a circle at the top left", ""])["mask"].sum(1).tolist()
    assert lengths == [tok[0]] * 2 + [tok[1]] * 2 + [tok[2]] * 2 and tok[2] == 2
    seen.clear()
    m.generate_content(batch={"text": ["a cat"]}, filter_ratio=0, replicate=2, sample_type="top0.85r,fast9",
                       guidance_scale=2.0, negative_prompt=["", "a dog on grass"])
    neg = m.condition_codec.get_tokens(["a cat", "a dog on grass"])["mask"].sum(1).tolist()
    assert seen[0].sum(1).tolist() == [neg[0], neg[0], 2, neg[1]]


def test_option_off_passes_no_mask(parts, monkeypatch):
    m = model(False, length=77)
    seen = record_masks(monkeypatch, m.transformer.transformer)
    m.generate_content(batch={"text": ["a cat"]}, filter_ratio=0, replicate=2, sample_type="top0.85r,fast9",
                       guidance_scale=2.0)
    assert seen and all(s is None for s in seen)


def test_lengths_and_tokens_are_checked_at_build(parts):
    with pytest.raises(ConfigError, match=r"condition_codec_config\.params\.context_length is 16 but "
                                          r".*transformer_config\.params\.condition_seq_len is 77"):
        model(False, length=16, seq_len=77)
    with pytest.raises(ConfigError, match="text tower .* has 77 positions"):
        model(False, length=80)
    cfg = tiny_config(True)
    cfg["model"]["params"]["condition_codec_config"]["params"]["add_start_and_end"] = False
    with pytest.raises(ConfigError, match="condition_padding_mask is True but .*add_start_and_end"):
        build_model(prepare_config(cfg))
    cfg = tiny_config(True)
    cfg["model"]["params"]["condition_codec_config"]["params"]["pad_value"] = 49407
    with pytest.raises(ConfigError, match="pad_value 49407"):
        build_model(prepare_config(cfg))


def test_diffusers_export_refuses_a_masked_model(parts):
    from vqdiff.inference.diffusers_export import DiffusersExportError, transformer_to_diffusers

    with pytest.raises(DiffusersExportError, match="condition_padding_mask"):
        transformer_to_diffusers(model(True))


def test_short_masked_model_trains_and_samples_through_the_notebook_api(parts, tmp_path, monkeypatch):
    import train
    from vqdiff.inference.api import VQ_Diffusion

    cfg = tiny_config(True)
    cfg["solver"]["max_epochs"] = 1  # 16 images, batch 4: four steps
    path = tmp_path / "masked16.yaml"
    save_yaml_config(cfg, path)
    train.main(["--config_file", str(path), "--name", "m16", "--output", str(tmp_path / "OUT"), "--seed", "0",
                "--no_progress_bar"])
    ckpt = tmp_path / "OUT" / "m16" / "checkpoint" / "last.pth"
    engine = VQ_Diffusion(config=str(path), path=str(ckpt), device="cpu")
    d = engine.model.transformer
    assert d.condition_padding_mask and d.empty_text_embed.shape[0] == 16
    seen = record_masks(monkeypatch, d.transformer)
    kw = dict(truncation_rate=0.85, save_root=None, batch_size=2, fast=5, guidance_scale=3.0, seed=0)
    plain = engine.inference_generate_sample_with_condition("a red circle at the top left", **kw)
    plain_masks = seen[:]
    composed = engine.inference_generate_sample_with_condition("a red shape:3 AND a circle", **kw)
    assert len(plain) == len(composed) == 2 and plain[0].size == composed[0].size == (16, 16)
    n = int(engine.model.condition_codec.get_tokens(["a red circle at the top left"])["mask"].sum())
    assert plain_masks[0].sum(1).tolist() == [n, n, 16, 16]  # caption rows, then the learned null rows
    assert seen[-1].shape == (6, 16) and bool(seen[-1][4:].all())
