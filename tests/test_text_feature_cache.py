"""Frozen text-tower features cached per caption during training (``TextFeatureCache``)."""

from __future__ import annotations

import copy

import pytest
import torch

from _app_parts import TINY_CONFIG, working_directory
from vqdiff.inference.loading import build_model, prepare_config
from vqdiff.modeling.embeddings.text_feature_cache import TextFeatureCache, cached_embedding
from vqdiff.utils.tiny_parts import write_tiny_parts


class CountingTower(torch.nn.Module):
    """(B, L) ids -> (B, L, 3) features; counts calls and rows."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(50, 3), requires_grad=False)
        self.rows = 0
        self.calls = 0

    def forward(self, ids):
        self.calls += 1
        self.rows += ids.shape[0]
        return self.w[ids] * 2


def _ids(*rows):
    return torch.tensor([[r, r + 1, 0] for r in rows])


def test_the_tower_runs_once_per_distinct_caption_within_the_bound():
    tower, cache = CountingTower(), TextFeatureCache(3)
    a = cache(_ids(1, 2, 1), tower)
    assert torch.equal(a, tower.w[_ids(1, 2, 1)] * 2) and tower.rows == 2  # the repeated row once
    b = cache(_ids(2, 1, 3), tower)
    assert torch.equal(b, tower.w[_ids(2, 1, 3)] * 2) and tower.rows == 3 and tower.calls == 2
    assert (cache.hits, cache.misses, len(cache)) == (3, 3, 3)
    cache(_ids(4), tower)  # over the bound: the least recently used caption (2) goes
    cache(_ids(1, 3), tower)
    assert tower.rows == 4
    cache(_ids(2), tower)
    assert tower.rows == 5 and len(cache) == 3
    # a batch with more distinct captions than the bound is still answered whole
    assert torch.equal(cache(_ids(5, 6, 7, 8), tower), tower.w[_ids(5, 6, 7, 8)] * 2) and len(cache) == 3
    with pytest.raises(ValueError, match="cache size must be an int >= 1"):
        TextFeatureCache(0)


def test_trainable_towers_and_class_labels_are_never_cached():
    tower, cache = CountingTower(), TextFeatureCache(8)
    cached_embedding(cache, tower, _ids(1))
    cached_embedding(cache, tower, _ids(1))
    assert tower.calls == 1
    tower.w.requires_grad_(True)
    cached_embedding(cache, tower, _ids(1))
    assert tower.calls == 2
    tower.w.requires_grad_(False)
    labels = torch.tensor([1, 2])
    assert torch.equal(cached_embedding(cache, lambda x: x + 1, labels), labels + 1)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """The tiny text DALLE (real CLIP tower and network, random weights), with the cache off and on (config)."""
    root = tmp_path_factory.mktemp("textcache")
    with working_directory(root):
        write_tiny_parts(root)
        cfg = prepare_config(str(TINY_CONFIG))
        torch.manual_seed(0)
        off = build_model(cfg)
        cfg["model"]["params"]["diffusion_config"]["params"]["condition_feature_cache"] = 16
        on = build_model(cfg)
    on.load_state_dict(off.state_dict())
    return off, on


def _step(model, texts, seed):
    tokens = torch.randint(0, 16, (len(texts), 16), generator=torch.Generator().manual_seed(seed))
    batch = {"text": texts, "content_token": tokens}
    model.zero_grad(set_to_none=True)
    loss = model(batch, generator=torch.Generator().manual_seed(seed))["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_cached_training_steps_equal_uncached_ones_bit_for_bit(tiny_models, one_thread):
    off, on = (copy.deepcopy(m).train() for m in tiny_models)
    cache = on.transformer.condition_feature_cache
    assert off.transformer.condition_feature_cache is None and cache is not None and len(cache) == 0
    calls = []
    on.transformer.condition_emb.register_forward_hook(lambda *a: calls.append(1))
    texts = ["a red circle at the top left", "a blue square", "a green shape on a gray background", ""]
    for step in range(3):  # a batch of new captions, then the same batch read back from the cache
        loss_off, grads_off = _step(off, texts, step)
        loss_on, grads_on = _step(on, texts, step)
        assert torch.equal(loss_off, loss_on) and grads_off.keys() == grads_on.keys() and len(grads_on) > 3
        assert all(torch.equal(grads_off[n], grads_on[n]) for n in grads_off)
    assert len(calls) == 1 and cache.hits == 8 and cache.misses == 4  # the tower ran once for 3 steps
    # partly known captions and repeats: the same features up to the last bits of the tower's matmuls
    mixed = ["a blue square", "a yellow triangle", "a yellow triangle", ""]
    loss_off, grads_off = _step(off, mixed, 5)
    loss_on, grads_on = _step(on, mixed, 5)
    assert torch.allclose(loss_off, loss_on, rtol=1e-5, atol=1e-7) and len(calls) == 2
    assert all(torch.allclose(grads_off[n], grads_on[n], rtol=1e-4, atol=1e-6) for n in grads_off)
    on.load_state_dict(off.state_dict())  # new weights: the cached features are forgotten
    assert len(cache) == 0
