"""FID and Inception Score, with Inception-v3 weights taken from a path the user gives (never downloaded).

- Fréchet Inception Distance (Heusel et al., arXiv 1706.08500, Eq. 6):
  ``FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})`` over the 2048-d pool features.
- Inception Score (Salimans et al., arXiv 1606.03498, Sec. 4):
  ``IS = exp(E_x KL(p(y|x) || p(y)))``, computed on ``splits`` equal parts and reported as mean and std.

The extractor is torchvision's Inception-v3 architecture. Numbers are comparable with published ones only
when the weights are the ones the published protocol used: papers (VQ-Diffusion included) use the
TensorFlow FID Inception (``pt_inception-2015-12-05``), whose architecture differs slightly from
torchvision's; with torchvision's ImageNet weights the FID is close to but not identical to the paper's.
See docs/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import linalg
from tqdm.auto import tqdm

__all__ = [
    "FeatureStatistics",
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "InceptionFeatureExtractor",
    "load_inception_state_dict",
    "compute_fid",
    "compute_inception_score",
]


class FeatureStatistics:
    """Streaming mean and covariance of feature rows, accumulated in float64.

    ``update(features (B, D))`` adds rows; ``mean`` is ``(D,)`` and ``cov`` the unbiased ``(D, D)``
    covariance (``np.cov(features, rowvar=False)``) of every row seen.
    """

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.n = 0
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        f = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(
            features, dtype=np.float64)
        if f.ndim != 2:
            raise ValueError(f"features must be (B, D), got shape {f.shape}")
        if self.dim is None:
            self.dim = f.shape[1]
        if f.shape[1] != self.dim:
            raise ValueError(f"feature dimension {f.shape[1]} != {self.dim} of the earlier features")
        if self._sum is None:
            self._sum = np.zeros(self.dim)
            self._outer = np.zeros((self.dim, self.dim))
        self._sum += f.sum(0)
        self._outer += f.T @ f
        self.n += f.shape[0]

    @property
    def mean(self) -> np.ndarray:
        if self.n == 0:
            raise ValueError("no features accumulated")
        return self._sum / self.n

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature rows, got {self.n}")
        mu = self.mean
        # sum (x - mu)(x - mu)^T = sum x x^T - n mu mu^T ; unbiased -> / (n - 1)
        return (self._outer - self.n * np.outer(mu, mu)) / (self.n - 1)


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N, D)`` features -> ``(mu (D,), sigma (D, D))`` in float64 (unbiased covariance, as np.cov)."""
    f = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(
        features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, D), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (arXiv 1706.08500, Eq. 6).

    ``d^2 = ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^{1/2})``.
    As the standard implementations do: when the product is near singular (the square root is not
    finite) ``eps * I`` is added to both covariances; a complex square root whose imaginary part is
    numerical noise (diagonal |imag| <= 1e-3) is replaced by its real part, a larger one is an error.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"covariances must both be ({mu1.shape[0]}, {mu1.shape[0]}), "
                         f"got {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        max_imag = np.max(np.abs(np.diagonal(covmean).imag))
        if max_imag > 1e-3:
            raise ValueError(f"sqrtm of the covariance product has an imaginary component {max_imag:.3g}")
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(value)


def inception_score(probs: torch.Tensor | np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` from class probabilities ``(N, C)`` (arXiv 1606.03498).

    The rows are cut into ``splits`` consecutive parts; ``p(y)`` is each part's mean. Returns (mean, std)
    of the per-part scores. Uniform predictions give 1; confident predictions spread evenly over C
    classes give C.
    """
    p = probs.detach().cpu().double().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {p.shape}")
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"splits must be in 1..N={p.shape[0]}, got {splits}")
    if (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise ValueError("probs rows must be non-negative and sum to 1 (pass softmax outputs, not logits)")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)
        # 0 * log 0 = 0: clip only inside the log
        kl = (part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(py, 1e-30, None)))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def load_inception_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an Inception-v3 state dict (plain, or under 'state_dict'/'model'); AuxLogits.* keys are dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception-v3 weights not found at {path}; nothing is downloaded -- put a torchvision "
            f"inception_v3 state dict there (see docs/evaluation.md)")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    return {k.removeprefix("module."): v for k, v in sd.items() if not k.startswith("AuxLogits.")}


class InceptionFeatureExtractor(nn.Module):
    """torchvision Inception-v3 with user-given weights: images -> pool features and logits.

    ``forward(images (B, 3, H, W) in [0, 255]) -> {'pool': (B, 2048), 'logits': (B, num_classes)}``.
    Images are resized to 299x299 (bilinear) and scaled to [-1, 1] -- the input the Google Inception
    weights expect (torchvision's ``transform_input`` produces the same from ImageNet-normalised input).
    """

    def __init__(self, weights_path: str | Path, device: str | torch.device = "cpu", resize: int = 299):
        super().__init__()
        from torchvision.models import inception_v3

        sd = load_inception_state_dict(weights_path)
        if "fc.weight" not in sd:
            raise KeyError(f"{weights_path} has no 'fc.weight'; is it an Inception-v3 state dict?")
        num_classes = sd["fc.weight"].shape[0]
        net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False,
                           num_classes=num_classes)
        missing, unexpected = net.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise KeyError(f"{weights_path} does not match torchvision inception_v3: missing {missing[:5]}"
                           f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                           f"{'...' if len(unexpected) > 5 else ''}")
        self.net = net.eval().requires_grad_(False).to(device)
        self.resize = int(resize)
        self.num_classes = num_classes

    @property
    def device(self) -> torch.device:
        return self.net.fc.weight.device

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 255], got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        if x.shape[-2:] != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        x = x / 127.5 - 1.0
        n = self.net
        # the torchvision forward, stopped at the pool to keep the 2048-d features
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"):
            x = getattr(n, name)(x)
        pool = torch.flatten(x, 1)  # (B, 2048)
        logits = n.fc(pool)  # dropout is the identity in eval mode
        return {"pool": pool, "logits": logits}


def _batches(images: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    for batch in images:
        if isinstance(batch, dict):
            batch = batch["image"]
        batch = torch.as_tensor(batch)
        if batch.dim() == 3:
            batch = batch.unsqueeze(0)
        yield batch


def _accumulate(images: Iterable[torch.Tensor], extractor: nn.Module, desc: str, progress: bool,
                stats: FeatureStatistics | None = None, probs: list | None = None) -> int:
    n = 0
    for batch in tqdm(_batches(images), desc=desc, disable=not progress, unit="batch"):
        out = extractor(batch)
        if stats is not None:
            stats.update(out["pool"])
        if probs is not None:
            probs.append(out["logits"].double().softmax(-1).cpu())
        n += batch.shape[0]
    return n


def compute_fid(
    real_images: Iterable[torch.Tensor],
    fake_images: Iterable[torch.Tensor],
    extractor: nn.Module,
    progress: bool = True,
) -> float:
    """FID between two streams of image batches ``(B, 3, H, W)`` in [0, 255] (or dicts with 'image').

    Features are reduced batch by batch into float64 sums, so memory does not grow with the number of
    images. ``extractor(images)['pool']`` gives the features (an :class:`InceptionFeatureExtractor`).
    """
    real, fake = FeatureStatistics(), FeatureStatistics()
    _accumulate(real_images, extractor, "FID features (real)", progress, stats=real)
    _accumulate(fake_images, extractor, "FID features (generated)", progress, stats=fake)
    return frechet_distance(real.mean, real.cov, fake.mean, fake.cov)


def compute_inception_score(
    images: Iterable[torch.Tensor], extractor: nn.Module, splits: int = 10, progress: bool = True
) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) of a stream of image batches, from the extractor's logits."""
    probs: list[torch.Tensor] = []
    _accumulate(images, extractor, "IS logits", progress, probs=probs)
    if not probs:
        raise ValueError("no images given")
    return inception_score(torch.cat(probs), splits=splits)
