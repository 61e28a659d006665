"""Sampling on the CPU flushes denormal floats inside the call and restores the caller's setting after."""

from __future__ import annotations

import pytest
import torch

from benchmarks import perf
from vqdiff.utils.denormals import flush_denormal_enabled, flush_denormals


@pytest.fixture(scope="module")
def diffusion():
    torch.manual_seed(0)
    size = perf.reference_size(quick=True)
    size.update(T=4, layers=1)
    return perf.build_text2image_diffusion(size).eval(), size


@pytest.fixture(autouse=True)
def _restore_flag():
    before = flush_denormal_enabled()
    if not torch.set_flush_denormal(before):  # returns whether the CPU supports the setting at all
        pytest.skip("this CPU cannot flush denormals (torch.set_flush_denormal returns False)")
    yield
    torch.set_flush_denormal(before)


def _sample(d, size, **kw):
    cond = torch.randn(2, size["cond_len"], size["cond_dim"])
    return d.sample(condition_embed=cond, filter_ratio=0.0, generator=torch.Generator().manual_seed(0), **kw)


def test_probe_reads_the_flag():
    torch.set_flush_denormal(False)
    assert not flush_denormal_enabled() and torch.tensor([1e-39]).item() != 0.0
    torch.set_flush_denormal(True)
    assert flush_denormal_enabled() and torch.tensor([1e-39]).mul(1.0).item() == 0.0


@pytest.mark.parametrize("before", [False, True])
def test_context_restores_the_previous_setting_also_on_error(before):
    torch.set_flush_denormal(before)
    with flush_denormals() as active:
        assert active and flush_denormal_enabled()
    assert flush_denormal_enabled() == before
    with pytest.raises(RuntimeError, match="boom"):
        with flush_denormals():
            raise RuntimeError("boom")
    assert flush_denormal_enabled() == before
    with flush_denormals(enabled=False) as active:
        assert active == before and flush_denormal_enabled() == before


def test_sampling_flushes_inside_and_restores_after(diffusion):
    d, size = diffusion
    torch.set_flush_denormal(False)
    seen: list[bool] = []
    out = _sample(d, size, callback=lambda info: seen.append(flush_denormal_enabled()))
    assert out["content_token"].shape == (2, size["side"] ** 2)
    assert seen and all(seen)  # every step ran with denormals flushed
    assert not flush_denormal_enabled()  # and the caller's setting is back

    # the opt-out (to measure the denormal cost) leaves the flag alone
    seen.clear()
    _sample(d, size, callback=lambda info: seen.append(flush_denormal_enabled()), flush_denormals=False)
    assert seen and not any(seen)

    # an exception inside the sampler restores the setting too
    def fail(info):
        raise RuntimeError("stop in step")

    with pytest.raises(RuntimeError, match="stop in step"):
        _sample(d, size, callback=fail)
    assert not flush_denormal_enabled()


def test_sample_fast_goes_through_the_same_entry(diffusion):
    d, size = diffusion
    torch.set_flush_denormal(False)
    seen: list[bool] = []
    cond = torch.randn(2, size["cond_len"], size["cond_dim"])
    d.sample_fast(condition_embed=cond, filter_ratio=0.0, skip_step=1,
                  callback=lambda info: seen.append(flush_denormal_enabled()))
    assert seen and all(seen) and not flush_denormal_enabled()
