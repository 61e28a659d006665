"""Checks shared by the tests against the official-made fixtures ``official_tiny_ithq`` and
``official_tiny_uncond`` (``../shared/fixtures``; each folder's README documents its ``expected.pt`` keys).

Tolerances are the spec's (``OFFICIAL.md``): float32 values to 1e-5 relative (plus a 1e-5 floor for values
near 0); ``predict_start`` and everything computed from our own ``predict_start`` to an absolute 1e-4 (the
network's float32 rounding, ~1e-5 here, moves log-probabilities of about -70..0); ``cond_emb`` to 2e-3
(the official CLIP runs in fp16). Tokens and random draws must be equal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch

from conftest import copy_fixture
from vqdiff.inference.loading import LoadReport, build_model, load_model_weights
from vqdiff.modeling.diffusion.samplers import Denoiser, sample_improved
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions
from vqdiff.modeling.diffusion.log_ops import index_to_log_onehot
from vqdiff.utils.config import load_yaml_config

BUFFERS = ["log_at", "log_bt", "log_ct", "log_cumprod_at", "log_cumprod_bt", "log_cumprod_ct",
           "log_1_min_ct", "log_1_min_cumprod_ct"]
LOSS_CASES = ["uniform", "forced", "importance"]
NET_ATOL = 1e-4  # the spec's predict_start tolerance


def rel_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5, what: str = "") -> None:
    """``|a - b| <= atol + rtol |b|`` elementwise, same shape and same infinities."""
    assert a.shape == b.shape, (what, a.shape, b.shape)
    a, b = a.float(), b.float()
    assert torch.equal(torch.isinf(a), torch.isinf(b)), what
    fin = torch.isfinite(b)
    err = (a[fin] - b[fin]).abs()
    tol = atol + rtol * b[fin].abs()
    assert (err <= tol).all(), f"{what}: max abs err {err.max().item():.3g}, max err/tol {(err / tol).max().item():.3g}"


@dataclass
class Official:
    """One fixture folder, with our model built from its config and loaded from its checkpoint."""

    folder: Path
    model: torch.nn.Module
    expected: dict
    report: LoadReport
    state_dict_keys: dict

    @property
    def diffusion(self) -> torch.nn.Module:
        return self.model.transformer


def load_official(name: str, config: str, checkpoint: str, tmp_root: Path) -> Official:
    """Copy the fixture ``name`` to ``tmp_root``, build our model from ``config`` there (the codec and CLIP
    paths inside are relative) and load ``checkpoint`` the way inference does (``model``, then ``ema``)."""
    folder = copy_fixture(name, tmp_root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        model = build_model(load_yaml_config(folder / config))
    ckpt = torch.load(folder / checkpoint, map_location="cpu", weights_only=True)
    report = load_model_weights(model, ckpt["model"], ckpt.get("ema"), source=checkpoint)
    model.eval()
    expected = torch.load(folder / "expected.pt", map_location="cpu", weights_only=False)
    keys = json.loads((folder / "state_dict_keys.json").read_text())
    return Official(folder, model, expected, report, keys)


# ------------------------------------------------------------------------------------------------ checks
def check_keys(off: Official) -> None:
    """Every checkpoint key is one of ours with the same shape, and nothing of ours is left out."""
    assert off.report.ok, str(off.report)
    ours = {k: list(v.shape) for k, v in off.model.state_dict().items()}
    assert sorted(set(off.state_dict_keys) - set(ours)) == []
    assert sorted(set(ours) - set(off.state_dict_keys)) == []
    bad = [k for k, shape in off.state_dict_keys.items() if ours[k] != list(shape)]
    assert bad == []


def check_codec(off: Official) -> None:
    """Deterministic encoding gives the official tokens; decoding them gives the official pixels."""
    exp, codec = off.expected, off.model.content_codec
    with torch.no_grad():
        tokens = codec.get_tokens(exp["images"])["token"]
        decoded = codec.decode(exp["content_token"])
    assert torch.equal(tokens, exp["content_token"])
    assert decoded.shape == exp["decoded"].shape
    # relative to the pixel range (0..255): the decoder clamps, so many reference values are exactly 0
    err = float((decoded - exp["decoded"]).abs().max() / exp["decoded"].abs().max())
    assert err < 1e-5, err


def check_buffers(off: Official) -> None:
    for name in BUFFERS:
        assert torch.equal(getattr(off.diffusion, name), off.expected[f"buf_{name}"]), name


def check_posterior_math(off: Official, cond: Any) -> None:
    """predict_start (and at the edge steps), q_pred, q_pred_one_timestep, both posteriors, p_pred."""
    exp, d = off.expected, off.diffusion
    K1 = d.num_classes
    log_x_t, log_x0, t = index_to_log_onehot(exp["x_t"], K1), index_to_log_onehot(exp["x0"], K1), exp["t"]
    with torch.no_grad():
        rel_close(d.q_pred(log_x0, t), exp["q_pred"], what="q_pred")
        rel_close(d.q_pred_one_timestep(log_x_t, t), exp["q_pred_one_timestep"], what="q_pred_one_timestep")
        rel_close(d.q_posterior(log_x0, log_x_t, t), exp["q_posterior_true"], what="q_posterior_true")
        rel_close(d.q_posterior(exp["predict_start"], log_x_t, t), exp["q_posterior_model"], what="posterior")
        pred = d.predict_start(log_x_t, cond, t)
        rel_close(pred, exp["predict_start"], atol=NET_ATOL, what="predict_start")
        rel_close(d.q_posterior(pred, log_x_t, t), exp["q_posterior_model"], atol=NET_ATOL, what="q_posterior_model")
        log_p, log_x0_hat = d.p_pred(log_x_t, cond, t)
        rel_close(log_p, exp["p_pred"], atol=NET_ATOL, what="p_pred")
        rel_close(log_x0_hat, exp["predict_start"], atol=NET_ATOL, what="p_pred x0")
        t_edge = exp["t_edge"]
        pred_edge = d.predict_start(log_x_t, cond, t_edge)
        rel_close(pred_edge, exp["predict_start_edge"], atol=NET_ATOL, what="predict_start_edge")
        rel_close(d.q_posterior(pred_edge, log_x_t, t_edge), exp["q_posterior_model_edge"], atol=NET_ATOL,
                  what="q_posterior_model_edge")


def check_denoiser(off: Official, cond: Any, key: str, **options: Any) -> None:
    """Our per-request denoiser (truncation / guidance) against the official wrapped ``cf_predict_start``;
    ``options``: ``uncond_emb`` and ``SamplingOptions`` fields (no truncation unless given)."""
    exp = off.expected
    uncond = options.pop("uncond_emb", None)
    request = SamplingOptions(**{"truncation_rate": None, **options})
    with torch.no_grad():
        out = Denoiser(off.diffusion, cond, uncond, request)(exp["x_t"], exp["t"])
    rel_close(out, exp[key], atol=NET_ATOL, what=key)


def check_purity_prior_step(off: Official, cond: Any) -> None:
    """One official ``p_sample`` step with prior_rule 2 (purity), same seed: same tokens revealed."""
    exp, d = off.expected, off.diffusion
    t_int = int(exp["prior2_t"][0])
    assert bool((exp["prior2_t"] == t_int).all())
    assert int(exp["prior2_sampled_in"].sum()) == 0  # a fresh step: the whole budget is to reveal
    n_sample = [0] * d.num_timesteps
    n_sample[t_int] = int(exp["prior2_to_sample"])
    options = SamplingOptions(truncation_rate=None, prior_rule=2, prior_weight=float(exp["prior2_prior_weight"]),
                              prior_ps=int(exp["prior2_prior_ps"]))
    denoise = Denoiser(d, cond, None, options)
    with torch.no_grad():
        rel_close(denoise(exp["prior2_x_t"], exp["prior2_t"]), exp["prior2_log_x_recon"], atol=NET_ATOL,
                  what="prior2_log_x_recon")
    torch.manual_seed(int(exp["prior2_seed"]))
    out = sample_improved(denoise, exp["prior2_x_t"].clone(), [t_int], options, n_sample=n_sample)
    assert torch.equal(out, exp["prior2_out"])
    revealed = ((exp["prior2_x_t"] == d.num_classes - 1) & (out != d.num_classes - 1)).sum(1)
    assert torch.equal(revealed, exp["prior2_sampled_out"] - exp["prior2_sampled_in"])


def check_training_losses(off: Official, model_input: dict, monkeypatch: pytest.MonkeyPatch,
                          official_cond_emb: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
    """The seeded official training steps: t, p_t, x_t, per-sample loss, log p_theta, the mean loss and
    the Lt_history / Lt_count updates, for the uniform, forced-t and importance cases.

    ``official_cond_emb``: stands in for the text encoder (the official fp16 CLIP's embedding of the
    fixture's captions), so the comparison is not limited by the fp16/fp32 gap of ``cond_emb``.
    """
    exp, d = off.expected, off.diffusion
    if official_cond_emb is not None:
        monkeypatch.setattr(d.condition_emb, "forward", official_cond_emb)
    seen: dict = {}
    sample_time, q_sample_index, train_loss = d.sample_time, d.q_sample_index, d._train_loss

    def record_time(*args, **kwargs):
        seen["t"], seen["pt"] = sample_time(*args, **kwargs)
        return seen["t"], seen["pt"]

    def record_x_t(*args, **kwargs):
        seen["x_t"] = q_sample_index(*args, **kwargs)
        return seen["x_t"]

    def record_loss(*args, **kwargs):
        seen["log_model_prob"], seen["vb_loss"] = train_loss(*args, **kwargs)
        return seen["log_model_prob"], seen["vb_loss"]

    monkeypatch.setattr(d, "q_sample_index", record_x_t)
    monkeypatch.setattr(d, "_train_loss", record_loss)
    saved = (d.Lt_history.clone(), d.Lt_count.clone())
    d.train()
    try:
        for case in LOSS_CASES:
            p = f"loss_{case}_"
            d.Lt_history.copy_(exp[p + "Lt_history_before"])
            d.Lt_count.copy_(exp[p + "Lt_count_before"])
            if case == "forced":  # the fixture fixed t (no random call for it)
                forced = (exp[p + "t"], exp[p + "pt"])
                monkeypatch.setattr(d, "sample_time", lambda *a, **k: forced)
                seen["t"], seen["pt"] = forced
            else:
                monkeypatch.setattr(d, "sample_time", record_time)
            torch.manual_seed(int(exp[p + "seed"]))
            loss = d(model_input, return_loss=True)["loss"]
            assert torch.equal(seen["t"], exp[p + "t"]), (case, seen["t"], exp[p + "t"])
            rel_close(seen["pt"], exp[p + "pt"], what=p + "pt")
            assert torch.equal(seen["x_t"], exp[p + "x_t"]), case
            rel_close(seen["log_model_prob"], exp[p + "log_model_prob"], atol=NET_ATOL, what=p + "log_model_prob")
            rel_close(seen["vb_loss"].detach(), exp[p + "vb_loss"], what=p + "vb_loss")
            rel_close(loss.detach(), exp[p + "loss"], what=p + "loss")
            rel_close(d.Lt_history, exp[p + "Lt_history_after"], what=p + "Lt_history_after")
            assert torch.equal(d.Lt_count, exp[p + "Lt_count_after"]), case
    finally:
        d.eval()
        d.Lt_history.copy_(saved[0])
        d.Lt_count.copy_(saved[1])
