"""The optimised (index) paths of the diffusion equal the reference (one-hot) paths; the perf helpers work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vqdiff.modeling.diffusion import samplers as S
from vqdiff.modeling.diffusion.log_ops import gumbel_noise, index_to_log_onehot, sample_categorical_index
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions

from benchmarks import perf
from benchmarks.one_hot_posterior import one_hot_q_posterior  # the reference posterior


@pytest.fixture(scope="module")
def diffusion():
    torch.manual_seed(0)
    size = perf.reference_size(quick=True)
    size.update(T=12)
    return perf.build_text2image_diffusion(size).eval(), size


def _inputs(K: int, B: int = 3, N: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randint(0, K + 1, (B, N), generator=g)
    x_t[:, :7] = K  # some [MASK] positions
    x_t[0, :] = K  # one image fully masked
    soft = (3 * torch.randn(B, K + 1, N, generator=g)).log_softmax(1).clamp(-70, 0)
    onehot = index_to_log_onehot(torch.randint(0, K, (B, N), generator=g), K + 1)
    return x_t, soft, onehot


@pytest.mark.parametrize("t_kind", ["random", "zero", "last"])
def test_q_posterior_index_equals_one_hot_form(diffusion, t_kind):
    d, _ = diffusion
    K, T = d.num_classes - 1, d.num_timesteps
    x_t, soft, onehot = _inputs(K)
    t = {"random": torch.tensor([3, 7, 11]), "zero": torch.zeros(3, dtype=torch.long),
         "last": torch.full((3,), T - 1)}[t_kind]
    for log_x0 in (soft, onehot):
        ref = one_hot_q_posterior(d, log_x0, index_to_log_onehot(x_t, K + 1), t)
        fast = d.q_posterior_index(log_x0, x_t, t)
        assert fast.shape == ref.shape
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)


def test_q_posterior_index_gradients_match(diffusion):
    d, _ = diffusion
    K = d.num_classes - 1
    x_t, soft, _ = _inputs(K)
    t = torch.tensor([2, 5, 9])
    a = soft.clone().requires_grad_(True)
    b = soft.clone().requires_grad_(True)
    w = torch.randn_like(soft)
    (one_hot_q_posterior(d, a, index_to_log_onehot(x_t, K + 1), t) * w).sum().backward()
    (d.q_posterior_index(b, x_t, t) * w).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)


def test_q_sample_index_is_the_same_draw(diffusion):
    d, _ = diffusion
    K = d.num_classes - 1
    x0 = torch.randint(0, K, (3, 40), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 6, 11])
    ref = d.q_sample(index_to_log_onehot(x0, K + 1), t, torch.Generator().manual_seed(5)).argmax(1)
    fast = d.q_sample_index(x0, t, torch.Generator().manual_seed(5))
    assert torch.equal(fast, ref)
    assert (fast == K).any() and (fast != K).any()  # a real mix at these steps


def test_in_place_gumbel_equals_official_formula():
    u = torch.rand((2, 9, 5), generator=torch.Generator().manual_seed(3))
    ref = -torch.log(-torch.log(u + 1e-30) + 1e-30)
    assert torch.equal(gumbel_noise((2, 9, 5), torch.device("cpu"), torch.Generator().manual_seed(3)), ref)
    logits = torch.randn(2, 9, 5)
    idx = sample_categorical_index(logits, torch.Generator().manual_seed(3))
    assert torch.equal(idx, (logits + ref).argmax(1))


class _OneHotPosterior(S.Denoiser):
    """The denoiser with the reference (one-hot ``q_posterior``) posterior instead of ``q_posterior_index``."""

    def posterior(self, log_x0, x, t):
        return one_hot_q_posterior(self.diffusion, log_x0, index_to_log_onehot(x, self.num_classes), t)


@pytest.mark.parametrize("truncation", [None, 0.86])
def test_ancestral_sampling_same_tokens_fast_and_reference(diffusion, truncation):
    d, size = diffusion
    B = 2
    cond = torch.randn(B, size["cond_len"], size["cond_dim"], generator=torch.Generator().manual_seed(0))
    options = SamplingOptions(truncation_rate=truncation)
    x = torch.full((B, size["side"] ** 2), d.num_classes - 1)
    steps = S.timesteps(d.num_timesteps)
    fast = S.sample_ancestral(S.Denoiser(d, cond, None, options), x, steps,
                              options.replace(generator=torch.Generator().manual_seed(7)))
    ref = S.sample_ancestral(_OneHotPosterior(d, cond, None, options), x, steps,
                             options.replace(generator=torch.Generator().manual_seed(7)))
    assert torch.equal(fast, ref)
    assert (fast < d.num_classes - 1).all()  # everything revealed at the end


def test_training_loss_and_gradients_match_reference(diffusion):
    d, size = diffusion
    B, N, K = 2, size["side"] ** 2, d.num_classes - 1
    x0 = torch.randint(0, K, (B, N), generator=torch.Generator().manual_seed(2))
    cond = torch.randn(B, size["cond_len"], size["cond_dim"], generator=torch.Generator().manual_seed(3))
    hist = (d.Lt_history.clone(), d.Lt_count.clone())

    def run(reference: bool):
        d.Lt_history.copy_(hist[0]), d.Lt_count.copy_(hist[1])
        d.zero_grad(set_to_none=True)
        if reference:  # route the index paths through the one-hot forms
            d.q_posterior_index = lambda lx0, xt, t: one_hot_q_posterior(d, lx0, index_to_log_onehot(xt, K + 1), t)
            d.q_sample_index = lambda x, t, g: d.q_sample(index_to_log_onehot(x, K + 1), t, g).argmax(1)
        try:
            loss = d({"content_token": x0, "condition_embed_token": cond}, return_loss=True,
                     generator=torch.Generator().manual_seed(11))["loss"]
            loss.backward()
        finally:
            d.__dict__.pop("q_posterior_index", None)
            d.__dict__.pop("q_sample_index", None)
        return loss.detach(), [p.grad.clone() for p in d.parameters() if p.grad is not None]

    d.train()
    try:
        loss_f, grads_f = run(False)
        loss_r, grads_r = run(True)
    finally:
        d.eval()
        d.Lt_history.copy_(hist[0]), d.Lt_count.copy_(hist[1])
    torch.testing.assert_close(loss_f, loss_r, rtol=1e-5, atol=1e-6)
    assert len(grads_f) == len(grads_r) > 0
    for a, b in zip(grads_f, grads_r):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_activation_checkpointing_same_loss_and_grads():
    size = perf.reference_size(quick=True)
    torch.manual_seed(0)
    plain = perf.build_text2image_diffusion(size)
    ckpt = perf.build_text2image_diffusion(size, checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    B, N, K = 2, size["side"] ** 2, size["K"]
    batch = {"content_token": torch.randint(0, K, (B, N)), "condition_embed_token": torch.randn(B, size["cond_len"], size["cond_dim"])}
    out = []
    for m in (plain, ckpt):
        loss = m(batch, return_loss=True, generator=torch.Generator().manual_seed(4))["loss"]
        loss.backward()
        out.append((loss.detach(), [p.grad for p in m.parameters() if p.grad is not None]))
    torch.testing.assert_close(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_perf_helpers():
    calls = []
    t = perf.timed(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and len(t["times_s"]) == 3 and t["min_s"] <= t["median_s"]
    with pytest.raises(ValueError, match="repeats"):
        perf.timed(lambda: None, repeats=0)
    mm = perf.matmul_peak(repeats=1, shapes={"64": (64, 64, 64)})
    assert mm["peak_gflops"] > 0 and set(mm["gflops_by_shape"]) == {"64"}
    mem = perf.measure_peak_memory(lambda: torch.ones(1024, 1024).sum())  # one 4 MiB tensor
    assert 3.9 <= mem["peak_mib"] < 64
    desc = perf.machine_description()
    assert {"cpu", "cpu_count", "torch", "torch_threads", "device"} <= set(desc)
    assert perf.set_fast_math("cpu")["tf32"] is False


def test_bench_all_quick_prints_markdown_table_and_json(monkeypatch, capsys):
    import json
    import sys

    from benchmarks import bench_all as mod

    monkeypatch.setattr(sys, "argv", ["bench_all.py", "--quick", "--no-diffusers"])
    mod.main()
    out = capsys.readouterr().out
    assert "| what | vqdiff (this run) | official / vqdiff (maintainers, issue 17) | note |" in out
    assert "| one full sampling step (ms) |" in out
    res = json.loads(out.split("JSON ", 1)[1])
    assert res["size"]["layers"] == 2 and res["machine"]["device"] == "cpu"
    assert res["train_step"]["peak_memory"]["peak_mib"] > 0
    if not torch.cuda.is_available():  # the device is explicit: asking for CUDA without one is an error
        monkeypatch.setattr(sys, "argv", ["bench_all.py", "--quick", "--device", "cuda"])
        with pytest.raises(SystemExit, match="CUDA is not available"):
            mod.main()


def test_the_library_does_not_import_the_benchmark_helpers():
    import ast

    root = Path(__file__).resolve().parents[1] / "vqdiff"
    assert not (root / "utils" / "perf.py").exists()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("perf", "benchmarks") or n.endswith(".perf") for n in names), path
