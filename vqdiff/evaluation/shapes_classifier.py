"""Text-following accuracy on the synthetic shapes: a small attribute classifier and its report.

A generated image for the caption "a red circle at the top left on a gray background" follows the text
when a classifier trained on *real* synthetic images reads back red / circle / top left from it. The
classifier here is a four-layer CNN with three heads (colour: 4, shape: 3, position: 4 classes) trained on
:class:`vqdiff.data.synthetic.ShapesDataset`; its own accuracy on real images is reported next to the
scores of generated images, so a user can see the ruler is trustworthy before reading the measurement.

Images everywhere are float tensors ``(B, 3, H, W)`` in ``[0, 255]`` (the project convention); they are
resized to the classifier's resolution, so images of any size can be scored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from vqdiff.data.synthetic import COLORS, POSITIONS, SHAPES, ShapesDataset

__all__ = [
    "ATTRIBUTES",
    "NUM_CLASSES",
    "CHANCE",
    "ShapesAttributeClassifier",
    "train_shapes_classifier",
    "save_shapes_classifier",
    "load_shapes_classifier",
    "classify",
    "attribute_accuracy",
    "parse_caption",
    "text_following_report",
    "format_accuracy_table",
]

ATTRIBUTES: tuple[str, ...] = ("color", "shape", "position")
NUM_CLASSES: dict[str, int] = {"color": len(COLORS), "shape": len(SHAPES), "position": len(POSITIONS)}
# Accuracy of a uniform random guess; 'all' = all three attributes right = 1 / (4 * 3 * 4).
CHANCE: dict[str, float] = {
    "color": 1.0 / NUM_CLASSES["color"],
    "shape": 1.0 / NUM_CLASSES["shape"],
    "position": 1.0 / NUM_CLASSES["position"],
    "all": 1.0 / (NUM_CLASSES["color"] * NUM_CLASSES["shape"] * NUM_CLASSES["position"]),
}


class ShapesAttributeClassifier(nn.Module):
    """CNN ``(B, 3, R, R)`` in [0, 255] -> logits ``{'color': (B, 4), 'shape': (B, 3), 'position': (B, 4)}``.

    Four 3x3 convs (two of stride 2) give a map at 1/4 resolution. Colour and shape are read from
    its global max-pool (translation invariant, so they do not get entangled with the position and
    transfer to colour/shape/position combinations never seen together); position is read from the
    map pooled to 2x2 (one cell per quadrant).
    """

    def __init__(self, resolution: int = 32, width: int = 32):
        super().__init__()
        if resolution < 8:
            raise ValueError(f"resolution must be >= 8, got {resolution}")
        self.resolution = int(resolution)
        self.width = int(width)
        w = self.width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(inplace=True),      # R/2
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(inplace=True),  # R/4
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True),  # receptive field 17 px
        )
        self.heads = nn.ModuleDict({
            "color": nn.Sequential(nn.Linear(2 * w, 64), nn.ReLU(inplace=True), nn.Linear(64, NUM_CLASSES["color"])),
            "shape": nn.Sequential(nn.Linear(2 * w, 64), nn.ReLU(inplace=True), nn.Linear(64, NUM_CLASSES["shape"])),
            "position": nn.Linear(2 * w * 4, NUM_CLASSES["position"]),
        })

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 255] -> ``(B, 3, R, R)`` in [-1, 1]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              align_corners=False, antialias=True)
        return x / 127.5 - 1.0

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.features(self.preprocess(images))  # (B, 2w, R/4, R/4)
        pooled = fmap.amax(dim=(2, 3))  # (B, 2w)
        quadrants = F.adaptive_avg_pool2d(fmap, 2).flatten(1)  # (B, 2w * 4)
        return {
            "color": self.heads["color"](pooled),
            "shape": self.heads["shape"](pooled),
            "position": self.heads["position"](quadrants),
        }

    @property
    def meta(self) -> dict:
        return {"resolution": self.resolution, "width": self.width}


def _dataset_tensors(dataset: ShapesDataset, desc: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images, targets = [], {k: [] for k in ATTRIBUTES}
    for i in tqdm(range(len(dataset)), desc=desc, leave=False):
        item = dataset[i]
        images.append(item["image"])
        for k in ATTRIBUTES:
            targets[k].append(item[k])
    return torch.stack(images), {k: torch.tensor(v, dtype=torch.long) for k, v in targets.items()}


def train_shapes_classifier(
    resolution: int = 32,
    num_samples: int = 2000,
    steps: int = 300,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    lr: float = 2e-3,
    split: str = "all",
    noise_std: float = 8.0,
    blur_prob: float = 0.3,
    progress: bool = True,
    num_threads: int | None = None,
) -> ShapesAttributeClassifier:
    """Train the attribute classifier on real synthetic images (seconds on 2 CPU cores at 32x32).

    Args:
        resolution: image side of the training data and of the classifier input.
        num_samples: number of distinct synthetic images drawn (with jitter) from ``split``.
        steps: Adam steps of ``batch_size`` images.
        seed: seeds the data, the initialisation and the batch order.
        split: ``'all'`` for an evaluator (it must know every combination); ``'train'`` to check that it
            generalises to the held-out combinations.
        noise_std: std of Gaussian pixel noise (in 0..255 units) added during training, and
        blur_prob: share of training batches blurred by a 2x down-up resize -- both make the classifier
            robust to the softer, noisier images a VQ-VAE decodes.
        num_threads: torch CPU threads during training (restored afterwards); 1 is as fast for this small
            net and ~10x faster than 2 when the cores are shared with other busy processes.
    Returns:
        the trained classifier in eval mode on ``device``.
    """
    if num_threads is not None:
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(int(num_threads))
        try:
            return train_shapes_classifier(resolution, num_samples, steps, seed, device, batch_size, lr, split,
                                           noise_std, blur_prob, progress, None)
        finally:
            torch.set_num_threads(previous_threads)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(int(seed))
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    model = ShapesAttributeClassifier(resolution).to(device)
    torch.random.set_rng_state(torch_state)

    data = ShapesDataset(num_samples=num_samples, resolution=resolution, split=split, seed=seed, jitter=True)
    images, targets = _dataset_tensors(data, "render shapes")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    model.train()
    bar = tqdm(range(steps), desc="train shapes classifier", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x = images[idx]
        if blur_prob > 0 and torch.rand((), generator=gen).item() < blur_prob:
            x = F.interpolate(F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True),
                              size=x.shape[-2:], mode="bilinear")
        if noise_std > 0:
            x = (x + noise_std * torch.randn(x.shape, generator=gen)).clamp(0, 255)
        logits = model(x.to(device))
        loss = sum(F.cross_entropy(logits[k], targets[k][idx].to(device)) for k in ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model


def save_shapes_classifier(model: ShapesAttributeClassifier, path: str | Path) -> None:
    """Save ``{'state_dict': ..., 'meta': {'resolution', 'width'}}`` (meta is JSON-able)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "meta": dict(model.meta)}, path)


def load_shapes_classifier(path: str | Path, device: str | torch.device = "cpu") -> ShapesAttributeClassifier:
    """Load a classifier written by :func:`save_shapes_classifier` (eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shapes classifier checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "meta" not in ckpt:
        raise ValueError(f"{path} is not a shapes classifier checkpoint (needs keys 'state_dict' and 'meta')")
    meta = json.loads(json.dumps(ckpt["meta"]))
    model = ShapesAttributeClassifier(int(meta["resolution"]), int(meta.get("width", 32)))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


@torch.no_grad()
def classify(model: ShapesAttributeClassifier, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Predicted attribute indices ``{'color': (B,), 'shape': (B,), 'position': (B,)}`` (long, on CPU)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ATTRIBUTES}
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size].to(device))
        for k in ATTRIBUTES:
            out[k].append(logits[k].argmax(dim=-1).cpu())
    model.train(was_training)
    if len(images) == 0:
        return {k: torch.zeros(0, dtype=torch.long) for k in ATTRIBUTES}
    return {k: torch.cat(v) for k, v in out.items()}


def attribute_accuracy(
    model: ShapesAttributeClassifier, images: torch.Tensor, targets: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """Share of images whose predicted attribute equals the target, per attribute and for all three at once."""
    missing = [k for k in ATTRIBUTES if k not in targets]
    if missing:
        raise KeyError(f"targets lack attribute(s) {missing}; need {list(ATTRIBUTES)}")
    if len(images) == 0:
        raise ValueError("no images to score")
    pred = classify(model, images)
    right = {k: pred[k] == torch.as_tensor(targets[k]).long().cpu().reshape(-1) for k in ATTRIBUTES}
    acc = {k: right[k].float().mean().item() for k in ATTRIBUTES}
    acc["all"] = (right["color"] & right["shape"] & right["position"]).float().mean().item()
    return acc


_CAPTION_RE = re.compile(
    r"^\s*an?\s+(?P<color>\w+)\s+(?P<shape>\w+)\s+at\s+the\s+(?P<position>\w+\s+\w+)"
    r"(?:\s+on\s+a\s+gray\s+background)?\s*\.?\s*$",
    re.IGNORECASE,
)


def parse_caption(text: str) -> tuple[int, int, int]:
    """Inverse of :func:`vqdiff.data.synthetic.make_caption`: caption -> (colour, shape, position) indices."""
    m = _CAPTION_RE.match(text)
    if m is None:
        raise ValueError(f"caption {text!r} is not of the form 'a <colour> <shape> at the <position> ...'")
    color, shape = m["color"].lower(), m["shape"].lower()
    position = " ".join(m["position"].lower().split())
    if color not in COLORS:
        raise ValueError(f"unknown colour {color!r} in caption {text!r}; known: {list(COLORS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r} in caption {text!r}; known: {list(SHAPES)}")
    if position not in POSITIONS:
        raise ValueError(f"unknown position {position!r} in caption {text!r}; known: {list(POSITIONS)}")
    return list(COLORS).index(color), SHAPES.index(shape), POSITIONS.index(position)


def format_accuracy_table(rows: Mapping[str, Mapping[str, float]], chance: bool = True) -> str:
    """A fixed-width table: one row per named result (e.g. 'real', 'with text', 'no text'), plus chance."""
    cols = list(ATTRIBUTES) + ["all"]
    name_w = max([len("chance")] + [len(n) for n in rows]) + 2
    lines = ["".ljust(name_w) + "".join(c.rjust(10) for c in cols)]
    all_rows = dict(rows)
    if chance:
        all_rows["chance"] = CHANCE
    for name, acc in all_rows.items():
        lines.append(name.ljust(name_w) + "".join(f"{100 * acc[c]:9.1f}%" for c in cols))
    return "\n".join(lines)


def text_following_report(
    model: ShapesAttributeClassifier,
    images: torch.Tensor,
    captions: Sequence[str] | Iterable[str],
    name: str = "generated",
) -> dict:
    """Score images against the captions that asked for them.

    Args:
        images: ``(B, 3, H, W)`` in [0, 255], image ``i`` generated for ``captions[i]``.
        captions: ``B`` captions of the form :func:`make_caption` writes.
    Returns:
        ``{'accuracy': {color, shape, position, all}, 'chance': CHANCE, 'num_images': B, 'table': str}``.
    """
    captions = list(captions)
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    parsed = [parse_caption(c) for c in captions]
    targets = {k: torch.tensor([p[i] for p in parsed], dtype=torch.long) for i, k in enumerate(ATTRIBUTES)}
    acc = attribute_accuracy(model, images, targets)
    return {
        "accuracy": acc,
        "chance": dict(CHANCE),
        "num_images": len(images),
        "table": format_accuracy_table({name: acc}),
    }
