"""Reconstruction metrics of an image codec: L1, PSNR, rFID and codebook usage over a set of images.

Per image ``x`` and reconstruction ``x^`` (both ``(3, H, W)`` in ``[0, 255]``, the reconstruction clamped):

- ``l1 = mean |x - x^| / 127.5``: the mean absolute error in the ``[-1, 1]`` units the codecs train in;
- ``psnr = 10 log10(255^2 / mean (x - x^)^2)`` dB, averaged over images (a perfect image counts 100 dB);
- ``rfid``: the FID (Heusel et al., arXiv 1706.08500, Eq. 6) of the reconstructions against the inputs,
  the codec metric of VQGAN (arXiv 2012.09841, Tab. 2) and later work, with the TF-FID Inception from a user
  path (``vqdiff.evaluation.fid``; nothing is downloaded). Without the path ``rfid`` is None and
  ``rfid_note`` says why;
- ``codebook_usage`` (used codes / K) and ``perplexity`` (``exp`` of the code entropy) from the code counts
  (``vqdiff.evaluation.codebook.usage_statistics``).

Under ``torch.distributed`` every rank adds its shard and :meth:`CodecMetrics.compute` sums the counts, the
error sums and torchmetrics' FID states (feature sums, covariance sums, counts: all sums) over ranks itself, on
the device the backend needs (NCCL: CUDA), then computes once per rank from the global sums.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from vqdiff.evaluation.codebook import usage_statistics

__all__ = ["CodecMetrics", "NO_RFID_NOTE"]

NO_RFID_NOTE = ("rfid needs the TF-FID Inception weights (weights-inception-2015-12-05-6726825d.pth, as "
                "scripts/evaluate_fid.py --inception-weights takes them); none was given")


class CodecMetrics:
    """Accumulates the metrics of the module docstring; ``update`` per batch, ``compute`` at the end."""

    _FID_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples",
                   "fake_features_sum", "fake_features_cov_sum", "fake_features_num_samples")

    def __init__(self, num_codes: int, inception_path: Optional[str] = None, device: str = "cpu"):
        self.num_codes = int(num_codes)
        self.device = torch.device(device)
        self.sums = torch.zeros(3, dtype=torch.float64)  # l1 sum, psnr sum, images
        self.counts = torch.zeros(self.num_codes, dtype=torch.long)
        self.fid = None
        self.rfid_note: Optional[str] = NO_RFID_NOTE
        if inception_path:
            from vqdiff.evaluation.fid import InceptionMetrics, InceptionMetricsConfig

            self.fid = InceptionMetrics(InceptionMetricsConfig(inception_path, inception_score=False, device=device))
            self.rfid_note = None

    @torch.no_grad()
    def update(self, images: torch.Tensor, reconstructions: torch.Tensor, indices: torch.Tensor) -> None:
        """``images``, ``reconstructions``: ``(B, 3, H, W)`` in ``[0, 255]``; ``indices``: the codes used (any shape)."""
        x = images.detach().double().cpu()
        y = reconstructions.detach().double().cpu().clamp(0, 255)
        diff = (x - y).flatten(1)
        mse = diff.pow(2).mean(1)
        psnr = torch.where(mse > 0, 10 * torch.log10(255.0**2 / mse.clamp_min(1e-12)), torch.full_like(mse, 100.0))
        self.sums += torch.tensor([float(diff.abs().mean(1).sum() / 127.5), float(psnr.sum()), x.shape[0]],
                                  dtype=torch.float64)
        self.counts += torch.bincount(indices.reshape(-1).cpu(), minlength=self.num_codes)[: self.num_codes]
        if self.fid is not None:
            self.fid.update(x.round().to(torch.uint8), real=True)
            self.fid.update(y.round().to(torch.uint8), real=False)

    def _sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over ranks (sent through ``self.device``: NCCL reduces CUDA tensors only)."""
        out = tensor.to(self.device)
        torch.distributed.all_reduce(out)
        return out.to(tensor.device)

    def _rfid(self, distributed: bool) -> tuple[Optional[float], Optional[str]]:
        fid = self.fid.fid  # the torchmetrics FrechetInceptionDistance of InceptionMetrics
        if distributed:
            for name in self._FID_STATES:
                setattr(fid, name, self._sum_over_ranks(getattr(fid, name)))
        fid.sync_on_compute = False  # summed above (or one process): torchmetrics must not gather again
        fid._to_sync = False
        n = min(int(fid.real_features_num_samples), int(fid.fake_features_num_samples))
        if n < 2:
            return None, f"rfid needs at least 2 images, got {n}"
        value = float(fid.compute())
        return (None, "rfid is not a number (too few images for the covariance?)") if math.isnan(value) else (value, None)

    def compute(self, distributed: bool = False) -> dict:
        """``{'l1', 'psnr', 'rfid', 'codebook_usage', 'perplexity', 'codes_used', 'num_codes', 'num_images'}``
        (and ``'rfid_note'`` when rfid is None); collective when ``distributed``. Call once."""
        sums, counts = self.sums, self.counts
        if distributed:
            sums, counts = self._sum_over_ranks(sums), self._sum_over_ranks(counts)
        n = max(float(sums[2]), 1.0)
        stats = usage_statistics(counts)
        out = {"l1": float(sums[0]) / n, "psnr": float(sums[1]) / n, "rfid": None,
               "codebook_usage": float(stats["usage"]), "perplexity": float(stats["perplexity"]),
               "codes_used": int(stats["used"]), "num_codes": self.num_codes, "num_images": int(sums[2])}
        note = self.rfid_note
        if self.fid is not None:
            out["rfid"], note = self._rfid(distributed)
        if out["rfid"] is None:
            out["rfid_note"] = note
        return out
