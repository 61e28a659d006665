"""Denoising networks and the token/class embeddings: official keys and numbers, caches, checkpointing."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import fixtures_dir
from vqdiff.modeling.embeddings.class_embedding import ClassEmbedding
from vqdiff.modeling.embeddings.dalle_mask_image_embedding import DalleMaskImageEmbedding
from vqdiff.modeling.transformers.layers import AdaLayerNorm, CrossAttention, FullAttention, GELU2
from vqdiff.modeling.transformers.networks import (
    Condition2ImageTransformer,
    Text2ImageTransformer,
    UnCondition2ImageTransformer,
)
from vqdiff.utils.config import instantiate_from_config, load_yaml_config

PREFIX = "transformer.transformer."
EMB = "vqdiff.modeling.embeddings.dalle_mask_image_embedding.DalleMaskImageEmbedding"


def emb_cfg(K: int, D: int, spatial=(4, 4)) -> dict:
    return {"target": EMB, "params": {"num_embed": K, "spatial_size": spatial, "embed_dim": D}}


def tiny_text(**kw) -> Text2ImageTransformer:
    args = dict(
        condition_seq_len=7, n_layer=2, n_embd=32, n_head=4, content_seq_len=16, block_activate="GELU2",
        content_spatial_size=[4, 4], condition_dim=24, diffusion_step=10, content_emb_config=emb_cfg(12, 32),
    )
    args.update(kw)
    return Text2ImageTransformer(**args)


def tiny_class(**kw) -> Condition2ImageTransformer:
    args = dict(
        class_number=5, n_layer=2, n_embd=32, n_head=4, content_seq_len=16, block_activate="GELU2",
        content_spatial_size=[4, 4], diffusion_step=10, content_emb_config=emb_cfg(12, 32), mlp_type="conv_mlp",
    )
    args.update(kw)
    return Condition2ImageTransformer(**args)


def tiny_uncond(**kw) -> UnCondition2ImageTransformer:
    args = dict(
        n_layer=2, n_embd=32, n_head=4, content_seq_len=16, block_activate="GELU", content_spatial_size=[4, 4],
        diffusion_step=10, content_emb_config=emb_cfg(12, 32), mlp_type="conv_mlp",
    )
    args.update(kw)
    return UnCondition2ImageTransformer(**args)


def tokens(B: int = 3, N: int = 16, K: int = 12) -> torch.Tensor:
    x = torch.randint(0, K, (B, N))
    x[:, ::3] = K  # some [MASK]
    return x


def randomize(net: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial weights everywhere (the official init zeroes biases, which hides wiring bugs)."""
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net


# --------------------------------------------------------------------------------------------------
# the official tiny model
# --------------------------------------------------------------------------------------------------
def official_tiny():
    root = fixtures_dir("official_tiny_text")
    cfg = load_yaml_config(root / "config_tiny_text.yaml")
    d = cfg["model"]["params"]["diffusion_config"]["params"]
    net = instantiate_from_config(
        d["transformer_config"], diffusion_step=d["diffusion_step"], content_emb_config=d["content_emb_config"]
    )
    ckpt = torch.load(root / "tiny_text_official.pth", map_location="cpu", weights_only=True)
    keys = json.loads((root / "state_dict_keys.json").read_text())
    return root, net, ckpt, keys


def test_official_tiny_keys_shapes_and_strict_load():
    _, net, ckpt, keys = official_tiny()
    expected = [(k[len(PREFIX):], list(s)) for k, s in keys.items() if k.startswith(PREFIX)]
    ours = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    assert ours == expected  # same names, same shapes, same order
    sd = {k[len(PREFIX):]: v for k, v in ckpt["model"].items() if k.startswith(PREFIX)}
    net.load_state_dict(sd, strict=True)
    assert torch.equal(net.blocks[0].attn2.mask, torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64))


def test_official_tiny_predict_start_matches_expected():
    """log p(x0|x_t) of the official code (EMA weights) from our network, as the official predict_start."""
    root, net, ckpt, _ = official_tiny()
    exp = torch.load(root / "expected.pt", map_location="cpu", weights_only=False)
    ema = {k[len("transformer."):]: v for k, v in ckpt["ema"].items() if k.startswith("transformer.")}
    net.load_state_dict(ema, strict=True)
    net.eval()
    with torch.no_grad():
        logits = net(exp["x_t"], exp["cond_emb"], exp["t"])
    B, K, N = logits.shape
    assert (B, K, N) == (2, 40, 64)
    log_p = F.log_softmax(logits.double(), dim=1).float()
    log_p = torch.cat([log_p, torch.full((B, 1, N), -70.0)], dim=1).clamp(-70, 0)
    torch.testing.assert_close(log_p, exp["predict_start"], rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# key layouts of the class-conditional and unconditional networks (OFFICIAL_KEYS.md section 2)
# --------------------------------------------------------------------------------------------------
def test_condition2image_keys_and_shapes():
    net = tiny_class(class_number=1001)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    D, h = 32, 4
    assert shapes["content_emb.emb.weight"] == (13, D)
    assert shapes["content_emb.height_emb.weight"] == (4, D)
    b = "blocks.1."
    assert shapes[b + "ln1.emb.weight"] == (10, D)
    assert shapes[b + "ln1.linear.weight"] == (2 * D, D)
    assert shapes[b + "ln2.emb.weight"] == (1001, D)
    assert shapes[b + "ln2.linear.bias"] == (2 * D,)
    for name in ("key", "query", "value", "proj"):
        assert shapes[b + f"attn.{name}.weight"] == (D, D)
    assert shapes[b + "mlp.conv1.weight"] == (h * D, D, 3, 3)
    assert shapes[b + "mlp.conv2.weight"] == (D, h * D, 3, 3)
    assert shapes["to_logits.0.weight"] == (D,) and shapes["to_logits.1.weight"] == (12, D)
    assert not any(("attn1" in k or "attn2" in k or "ln1_1" in k) for k in shapes)
    block_keys = sorted(k[len(b):] for k in shapes if k.startswith(b))
    assert block_keys == sorted(
        ["ln1.emb.weight", "ln1.linear.weight", "ln1.linear.bias", "ln2.emb.weight", "ln2.linear.weight",
         "ln2.linear.bias", "mlp.conv1.weight", "mlp.conv1.bias", "mlp.conv2.weight", "mlp.conv2.bias"]
        + [f"attn.{n}.{p}" for n in ("key", "query", "value", "proj") for p in ("weight", "bias")]
    )
    fresh = tiny_class(class_number=1001)
    fresh.load_state_dict(net.state_dict(), strict=True)


def test_uncondition2image_keys():
    net = tiny_uncond()
    b = "blocks.0."
    block_keys = sorted(k[len(b):] for k in net.state_dict() if k.startswith(b))
    assert block_keys == sorted(
        ["ln1.emb.weight", "ln1.linear.weight", "ln1.linear.bias", "ln2.weight", "ln2.bias",
         "mlp.conv1.weight", "mlp.conv1.bias", "mlp.conv2.weight", "mlp.conv2.bias"]
        + [f"attn.{n}.{p}" for n in ("key", "query", "value", "proj") for p in ("weight", "bias")]
    )


def test_official_init():
    net = tiny_text()
    assert torch.count_nonzero(net.blocks[0].attn1.key.bias) == 0
    assert abs(net.blocks[0].mlp[0].weight.std().item() - 0.02) < 0.005
    assert torch.equal(net.to_logits[0].weight, torch.ones(32))
    assert abs(net.content_emb.emb.weight.std().item() - 0.02) < 0.005


# --------------------------------------------------------------------------------------------------
# forward: shapes, conditioning, caches
# --------------------------------------------------------------------------------------------------
def test_output_shapes_all_networks():
    x, t = tokens(), torch.tensor([0, 4, 9])
    assert tiny_text()(x, torch.randn(3, 7, 24), t).shape == (3, 12, 16)
    assert tiny_class()(x, torch.tensor([0.0, 3.0, 4.0]), t).shape == (3, 12, 16)  # float labels, as passed officially
    assert tiny_uncond()(x, None, t).shape == (3, 12, 16)
    assert tiny_text(timestep_type="adalayernorm_abs", mlp_type="conv_mlp")(x, torch.randn(3, 7, 24), t).shape == (3, 12, 16)


def test_abs_timestep_type_has_no_table():
    net = tiny_text(timestep_type="adalayernorm_abs")
    assert not any(k.endswith("ln1.emb.weight") for k in net.state_dict())


def test_condition_and_timestep_change_the_output():
    torch.manual_seed(1)
    net = randomize(tiny_text()).eval()
    x, c, t = tokens(), torch.randn(3, 7, 24), torch.tensor([1, 2, 3])
    base = net(x, c, t)
    assert not torch.allclose(base, net(x, torch.randn(3, 7, 24), t))
    assert not torch.allclose(base, net(x, c, torch.tensor([5, 6, 7])))
    # samples are independent: changing sample 0's condition leaves sample 1 unchanged
    c2 = c.clone()
    c2[0] += 1
    out2 = net(x, c2, t)
    torch.testing.assert_close(out2[1:], base[1:])


def test_cached_condition_equals_uncached():
    torch.manual_seed(2)
    x, t = tokens(), torch.tensor([0, 5, 9])
    text = randomize(tiny_text()).eval()
    c = torch.randn(3, 7, 24)
    cache = text.precompute_condition(c)
    assert len(cache) == 2 and cache[0][0].shape == (3, 4, 7, 8)
    assert torch.equal(text(x, c, t, cond_cache=cache), text(x, c, t))
    assert torch.equal(text(x, None, t, cond_cache=cache), text(x, c, t))  # the cache alone suffices
    cls = randomize(tiny_class()).eval()
    y = torch.tensor([0, 3, 5])
    ccache = cls.precompute_condition(y)
    assert torch.equal(cls(x, y, t, cond_cache=ccache), cls(x, y, t))
    assert tiny_uncond().precompute_condition(None) is None
    with pytest.raises(ValueError, match="cond_cache"):
        text(x, c, t, cond_cache=cache[:1])


# --------------------------------------------------------------------------------------------------
# AdaLayerNorm: the Improved VQ-Diffusion mean-row rule
# --------------------------------------------------------------------------------------------------
def test_adalayernorm_formula_and_mean_row_rule():
    torch.manual_seed(3)
    ln = AdaLayerNorm(8, 5, "adalayernorm")
    with torch.no_grad():
        ln.linear.weight.normal_()
        ln.linear.bias.normal_()
    x = torch.randn(3, 4, 8)

    def reference(e: torch.Tensor) -> torch.Tensor:
        s, b = ln.linear(F.silu(e)).unsqueeze(1).chunk(2, dim=2)
        return F.layer_norm(x, (8,)) * (1 + s) + b

    t = torch.tensor([0, 2, 4])
    torch.testing.assert_close(ln(x, t), reference(ln.emb.weight[t]))
    mean = ln.emb.weight.mean(0, keepdim=True).expand(3, -1)
    torch.testing.assert_close(ln(x, torch.tensor([5, 5, 5])), reference(mean))  # null class -> mean row
    torch.testing.assert_close(ln(x, torch.tensor([7, 9, 5])), reference(mean))
    # per sample in a mixed batch (a batched classifier-free-guidance call)
    mixed = ln(x, torch.tensor([1, 5, 3]))
    want = reference(torch.stack([ln.emb.weight[1], mean[0], ln.emb.weight[3]]))
    torch.testing.assert_close(mixed, want)


def test_class_network_null_label_uses_mean_class_embedding():
    torch.manual_seed(4)
    net = randomize(tiny_class(class_number=5)).eval()
    x, t = tokens(2), torch.tensor([3, 3])
    out_null = net(x, torch.tensor([5, 5]), t)
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for blk in twin.blocks:
            blk.ln2.emb.weight[0] = blk.ln2.emb.weight.mean(0)
    torch.testing.assert_close(out_null, twin(x, torch.tensor([0, 0]), t))


# --------------------------------------------------------------------------------------------------
# attention against the plain formula
# --------------------------------------------------------------------------------------------------
def plain_attention(q, k, v, n_head):
    B, N, D = q.shape
    d = D // n_head
    q, k, v = (z.view(B, -1, n_head, d).transpose(1, 2) for z in (q, k, v))
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
    return (w @ v).transpose(1, 2).reshape(B, N, D)


def test_full_attention_equals_softmax_reference():
    torch.manual_seed(5)
    att = randomize(FullAttention(16, 4, 10, 0.0, 0.0)).eval()
    x = torch.randn(2, 10, 16)
    want = att.proj(plain_attention(att.query(x), att.key(x), att.value(x), 4))
    torch.testing.assert_close(att(x), want, rtol=1e-5, atol=1e-5)


def test_cross_attention_equals_softmax_reference_and_has_mask_buffer():
    torch.manual_seed(6)
    att = randomize(CrossAttention(7, 16, 24, 4, 10, 0.0, 0.0)).eval()
    x, c = torch.randn(2, 10, 16), torch.randn(2, 7, 24)
    want = att.proj(plain_attention(att.query(x), att.key(c), att.value(c), 4))
    torch.testing.assert_close(att(x, c), want, rtol=1e-5, atol=1e-5)
    assert "mask" in att.state_dict() and att.state_dict()["mask"].shape == (1, 1, 10, 10)


def test_gelu2():
    x = torch.linspace(-4, 4, 9)
    torch.testing.assert_close(GELU2()(x), x * torch.sigmoid(1.702 * x))


# --------------------------------------------------------------------------------------------------
# training: gradients, checkpointing, autocast
# --------------------------------------------------------------------------------------------------
def loss_of(net, x, cond, t):
    logits = net(x, cond, t)
    target = torch.arange(x.numel()).view_as(x) % logits.shape[1]
    return F.cross_entropy(logits, target)


@pytest.mark.parametrize("make,cond", [
    (tiny_text, lambda: torch.randn(2, 7, 24)),
    (tiny_class, lambda: torch.tensor([1, 5])),  # 5 = null label: every class row gets gradient
    (tiny_uncond, lambda: None),
])
def test_gradients_reach_every_parameter(make, cond):
    torch.manual_seed(7)
    net = make()
    net.train()
    loss_of(net, tokens(2), cond(), torch.tensor([2, 7])).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


@pytest.mark.parametrize("make,cond", [
    (tiny_text, lambda: torch.randn(2, 7, 24)),
    (tiny_class, lambda: torch.tensor([1, 3])),
    (tiny_uncond, lambda: None),
])
def test_activation_checkpointing_gives_identical_gradients(make, cond):
    torch.manual_seed(8)
    plain = randomize(make())
    ckpt = make(checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.use_checkpoint and not plain.use_checkpoint
    x, c, t = tokens(2), cond(), torch.tensor([2, 7])
    l1, l2 = loss_of(plain, x, c, t), loss_of(ckpt, x, c, t)
    l1.backward()
    l2.backward()
    torch.testing.assert_close(l1, l2, rtol=0, atol=0)
    for (n, p), (_, q) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7, msg=n)


def test_bf16_autocast_forward_and_backward():
    torch.manual_seed(9)
    net = randomize(tiny_text())
    x, c, t = tokens(2), torch.randn(2, 7, 24), torch.tensor([2, 7])
    ref = net(x, c, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, c, t)
        loss = loss_of(net, x, c, t)
    assert out.shape == ref.shape and torch.isfinite(out.float()).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------
def test_constructor_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="selfcross"):
        tiny_text(attn_type="self")
    with pytest.raises(ValueError, match="block_activate"):
        tiny_text(block_activate=None)
    with pytest.raises(ValueError, match="content_emb_config"):
        tiny_text(content_emb_config=None)
    with pytest.raises(ValueError, match="embed_dim"):
        tiny_text(content_emb_config=emb_cfg(12, 16))
    with pytest.raises(ValueError, match="mlp_type"):
        tiny_uncond(mlp_type="moe")
    with pytest.raises(ValueError, match="divisible"):
        tiny_text(n_head=5)


# --------------------------------------------------------------------------------------------------
# embeddings
# --------------------------------------------------------------------------------------------------
def test_dalle_mask_embedding_32_grid_with_256_tokens_quirk():
    """ImageNet/FFHQ: a 32x32 position grid with 256 tokens -> token i at (i // 32, i % 32)."""
    torch.manual_seed(10)
    emb = DalleMaskImageEmbedding(num_embed=20, spatial_size=(32, 32), embed_dim=8)
    assert emb.num_embed == 21 and emb.emb.weight.shape == (21, 8)
    idx = torch.randint(0, 21, (2, 256))
    out = emb(idx)
    assert out.shape == (2, 256, 8)
    i = torch.arange(256)
    want = emb.emb.weight[idx] + emb.height_emb.weight[i // 32] + emb.width_emb.weight[i % 32]
    torch.testing.assert_close(out, want)
    out.sum().backward()  # rows 8..31 of the height table are never used
    assert torch.count_nonzero(emb.height_emb.weight.grad[8:]) == 0
    assert torch.count_nonzero(emb.height_emb.weight.grad[:8].abs().sum(1)) == 8


def test_dalle_mask_embedding_details():
    emb = DalleMaskImageEmbedding(num_embed=5, spatial_size=4, embed_dim=6)
    idx = torch.tensor([[-1, 0, 5, 2]])
    out = emb(idx)
    assert torch.equal(idx, torch.tensor([[-1, 0, 5, 2]]))  # the caller's tensor is not modified
    torch.testing.assert_close(out[0, 0] - out[0, 1], emb.width_emb.weight[0] - emb.width_emb.weight[1])
    with pytest.raises(ValueError, match="longer than"):
        emb(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="pos_emb_type"):
        DalleMaskImageEmbedding(5, 4, 6, pos_emb_type="sine")
    par = DalleMaskImageEmbedding(5, (2, 3), 6, pos_emb_type="parameter")
    assert par.height_emb.shape == (1, 2, 6) and par(torch.zeros(1, 6, dtype=torch.long)).shape == (1, 6, 6)
    frozen = DalleMaskImageEmbedding(5, 4, 6, trainable=False)
    frozen.train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())


def test_class_embedding():
    labels = torch.tensor([3, 1000])
    ident = ClassEmbedding(num_embed=1000, embed_dim=8, identity=True)
    assert ident(labels) is labels and len(ident.state_dict()) == 0
    table = ClassEmbedding(num_embed=10, embed_dim=8)
    assert list(table.state_dict()) == ["emb.weight"]
    out = table(torch.tensor([3, 7]))
    assert out.shape == (2, 1, 8)
    torch.testing.assert_close(out[:, 0], table.emb.weight[[3, 7]])


@pytest.mark.parametrize("make,cond", [
    (tiny_text, lambda: torch.randn(2, 7, 24)),
    (lambda: tiny_text(mlp_type="conv_mlp"), lambda: torch.randn(2, 7, 24)),
    (tiny_class, lambda: torch.tensor([1, 3])),
])
def test_inference_fast_path_equals_autograd_path(make, cond):
    """Without autograd the GELU2 MLP runs in place (silu(1.702 h) / 1.702): the same function."""
    torch.manual_seed(11)
    net = randomize(make()).eval()
    x, c, t = tokens(2), cond(), torch.tensor([2, 7])
    with_grad = net(x, c, t)
    with torch.no_grad():
        without = net(x, c, t)
    torch.testing.assert_close(without, with_grad.detach(), rtol=1e-5, atol=1e-5)


def test_torch_compile_full_graph_matches_eager():
    """No graph breaks (fullgraph=True) and the same logits; aot_eager keeps the test free of a C++ build."""
    torch.manual_seed(12)
    net = randomize(tiny_text()).eval()
    x, c, t = tokens(2), torch.randn(2, 7, 24), torch.tensor([2, 7])
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, c, t), net(x, c, t), rtol=1e-5, atol=1e-5)
        cache = net.precompute_condition(c)
        torch.testing.assert_close(compiled(x, c, t, cond_cache=cache), net(x, c, t), rtol=1e-5, atol=1e-5)
