"""FID, Inception Score and KID through ``torchmetrics``, on torch-fidelity's port of the TensorFlow FID Inception.

The numbers papers report (VQ-Diffusion included) come from the TensorFlow FID Inception
(``pt_inception-2015-12-05``) with its TF1 bilinear resize to 299x299. torch-fidelity ports both
(``FeatureExtractorInceptionV3``, weights ``weights-inception-2015-12-05-6726825d.pth``); torchmetrics builds
its metrics on that port. This module:

- loads the Inception **only from a path the user gives** (``feature_extractor_weights_path``); nothing is
  downloaded (torch-fidelity would fetch the weights when given no path, so no path is an error here);
- runs it once per image batch for the 2048-d pool features and the 1008 unbiased logits, and feeds those to
  torchmetrics' ``FrechetInceptionDistance`` (Heusel et al., arXiv 1706.08500, Eq. 6:
  ``||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})``), ``InceptionScore`` (Salimans et al.,
  arXiv 1606.03498: ``exp(E_x KL(p(y|x) || p(y)))`` over splits) and ``KernelInceptionDistance``
  (Binkowski et al., arXiv 1801.01401: the cubic-kernel MMD^2 over random subsets). Their own math is used
  as is; only the one shared feature pass is ours (torchmetrics would run one Inception per metric, and its
  IS / KID constructors take no weights path).

Images are ``(B, 3, H, W)`` in [0, 255] (uint8, or float holding integer values as the project's loaders
give); any size, resized inside the extractor as the TF protocol does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

__all__ = [
    "WEIGHTS_ARGUMENT",
    "TF_INCEPTION_FILE",
    "InceptionMetricsConfig",
    "resolve_inception_weights",
    "load_tf_inception",
    "InceptionMetrics",
]

WEIGHTS_ARGUMENT = "feature_extractor_weights_path"
# the file torch-fidelity converts from the TensorFlow FID graph (its release v0.2.0)
TF_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
_NUM_TF_CLASSES = 1008  # the TF Inception has 1008 outputs; torchvision's ImageNet Inception has 1000
_FEATURES = ("2048", "logits_unbiased")


@dataclass(frozen=True)
class InceptionMetricsConfig:
    """Which metrics to compute and their settings (torchmetrics' defaults unless said).

    Attributes:
        feature_extractor_weights_path: torch-fidelity's TF-Inception state dict (``TF_INCEPTION_FILE``).
        fid / inception_score / kid: compute each metric.
        is_splits: Inception Score splits (10 in the papers; at most the number of generated images).
        kid_subsets / kid_subset_size: KID's random subsets (torchmetrics: 100 of 1000).
        device: where the Inception runs.
        seed: seeds the random split order (IS) and subsets (KID) so a result repeats; the global RNG is
            left as it was.
    """

    feature_extractor_weights_path: str | Path | None
    fid: bool = True
    inception_score: bool = True
    kid: bool = False
    is_splits: int = 10
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    device: str = "cpu"
    seed: int = 0


def resolve_inception_weights(path: str | Path | None) -> Path:
    """Check ``path`` holds the TF-FID Inception weights and return it; never downloads.

    Raises:
        ValueError: no path given, or the file is not a TF-Inception state dict (names the argument / file).
        FileNotFoundError: the file is absent (names the argument and the path).
    """
    if path is None:
        raise ValueError(
            f"{WEIGHTS_ARGUMENT} is required: the Inception weights are never downloaded. Put torch-fidelity's "
            f"{TF_INCEPTION_FILE} (the TensorFlow FID Inception) on disk and give its path (see docs/evaluation.md)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{WEIGHTS_ARGUMENT}={str(path)!r}: no such file; nothing is downloaded -- put torch-fidelity's "
            f"{TF_INCEPTION_FILE} there (see docs/evaluation.md)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)  # refuse pickled code before torch-fidelity reads it
    except Exception as err:
        raise ValueError(f"{WEIGHTS_ARGUMENT}={str(path)!r} is not a readable state dict: {err}") from err
    if not isinstance(sd, dict) or "fc.weight" not in sd:
        raise ValueError(f"{WEIGHTS_ARGUMENT}={str(path)!r} has no 'fc.weight': not an Inception-v3 state dict")
    classes = sd["fc.weight"].shape[0]
    if classes != _NUM_TF_CLASSES:
        raise ValueError(
            f"{WEIGHTS_ARGUMENT}={str(path)!r} has {classes} classes, the TF FID Inception has {_NUM_TF_CLASSES}: "
            f"{'torchvision ImageNet weights do not give FIDs comparable with papers; ' if classes == 1000 else ''}"
            f"use torch-fidelity's {TF_INCEPTION_FILE}")
    return path


def load_tf_inception(path: str | Path | None, device: str | torch.device = "cpu") -> nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` from ``path``, giving ``(pool (B, 2048), logits_unbiased
    (B, 1008))`` for uint8 ``(B, 3, H, W)`` images (TF1 bilinear resize to 299, scaled to [-1, 1])."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = resolve_inception_weights(path)
    try:
        with torch.random.fork_rng(devices=[]):  # its layers are randomly initialised before loading: keep the RNG
            net = FeatureExtractorInceptionV3("inception-v3-compat", list(_FEATURES),
                                              feature_extractor_weights_path=str(path))
    except RuntimeError as err:  # load_state_dict: missing / unexpected keys or shapes
        raise ValueError(f"{WEIGHTS_ARGUMENT}={str(path)!r} does not fit torch-fidelity's Inception: "
                         f"{str(err)[:400]}") from err
    return net.to(device)


class _Precomputed(nn.Module):
    """The torchmetrics ``feature`` module for features computed beforehand: the identity (``num_features`` is
    what torchmetrics' FID reads to size its sums)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [0, 255], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if images.numel() and (images.min() < 0 or images.max() > 255):
        raise ValueError(f"images must lie in [0, 255], got values in [{images.min().item():.3g}, "
                         f"{images.max().item():.3g}] (pass pixels, not [-1, 1] or [0, 1] tensors)")
    return (images.round() if images.is_floating_point() else images).to(torch.uint8)


class InceptionMetrics:
    """FID / IS / KID between real and generated images with one Inception pass per batch.

    ``update(images, real)`` adds a batch; ``compute()`` returns a dict with ``fid``, ``inception_score`` /
    ``inception_score_std`` (of the generated images), ``kid`` / ``kid_std``, ``num_real``, ``num_fake`` (the
    metrics not enabled are absent). Memory: FID keeps float64 sums; IS and KID keep every feature row
    (1008 / 2048 floats per image), as torchmetrics does.
    """

    def __init__(self, config: InceptionMetricsConfig):
        import warnings

        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore
        from torchmetrics.image.kid import KernelInceptionDistance

        self.config = config
        self.extractor = load_tf_inception(config.feature_extractor_weights_path, config.device)
        self.num_real = self.num_fake = 0
        self.fid = FrechetInceptionDistance(feature=_Precomputed(2048)) if config.fid else None
        with warnings.catch_warnings():  # "will save all extracted features": known, documented above
            warnings.filterwarnings("ignore", message=".*save all extracted features.*")
            self.inception_score = InceptionScore(feature=_Precomputed(1008), splits=config.is_splits) \
                if config.inception_score else None
            self.kid = KernelInceptionDistance(feature=_Precomputed(2048), subsets=config.kid_subsets,
                                               subset_size=config.kid_subset_size) if config.kid else None

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pool (B, 2048), logits_unbiased (B, 1008))`` on the CPU, float32."""
        pool, logits = self.extractor(_as_uint8(images).to(self.config.device))
        return pool.float().cpu(), logits.float().cpu()

    def update(self, images: torch.Tensor, real: bool) -> None:
        pool, logits = self.features(images)
        if real:
            self.num_real += len(pool)
        else:
            self.num_fake += len(pool)
            if self.inception_score is not None:
                self.inception_score.update(logits)
        if self.fid is not None:
            self.fid.update(pool, real=real)
        if self.kid is not None:
            self.kid.update(pool, real=real)

    def update_all(self, batches: Iterable[torch.Tensor], real: bool) -> None:
        for batch in batches:
            self.update(batch, real)

    def compute(self) -> dict[str, float | int]:
        """The enabled metrics as floats, with the image counts.

        Raises:
            ValueError: too few images for a metric (FID needs 2 per side; IS at least ``is_splits`` generated;
                KID at least ``kid_subset_size`` per side), naming the counts.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return self._compute()

    def _compute(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"num_real": self.num_real, "num_fake": self.num_fake}
        if self.fid is not None:
            if min(self.num_real, self.num_fake) < 2:
                raise ValueError(f"FID needs at least 2 real and 2 generated images, got {self.num_real} and "
                                 f"{self.num_fake}")
            out["fid"] = float(self.fid.compute())
        if self.inception_score is not None:
            if self.num_fake < self.config.is_splits:
                raise ValueError(f"Inception Score with is_splits={self.config.is_splits} needs as many generated "
                                 f"images, got {self.num_fake}")
            mean, std = self.inception_score.compute()
            out.update({"inception_score": float(mean), "inception_score_std": float(std)})
        if self.kid is not None:
            if min(self.num_real, self.num_fake) < self.config.kid_subset_size:
                raise ValueError(f"KID with kid_subset_size={self.config.kid_subset_size} needs as many real and "
                                 f"generated images, got {self.num_real} and {self.num_fake}")
            mean, std = self.kid.compute()
            out.update({"kid": float(mean), "kid_std": float(std)})
        return out
