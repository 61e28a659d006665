"""The masked-diffusion ELBO (``vqdiff/modeling/diffusion/masked_elbo.py``) against a brute-force evaluation on
a tiny problem: every x_t enumerated, the KL terms built from explicit transition matrices by Bayes' rule."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from vqdiff.modeling.diffusion import masked_elbo as me

K, N = 3, 2  # 3 tokens + [MASK] = 3, 2 positions: 16 states x_t
MASK = K
X0 = torch.tensor([[2, 0]])


def model_table(seed: int) -> torch.Tensor:
    """A fixed arbitrary p_theta(x_0 | x_t): log-probabilities (states, K, N), one row per x_t."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((K + 1) ** N, K, N, generator=g, dtype=torch.float64).mul(2).log_softmax(dim=1)


def state_index(x_t: torch.Tensor) -> torch.Tensor:
    return sum(x_t[:, n] * (K + 1) ** n for n in range(N))


def predictor(table: torch.Tensor):
    return lambda x_t, step: table[state_index(x_t)]


def all_states() -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(K + 1), repeat=N)))


def q_marginal(x_t: torch.Tensor, a: float) -> float:
    """q(x_t | x_0) (M1) for one state (N,)."""
    p = 1.0
    for n in range(N):
        p *= a if x_t[n] == X0[0, n] else (1 - a) if x_t[n] == MASK else 0.0
    return p


def brute_kl_sum(table: torch.Tensor, opts: me.MaskedELBOOptions, T: int) -> float:
    """sum_i E_q(x_t(i)) sum_n KL(q(x_s | x_t, x_0) || p(x_s | x_t)), from explicit matrices."""
    total = 0.0
    for i in range(1, T + 1):
        a_t = float(me.alpha(torch.tensor(i / T, dtype=torch.float64), opts))
        a_s = float(me.alpha(torch.tensor((i - 1) / T, dtype=torch.float64), opts))
        step = np.zeros((K + 1, K + 1))  # q(x_t = l | x_s = j)
        for j in range(K):
            step[j, j], step[j, MASK] = a_t / a_s, 1 - a_t / a_s
        step[MASK, MASK] = 1.0

        def posterior(x_t_n: int, k: int) -> np.ndarray:  # q(x_s | x_t, x_0 = k) by Bayes
            prior = np.zeros(K + 1)
            prior[k], prior[MASK] = a_s, 1 - a_s
            joint = prior * step[:, x_t_n]
            return joint / joint.sum()

        for x_t in all_states():
            q = q_marginal(x_t, a_t)
            if q == 0:
                continue
            p_x0 = table[state_index(x_t[None])[0]].exp().numpy()  # (K, N)
            for n in range(N):
                x_t_n = int(x_t[n])
                true = posterior(x_t_n, int(X0[0, n]))
                if x_t_n == MASK:
                    model = sum(p_x0[k, n] * posterior(x_t_n, k) for k in range(K))
                else:  # carry-over: revealed tokens stay
                    model = posterior(x_t_n, x_t_n)
                nz = true > 0
                total += q * float((true[nz] * (np.log(true[nz]) - np.log(model[nz]))).sum())
    return total


def expected_loss(table: torch.Tensor, opts: me.MaskedELBOOptions, t: float, T=None) -> float:
    """E_q(x_t) [weight(t) CE_t] with every x_t enumerated, through the module's own functions."""
    tt = torch.tensor([t], dtype=torch.float64)
    w = float(me.loss_weight(tt, opts, T))
    a = float(me.alpha(tt, opts))
    states = all_states()
    ce = me.masked_cross_entropy(table[state_index(states)], X0.expand(len(states), N), states, MASK)
    q = torch.tensor([q_marginal(s, a) for s in states], dtype=torch.float64)
    return w * float((q * ce).sum())


def discrete_bound(table, opts, T: int) -> float:
    """(M4) as the module computes it: the mean over the T terms of the drawn-term estimate (times are the
    middle of each bin, which :func:`discretize` maps to the bin's grid point)."""
    mids = (torch.arange(T, dtype=torch.float64) + 0.5) / T
    grid, prev = me.discretize(mids, T)
    assert torch.allclose(grid, torch.arange(1, T + 1, dtype=torch.float64) / T)
    assert torch.allclose(prev, grid - 1.0 / T)
    return sum(expected_loss(table, opts, float(g), T) for g in grid) / T


def continuous_bound(table, opts, pieces: int = 150) -> float:
    """(M5) by Gauss-Legendre quadrature (8 nodes on each of ``pieces`` intervals, finer near t = 0)."""
    nodes, weights = np.polynomial.legendre.leggauss(8)
    edges = np.linspace(0.0, 1.0, pieces + 1) ** 2
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        for x, w in zip(nodes, weights):
            total += 0.5 * (hi - lo) * w * expected_loss(table, opts, 0.5 * (hi - lo) * x + 0.5 * (hi + lo))
    return total


SCHEDULE_OPTIONS = [
    me.MaskedELBOOptions(schedule="linear"),
    me.MaskedELBOOptions(schedule="cosine"),
    me.MaskedELBOOptions(schedule="polynomial", exponent=2.0),
]


@pytest.mark.parametrize("opts", SCHEDULE_OPTIONS, ids=lambda o: o.schedule)
@pytest.mark.parametrize("T", [1, 3, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_discrete_form_equals_the_sum_of_kl_terms(opts, T, seed):
    table = model_table(seed)
    assert discrete_bound(table, opts, T) == pytest.approx(brute_kl_sum(table, opts, T), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("opts", SCHEDULE_OPTIONS, ids=lambda o: o.schedule)
def test_continuous_form_is_the_limit_of_the_discrete_form(opts):
    table = model_table(3)
    cont = continuous_bound(table, opts)
    gaps = [abs(discrete_bound(table, opts, T) - cont) for T in (16, 64, 256)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 2e-3 * cont
    # the continuous bound is the tighter one (MD4 Sec. 3)
    assert discrete_bound(table, opts, 16) > cont


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("time", ["continuous", "discrete"])
def test_monte_carlo_loss_is_unbiased(seed, time):
    opts = me.MaskedELBOOptions(schedule="cosine", time=time)
    table = model_table(4)
    exact = continuous_bound(table, opts, pieces=100) if time == "continuous" else discrete_bound(table, opts, 10)
    g = torch.Generator().manual_seed(seed)
    draws = [me.diffusion_loss(predictor(table), X0.expand(1024, N), opts, 10, MASK, g)[0] for _ in range(8)]
    losses = torch.cat(draws).double()
    se = float(losses.std()) / math.sqrt(losses.numel())
    assert abs(float(losses.mean()) - exact) < 5 * se + 1e-9


def test_schedule_clamp_and_derivative():
    for opts in SCHEDULE_OPTIONS:
        t = torch.linspace(0, 1, 101, dtype=torch.float64)
        a = me.alpha(t, opts)
        assert float(a[0]) == pytest.approx(1 - me.MD4_EPS) and float(a[-1]) == pytest.approx(me.MD4_EPS)
        assert bool((a[1:] <= a[:-1]).all())
        tt = torch.linspace(0.05, 0.95, 19, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(me.alpha(tt, opts).sum(), tt)
        assert torch.allclose(me.dalpha(tt.detach(), opts), grad, atol=1e-12)


def test_antithetic_times_are_stratified():
    t = me.sample_times(8, torch.device("cpu"), True, torch.Generator().manual_seed(0)).double()
    u = float(t[0])
    assert torch.allclose(t, torch.remainder(u + torch.arange(8) / 8, 1.0).double(), atol=1e-7)
    assert bool(((t >= 0) & (t < 1)).all())


def test_network_step_matches_the_mask_rate():
    T = 10
    t = torch.tensor([0.0, 0.05, 0.1, 0.11, 0.4, 0.5, 0.999, 1.0], dtype=torch.float64)
    assert me.network_step(t, me.MaskedELBOOptions(), T).tolist() == [0, 0, 0, 1, 3, 4, 9, 9]
    assert me.network_step(torch.arange(1, T + 1) / T, me.MaskedELBOOptions(), T).tolist() == list(range(T))
    cosine = me.MaskedELBOOptions(schedule="cosine")  # mask rate cos(pi/2 (1 - t)): 0.5 at t = 1/3
    assert me.network_step(torch.tensor([1 / 3 - 1e-3, 1 / 3 + 1e-3]), cosine, T).tolist() == [4, 5]


def test_mask_tokens_keeps_tokens_with_probability_alpha():
    x0 = torch.randint(0, K, (64, 256), generator=torch.Generator().manual_seed(0))
    x_t = me.mask_tokens(x0, torch.full((64,), 0.3), MASK, torch.Generator().manual_seed(1))
    kept = x_t != MASK
    assert torch.equal(x_t[kept], x0[kept])
    assert abs(float(kept.double().mean()) - 0.3) < 0.01  # 16384 draws: sd 0.0036


def test_options_are_checked_once_with_their_names():
    assert me.MaskedELBOOptions.from_config(None) == me.MaskedELBOOptions()
    assert me.MaskedELBOOptions.from_config({"schedule": "polynomial", "exponent": 3}).exponent == 3.0
    for bad, word in [({"schedule": "sigmoid"}, "schedule"), ({"exponent": 0}, "exponent"),
                      ({"time": "ct"}, "time"), ({"antithetic": 1}, "antithetic"), ({"eps": 0.6}, "eps"),
                      ({"shedule": "linear"}, "shedule")]:
        with pytest.raises(ValueError, match=word):
            me.MaskedELBOOptions.from_config(bad)


def test_prior_and_reconstruction_terms():
    opts = me.MaskedELBOOptions()
    assert me.prior_term(opts, 16, 8) == pytest.approx(16 * 1e-4 * math.log(8))
    assert me.reconstruction_term(opts, 16, 8) == pytest.approx(16 * 1e-4 * math.log(8))
