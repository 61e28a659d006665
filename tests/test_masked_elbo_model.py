"""``objective: masked_elbo`` on the shared ``DiffusionTransformer``: training loss, the masked-diffusion
ancestral sampler and its options, the checkpoint record, the errors of mask-and-replace paths, and the
tiny config trained through train.py then sampled through the notebook API."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from vqdiff.modeling.diffusion import DiffusionTransformer, masked_elbo
from vqdiff.modeling.diffusion.sampling import sample_tokens
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions
from vqdiff.modeling.models import DALLE

from _fake_parts import D, K, N, T, FakeCodec, FakeNet, FakeTokenizer, gen

REPO = Path(__file__).resolve().parents[1]


def masked_diffusion(learnable_cf=False, **opts) -> DiffusionTransformer:
    torch.manual_seed(0)
    d = DiffusionTransformer(
        content_emb_config={"params": {"num_embed": K}}, condition_emb_config=nn.Embedding(50, D).requires_grad_(False),
        transformer_config=FakeNet("text"), diffusion_step=T, learnable_cf=learnable_cf, objective="masked_elbo",
        masked_elbo=opts or None)
    if learnable_cf:
        d.empty_text_embed = nn.Parameter(torch.randn(4, D, dtype=torch.float64))
    return d


def cond(b=4):
    return torch.randint(0, 50, (b, 4), generator=gen(7))


def run(d, b=4, callback=None, **fields) -> torch.Tensor:
    return sample_tokens(d, SamplingOptions(**{"generator": gen(1), **fields}), condition_token=cond(b),
                         callback=callback)


@pytest.mark.parametrize("opts", [{}, {"schedule": "cosine", "time": "discrete"},
                                  {"schedule": "polynomial", "exponent": 2.0, "antithetic": False}])
def test_training_loss_is_the_bound_draw_and_trains(opts):
    d = masked_diffusion(**opts)
    x = torch.randint(0, K, (8, N), generator=gen(0))
    inp = {"content_token": x, "condition_token": cond(8)}
    out = d(inp, return_loss=True, generator=gen(3))
    loss = out["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss) and float(loss.detach()) > 0
    assert out["logits"].shape == (8, K + 1, N)
    # the same draw through the module's function
    cond_emb = d._condition_embedding(inp)
    ref, *_ = masked_elbo.diffusion_loss(lambda xt, s: d.predict_start_index(xt, cond_emb, s), x,
                                         d.masked_elbo_options, T, K, gen(3))
    torch.testing.assert_close(loss, ref.sum() / (8 * N))
    loss.backward()
    assert d.transformer.out.weight.grad.abs().sum() > 0
    assert torch.equal(d.Lt_count, torch.zeros(T))  # the VQ-Diffusion history is untouched


def test_sampler_reveals_and_keeps_tokens():
    d = masked_diffusion()
    xs = []
    out = run(d, b=64, callback=lambda info: xs.append(info["x"].clone()))
    assert len(xs) == T and len(d.transformer.calls) == T  # one network call per step
    assert not bool((out == K).any()) and bool((out < K).all())
    for before, after in zip(xs, xs[1:]):
        kept = before != K
        assert torch.equal(after[kept], before[kept])  # revealed tokens stay
    # linear schedule, uniform grid: step 1 reveals (alpha_s - alpha_t) / (1 - alpha_t) ~ 0.1 of 1024 tokens
    frac = float((xs[0] != K).double().mean())
    assert abs(frac - 0.1) < 0.04


@pytest.mark.parametrize("fields,calls", [({"skip_step": 1}, 6), ({"time_grid": "cosine"}, T),
                                          ({"prior_rule": 2, "prior_weight": 1.0}, T), ({"prior_rule": 1}, T),
                                          ({"maskgit_steps": 4}, 4), ({"guidance_scale": 3.0}, T),
                                          ({"truncation_rate": 0.5}, T), ({"top_k": 2}, T)])
def test_sampling_options_that_apply(fields, calls):
    d = masked_diffusion(learnable_cf="guidance_scale" in fields)
    a = run(d, **fields)
    assert len(d.transformer.calls) == calls and not bool((a == K).any())
    assert torch.equal(a, run(d, **fields))  # one generator: reproducible
    if "guidance_scale" in fields:
        assert all(b == 8 for b, _ in d.transformer.calls)  # cond + learned null in one batch


def test_cosine_grid_reveals_fewer_tokens_first():
    firsts = {}
    for grid in ("uniform", "cosine"):
        xs = []
        run(masked_diffusion(), b=64, callback=lambda info: xs.append(info["x"]), time_grid=grid)
        firsts[grid] = float((xs[0] != K).double().mean())
    assert firsts["cosine"] < 0.05 < firsts["uniform"]  # cos grid: 1 - cos(pi/2 * 0.1) = 0.012 of the tokens


def test_inpainting_and_partial_sampling():
    d = masked_diffusion()
    x0 = torch.randint(0, K, (4, N), generator=gen(2))
    mask = torch.zeros(4, N, dtype=torch.bool)
    mask[:, :5] = True
    out = sample_tokens(d, SamplingOptions(generator=gen(1)), condition_token=cond(), fixed=(mask, x0))
    assert torch.equal(out[mask], x0[mask]) and not bool((out == K).any())
    d.transformer.calls.clear()
    out = sample_tokens(d, SamplingOptions(generator=gen(1)), condition_token=cond(), content_token=x0,
                        filter_ratio=0.5)
    assert len(d.transformer.calls) == 5 and not bool((out == K).any())


def test_mask_and_replace_paths_are_clear_errors():
    d = masked_diffusion()
    x = torch.randint(0, K, (2, N))
    t = torch.zeros(2, dtype=torch.long)
    for call in (lambda: d.q_sample_index(x, t), lambda: d.q_posterior_index(torch.zeros(2, K + 1, N), x, t),
                 lambda: d.q_pred(torch.zeros(2, K + 1, N), t)):
        with pytest.raises(ValueError, match="objective 'vq_diffusion'.*masked_elbo"):
            call()
    from vqdiff.modeling.diffusion.samplers import SAMPLERS, Denoiser
    denoise = Denoiser(d, d.condition_emb(cond(2)), None, SamplingOptions())
    with pytest.raises(ValueError, match="mask-and-replace"):
        SAMPLERS["ancestral"](denoise, torch.full((2, N), K), [1, 0], SamplingOptions())
    with pytest.raises(ValueError, match="rerun_prob"):
        run(d, rerun_prob=0.5)
    with pytest.raises(ValueError, match="prior_ps"):
        run(d, prior_rule=1, prior_ps=3)
    vq = DiffusionTransformer(content_emb_config={"params": {"num_embed": K}}, transformer_config=FakeNet("none"),
                              diffusion_step=T)
    with pytest.raises(ValueError, match="time_grid"):
        sample_tokens(vq, SamplingOptions(time_grid="cosine"), batch_size=2)
    with pytest.raises(ValueError, match="sampling_mistake|SAMPLERS|vq_diffusion"):
        SAMPLERS["masked"](Denoiser(vq, None, None, SamplingOptions()), torch.full((2, N), K), [1, 0],
                           SamplingOptions())


def test_config_errors_name_the_key():
    kw = dict(content_emb_config={"params": {"num_embed": K}}, transformer_config=FakeNet("none"), diffusion_step=T)
    with pytest.raises(ValueError, match="objective"):
        DiffusionTransformer(objective="mdlm", **kw)
    with pytest.raises(ValueError, match="masked_elbo is given"):
        DiffusionTransformer(masked_elbo={"schedule": "cosine"}, **kw)
    with pytest.raises(ValueError, match="masked_elbo.schedule"):
        DiffusionTransformer(objective="masked_elbo", masked_elbo={"schedule": "sigmoid"}, **kw)


def test_checkpoints_record_the_objective():
    m = masked_diffusion(schedule="cosine")
    sd = m.state_dict()
    assert sd["masked_elbo_schedule"].tolist() == [1.0, 1.0, 1e-4]
    vq = DiffusionTransformer(content_emb_config={"params": {"num_embed": K}},
                              condition_emb_config=nn.Embedding(50, D), transformer_config=FakeNet("text"),
                              diffusion_step=T)
    assert "masked_elbo_schedule" not in vq.state_dict()  # the default layout is unchanged
    with pytest.raises(ValueError, match="trained with 'objective: masked_elbo'"):
        vq.load_state_dict(sd)
    with pytest.raises(ValueError, match="schedule"):
        masked_diffusion(schedule="linear").load_state_dict(sd)
    masked_diffusion(schedule="cosine").load_state_dict(sd)  # the same objective and schedule: fine
    other = masked_diffusion()
    with pytest.warns(UserWarning, match="without a masked_elbo record"):
        other.load_state_dict(vq.state_dict(), strict=False)


def test_dalle_with_learnable_null_text_samples_guided():
    d = masked_diffusion(learnable_cf=True)
    model = DALLE(content_codec_config=FakeCodec(), condition_codec_config=FakeTokenizer(), diffusion_config=d,
                  learnable_cf=True)
    out = model.generate_content(batch={"text": ["red", "blue"]}, filter_ratio=0, sample_type="top0.9r",
                                 guidance_scale=2.0, generator=gen(0))
    assert out["content"].shape[0] == 2


# --------------------------------------------------------------------------------------------------
# the tiny config with one line changed: train.py, then the notebook API on its checkpoint
# --------------------------------------------------------------------------------------------------
def test_tiny_config_with_masked_elbo_trains_and_samples(tmp_path, monkeypatch):
    import train
    from inference_VQ_Diffusion import VQ_Diffusion
    from vqdiff.utils.tiny_parts import write_tiny_parts

    write_tiny_parts(tmp_path)
    monkeypatch.chdir(tmp_path)
    text = (REPO / "configs" / "tiny_text_shapes.yaml").read_text()
    line = "        diffusion_step: 10\n"
    assert text.count(line) == 1
    cfg = tmp_path / "tiny_masked.yaml"
    cfg.write_text(text.replace(line, line + "        objective: masked_elbo\n"))
    result = train.main(["--config_file", str(cfg), "--name", "masked", "--seed", "0", "--no_progress_bar",
                         "solver.max_iterations=4"])
    assert len(result["losses"]) == 4 and all(l > 0 and l == l for l in result["losses"])
    ckpt = tmp_path / "OUTPUT" / "masked" / "checkpoint" / "last.pth"
    state = torch.load(ckpt, weights_only=True)
    assert state["model"]["transformer.masked_elbo_schedule"].tolist() == [0.0, 1.0, 1e-4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eng = VQ_Diffusion(config=str(cfg), path=str(ckpt))
    assert eng.model.transformer.objective == "masked_elbo"
    ims = eng.inference_generate_sample_with_condition("a red circle at the top left", truncation_rate=0.9,
                                                       save_root=None, batch_size=2, seed=0)
    assert len(ims) == 2
    with pytest.raises(ValueError, match="objective: masked_elbo"):  # the unchanged config refuses it
        VQ_Diffusion(config=str(REPO / "configs" / "tiny_text_shapes.yaml"), path=str(ckpt))


# --------------------------------------------------------------------------------------------------
# the validation bound of both objectives (validation_bound.py)
# --------------------------------------------------------------------------------------------------
class UniformNet(nn.Module):
    """p(x_0 | x_t) uniform over the K tokens whatever x_t."""

    content_seq_len = N

    def forward(self, x, cond, t):
        return torch.zeros(x.shape[0], K, x.shape[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("objective", ["vq_diffusion", "masked_elbo"])
def test_validation_bound_of_a_uniform_model(objective, seed):
    from vqdiff.modeling.diffusion.validation_bound import bits_per_token, negative_elbo, vq_diffusion_prior_kl

    d = DiffusionTransformer(content_emb_config={"params": {"num_embed": K}}, transformer_config=UniformNet(),
                             diffusion_step=T, objective=objective)
    x0 = torch.randint(0, K, (512, N), generator=gen(seed))
    nats = torch.cat([negative_elbo(d, x0, None, gen(seed + 10 * i)) for i in range(4)])
    exact = N * math.log(K)
    se = float(nats.std()) / math.sqrt(nats.numel())
    # x0 uniform: E[-log p(x0)] >= N log K for any model (Gibbs), so no valid bound may fall below it
    assert float(nats.mean()) > exact - 5 * se
    if objective == "masked_elbo":  # the bound's expectation is N log K ((1 - 2 eps) + eps + eps) exactly
        assert abs(float(nats.mean()) - exact) < 5 * se
    else:
        assert 0 < vq_diffusion_prior_kl(d) < 1e-4
    assert bits_per_token(nats, N) == pytest.approx(float(nats.mean()) / (N * math.log(2)))


def test_diffusers_export_refuses_a_masked_elbo_model():
    from vqdiff.inference.diffusers_export import scheduler_config

    model = DALLE(content_codec_config=FakeCodec(), condition_codec_config=FakeTokenizer(),
                  diffusion_config=masked_diffusion())
    with pytest.raises(ValueError, match="masked_elbo"):
        scheduler_config(model)
