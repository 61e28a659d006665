"""FID / IS / KID through torchmetrics on torch-fidelity's TF-Inception, weights read from a path (never downloaded).

The weights are a randomly initialised ``FeatureExtractorInceptionV3`` saved to a temporary file; every test
here runs with torch-fidelity's download function replaced by one that fails, so a download attempt cannot pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vqdiff.evaluation.fid import WEIGHTS_ARGUMENT, InceptionMetrics, InceptionMetricsConfig, resolve_inception_weights


def save_random_tf_inception(path: Path, seed: int = 0) -> Path:
    """A random-init TF-FID Inception state dict at ``path`` (He-initialised so features are not ~1e-8)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    class _Unloaded(tfi.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random init
            return None

    original = tfi.load_state_dict_from_url
    tfi.load_state_dict_from_url = lambda *a, **k: {}
    try:
        torch.manual_seed(seed)
        net = _Unloaded("inception-v3-compat", ["2048"])
    finally:
        tfi.load_state_dict_from_url = original
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=m.in_features ** -0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download Inception weights")

    monkeypatch.setattr(tfi, "load_state_dict_from_url", refuse)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_random_tf_inception(tmp_path_factory.mktemp("tf_inception") / "inception_random.pth")


def _images(seed: int, n: int, low: int = 0, high: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def test_fid_is_zero_only_for_the_same_images_whatever_their_dtype(weights):
    images = _images(0, 6)
    rng = torch.get_rng_state()
    metrics = InceptionMetrics(InceptionMetricsConfig(weights, inception_score=False))
    assert torch.equal(torch.get_rng_state(), rng)  # building the Inception leaves the global RNG alone
    # float pixels (as the project's image loaders give) on one side, int64 on the other: the same uint8 images
    metrics.update_all(images.float().split(4), real=True)
    metrics.update_all(images.long().split(4), real=False)
    out = metrics.compute()
    assert out["num_real"] == out["num_fake"] == 6
    assert out["fid"] == pytest.approx(0.0, abs=1e-4)
    # ... and not for other images (a metric stuck at 0 would pass the line above): symmetric and positive
    other = _images(5, 6)
    fids = []
    for first, second in ((images, other), (other, images)):
        pair = InceptionMetrics(InceptionMetricsConfig(weights, inception_score=False))
        pair.update(first, real=True)
        pair.update(second, real=False)
        fids.append(pair.compute()["fid"])
    assert fids[0] > 1e-2 and fids[0] == pytest.approx(fids[1], rel=1e-3)


def test_metrics_match_torchmetrics_computed_directly(weights):
    from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _images(1, 6, 0, 200), _images(2, 6, 60, 256)
    config = InceptionMetricsConfig(weights, kid=True, is_splits=2, kid_subsets=5, kid_subset_size=4, seed=3)
    ours = InceptionMetrics(config)
    ours.update_all([real[:3], real[3:]], real=True)
    ours.update(fake, real=False)
    got = ours.compute()

    # the library on its own, with the same file and the TF1 resize (antialias=False) of the paper protocol
    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights), antialias=False)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    assert got["fid"] > 1e-3
    assert got["fid"] == pytest.approx(float(fid.compute()), rel=1e-4)

    def inception(feature: str):
        return NoTrainInceptionV3("inception-v3-compat", [feature], feature_extractor_weights_path=str(weights),
                                  antialias=False)

    is_metric = InceptionScore(feature=inception("logits_unbiased"), splits=2)
    is_metric.update(fake)
    kid = KernelInceptionDistance(feature=inception("2048"), subsets=5, subset_size=4)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    torch.manual_seed(3)  # IS permutes the rows, KID draws subsets: the seed ours uses
    is_mean, is_std = is_metric.compute()
    kid_mean, kid_std = kid.compute()
    assert got["inception_score"] == pytest.approx(float(is_mean), rel=1e-4)
    assert got["inception_score_std"] == pytest.approx(float(is_std), rel=1e-3, abs=1e-6)
    assert got["kid"] == pytest.approx(float(kid_mean), rel=1e-4)
    assert got["kid_std"] == pytest.approx(float(kid_std), rel=1e-3, abs=1e-9)
    # the seed makes IS / KID repeat
    assert ours.compute() == got


def test_weights_path_is_required_and_checked(tmp_path, weights):
    with pytest.raises(ValueError, match=WEIGHTS_ARGUMENT):
        InceptionMetrics(InceptionMetricsConfig(None))
    with pytest.raises(FileNotFoundError, match=f"{WEIGHTS_ARGUMENT}.*no_inception.pth"):
        resolve_inception_weights(tmp_path / "no_inception.pth")
    torchvision_like = tmp_path / "tv_inception.pth"
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, torchvision_like)
    with pytest.raises(ValueError, match="1000 classes.*torchvision"):
        resolve_inception_weights(torchvision_like)
    truncated = tmp_path / "truncated.pth"
    sd = torch.load(weights, weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.startswith("Mixed_7c")}, truncated)
    with pytest.raises(ValueError, match="(?s)truncated.pth.*Mixed_7c"):
        InceptionMetrics(InceptionMetricsConfig(truncated))


def test_bad_images_and_too_few_images(weights):
    metrics = InceptionMetrics(InceptionMetricsConfig(weights, is_splits=4))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        metrics.update(torch.rand(2, 3, 8, 8) * 2 - 1, real=True)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        metrics.update(torch.full((2, 3, 8, 8), 256), real=True)
    with pytest.raises(ValueError, match="shape"):
        metrics.update(torch.zeros(2, 1, 8, 8), real=True)
    metrics.update(_images(0, 2), real=True)
    metrics.update(_images(1, 1), real=False)
    with pytest.raises(ValueError, match="2 real and 2 generated.*got 2 and 1"):
        metrics.compute()
