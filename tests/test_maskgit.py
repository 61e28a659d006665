"""The MaskGIT confidence-ordered sampler on a discrete-diffusion model (tiny fake parts)."""

from __future__ import annotations

import pytest
import torch

from vqdiff.modeling.diffusion.samplers import Denoiser
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions
from vqdiff.modeling.diffusion.maskgit import mask_ratio, maskgit_timesteps, sample_maskgit

from _fake_parts import K, T, D, N, make_diffusion, dalle, gen


# ------------------------------------------------------------------------------------------- MaskGIT
def test_maskgit_exactly_s_calls_schedule_and_all_revealed():
    d = make_diffusion()
    calls = []

    class CountingDenoiser(Denoiser):
        def __call__(self, x, t):
            calls.append(t.clone())
            return super().__call__(x, t)

    options = SamplingOptions(truncation_rate=None, maskgit_schedule="linear", generator=gen(0))
    denoise = CountingDenoiser(d, torch.randn(2, 4, D), None, options)
    x = torch.full((2, N), K, dtype=torch.long)
    masked_after = []
    S_ = 4
    steps = maskgit_timesteps(T, S_, "linear")
    out = sample_maskgit(denoise, x, steps, options,
                         callback=lambda i: masked_after.append((i["x"] == K).sum(1).tolist()))
    assert len(calls) == S_ and steps[0] == T - 1 and steps == sorted(steps, reverse=True)
    assert masked_after == [[12, 12], [8, 8], [4, 4], [0, 0]]  # floor(16 * (1 - (i+1)/4)), hand count
    assert not bool((out == K).any())
    assert mask_ratio("cosine", 1.0) == 0.0 and mask_ratio("cosine", 0.0) == 1.0
    with pytest.raises(ValueError, match="mask schedule"):
        mask_ratio("zigzag", 0.5)


@pytest.mark.parametrize("S_", [1, 3, 7])
def test_maskgit_from_generate_content_counts_network_calls(S_):
    m = dalle()
    net = m.transformer.transformer
    history = []
    out = m.generate_content(batch={"text": ["a red circle"]}, filter_ratio=0, replicate=2,
                             sample_type=f"top0.85r,maskgit{S_}:cosine", guidance_scale=3.0, generator=gen(0),
                             callback=lambda i: history.append(i["x"].clone()))
    assert len(net.calls) == S_  # one batched (cond + uncond) network call per step
    assert all(bs == 4 for bs, _ in net.calls)
    assert not bool((out["content_token"] == K).any())
    for prev, cur in zip(history, history[1:]):  # once revealed, a token stays
        kept = prev != K
        assert torch.equal(cur[kept], prev[kept])
        assert int((cur == K).sum()) < int((prev == K).sum())
    with pytest.raises(ValueError, match="mask schedule"):
        SamplingOptions.from_sample_type("maskgit4:zigzag")
