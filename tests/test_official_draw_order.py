"""The training time step is drawn with the official random calls in the official order (no fixture
needed): ``torch.randint`` alone while any ``Lt_count <= 10``, then ``torch.multinomial`` alone. The
seeded official steps in ``tests/test_official_{ithq,uncond}.py`` depend on it."""

from __future__ import annotations

import pytest
import torch

from vqdiff.modeling.diffusion import DiffusionTransformer

T, B = 10, 6
CPU = torch.device("cpu")


class _NoNet(torch.nn.Module):
    content_seq_len = 4

    def forward(self, x, cond, t):  # pragma: no cover - sample_time never calls the network
        raise AssertionError("not used")


def make() -> DiffusionTransformer:
    return DiffusionTransformer(content_emb_config={"params": {"num_embed": 5}}, transformer_config=_NoNet(),
                                diffusion_step=T)


def draw(d: DiffusionTransformer, method: str, seed: int = 5):
    torch.manual_seed(seed)
    t, pt = d.sample_time(B, CPU, method)
    return t, pt, torch.rand(3)  # the next draw shows how much of the RNG stream was used


@pytest.mark.parametrize("method", ["uniform", "importance"])
def test_uniform_draw_is_one_randint(method):
    d = make()
    d.Lt_count.fill_(11)
    d.Lt_count[3] = 10  # one step seen only 10 times: importance sampling is not ready yet
    t, pt, after = draw(d, method)
    torch.manual_seed(5)
    assert torch.equal(t, torch.randint(0, T, (B,)))
    assert torch.equal(after, torch.rand(3))
    assert torch.equal(pt, torch.full((B,), 1.0 / T))


def test_importance_draw_is_one_multinomial_once_every_step_was_seen_more_than_10_times():
    d = make()
    d.Lt_count.fill_(11)
    d.Lt_history.copy_(torch.linspace(1.0, 10.0, T) ** 2)
    t, pt, after = draw(d, "importance")
    w = torch.linspace(1.0, 10.0, T) + 1e-4
    w[0] = w[1]  # the decoder term takes L_1's weight
    torch.manual_seed(5)
    ref_t = torch.multinomial(w / w.sum(), B, replacement=True)
    assert torch.equal(t, ref_t)
    assert torch.equal(after, torch.rand(3))
    torch.testing.assert_close(pt, (w / w.sum())[ref_t], rtol=1e-5, atol=1e-7)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="'stratified'"):
        make().sample_time(B, CPU, "stratified")
