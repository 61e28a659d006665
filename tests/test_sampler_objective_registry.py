"""A new sampler or objective is one file plus one table row: a toy of each is registered here (standing in
for its own file) and then runs through the untouched sampling entry, options string, training forward,
checkpoint check and held-out bound."""

from __future__ import annotations

from typing import Any, Optional

import pytest
import torch
import torch.nn.functional as F

from vqdiff.modeling.diffusion import DiffusionTransformer
from vqdiff.modeling.diffusion.objectives import OBJECTIVES, Objective, register_objective
from vqdiff.modeling.diffusion.samplers import SAMPLERS, SamplerEntry, register_sampler, timesteps
from vqdiff.modeling.diffusion.sampling import sample_tokens
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions
from vqdiff.modeling.diffusion.validation_bound import negative_elbo

from _fake_parts import K, N, T, FakeNet, gen

VISITED: list[list[int]] = []


def sample_greedy(denoise: Any, x: torch.Tensor, steps, options: Any, callback=None) -> torch.Tensor:
    """Toy sampler: at every visited step each [MASK] takes its most probable token (one call per step)."""
    steps = list(steps)
    VISITED.append(steps)
    for i, t_int in enumerate(steps):
        log_x0 = denoise(x, torch.full((x.shape[0],), t_int, dtype=torch.long))
        x = denoise.pin(torch.where(x == K, log_x0[:, :K].argmax(dim=1), x))
        if callback is not None:
            callback({"step": i, "t": t_int, "x": x, "log_x0": log_x0})
    return x


class ToyObjective(Objective):
    """Toy objective: the cross-entropy of x_0 from all-[MASK] at the last step; sampled greedily."""

    name = "toy_ce"
    record_key = "toy_ce_record"

    def loss(self, diffusion, x, cond_emb, *, is_train=True, generator=None, cond_mask=None):
        t = torch.full((x.shape[0],), diffusion.num_timesteps - 1, dtype=torch.long)
        log_x0 = diffusion.predict_start_index(torch.full_like(x, K), cond_emb, t)
        return log_x0, F.nll_loss(log_x0[:, :K], x, reduction="none").sum(dim=1)

    def sampler_for(self, kind: str, options: Any) -> str:
        return "greedy"

    def noised_start(self, diffusion, x0, start_step, options, official_noise=True):
        return torch.full_like(x0, K)

    def record(self) -> torch.Tensor:
        return torch.tensor([42.0], dtype=torch.float64)

    def check_record(self, record: Optional[torch.Tensor]) -> None:
        if record is None or float(record[0]) != 42.0:
            raise ValueError(f"toy_ce_record is {record!r}, expected [42.]")

    def negative_elbo(self, diffusion, x0, predict, generator=None):
        t = torch.full((x0.shape[0],), diffusion.num_timesteps - 1, dtype=torch.long)
        log_x0 = predict(torch.full_like(x0, K), t)
        return F.nll_loss(log_x0[:, :K], x0, reduction="none").sum(dim=1).double()


@pytest.fixture
def toy_rows():
    VISITED.clear()
    register_sampler(SamplerEntry("greedy", sample_greedy))
    register_objective(ToyObjective)
    try:
        yield
    finally:
        SAMPLERS.pop("greedy")
        OBJECTIVES.pop("toy_ce")


def model(objective: str = "vq_diffusion") -> DiffusionTransformer:
    torch.manual_seed(0)
    return DiffusionTransformer(content_emb_config={"params": {"num_embed": K}}, transformer_config=FakeNet("none"),
                                diffusion_step=T, objective=objective)


def test_unregistered_names_are_refused_naming_the_table():
    with pytest.raises(ValueError, match="sampler"):
        SamplingOptions(sampler="greedy")
    with pytest.raises(ValueError, match="unknown part 'greedy'"):
        SamplingOptions.from_sample_type("top0.85r,greedy")
    with pytest.raises(ValueError, match="objective must be one of"):
        model("toy_ce")


def test_a_registered_sampler_is_chosen_by_name_and_runs(toy_rows):
    options = SamplingOptions.from_sample_type("top0.9r,fast2,greedy", generator=gen(1))
    assert options.sampler == "greedy" and options.sampler_kind(N, T) == "greedy"
    assert SamplingOptions.from_sample_type(str(options)) == options.replace(generator=None)
    d = model()
    out = sample_tokens(d, options, batch_size=3)
    assert out.shape == (3, N) and not bool((out == K).any())
    assert VISITED == [timesteps(T, 2)]  # the row's default steps honour skip_step
    assert len(d.transformer.calls) == len(timesteps(T, 2))


def test_a_registered_objective_trains_checks_records_samples_and_bounds(toy_rows):
    d = model("toy_ce")
    x = torch.randint(0, K, (4, N), generator=gen(0))
    out = d({"content_token": x}, return_loss=True)
    _, ref = ToyObjective().loss(d, x, None)
    torch.testing.assert_close(out["loss"], ref.sum() / (4 * N))
    sd = d.state_dict()
    assert sd["toy_ce_record"].tolist() == [42.0]
    with pytest.raises(ValueError, match="trained with 'objective: toy_ce'"):
        model().load_state_dict(sd)
    with pytest.raises(ValueError, match="toy_ce_record"):
        model("toy_ce").load_state_dict({**sd, "toy_ce_record": torch.tensor([1.0], dtype=torch.float64)})
    model("toy_ce").load_state_dict(sd)
    tokens = sample_tokens(d, SamplingOptions(), batch_size=2)  # the objective swaps in its sampler
    assert len(VISITED) == 1 and not bool((tokens == K).any())
    torch.testing.assert_close(negative_elbo(d, x, None), ToyObjective().negative_elbo(
        d, x, lambda xt, s: d.predict_start_index(xt, None, s)))
    with pytest.raises(ValueError, match="mask-and-replace"):
        d.q_sample_index(x, torch.zeros(4, dtype=torch.long))
