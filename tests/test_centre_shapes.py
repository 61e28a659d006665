"""The LoRA demo's new concept (issue 26): centre shapes, their held-out split, and the centre-position judge."""

from __future__ import annotations

import torch
from torch import nn

from vqdiff.data.centre_shapes import (CENTRE_INDEX, CentreShapesDataset, centre_caption, centre_combinations,
                                       heldout_centre_combinations)
from vqdiff.data.synthetic import COLORS, ShapesDataset
from vqdiff.evaluation.centre_position import centre_accuracy, foreground_positions


def test_heldout_centre_combinations_cover_every_colour_once():
    held = heldout_centre_combinations()
    assert len(centre_combinations()) == 12 and len(held) == 4
    assert sorted(c for c, _ in held) == sorted(COLORS)
    train = CentreShapesDataset(40, 32, split="train", seed=0)
    heldout = CentreShapesDataset(40, 32, split="heldout", seed=0)
    assert {(list(COLORS)[x["color"]], x["text"].split()[2]) for x in (train[i] for i in range(40))}.isdisjoint(held)
    assert all(heldout[i]["text"] in {centre_caption(c, s) for c, s in held} for i in range(40))
    assert torch.equal(train[3]["image"], CentreShapesDataset(40, 32, split="train", seed=0)[3]["image"])


def test_replay_mixes_in_quadrant_images():
    data = CentreShapesDataset(200, 32, seed=1, replay=0.3)
    positions = [data[i]["position"] for i in range(200)]
    replayed = sum(p != CENTRE_INDEX for p in positions)
    assert 35 <= replayed <= 85  # about 30 % of 200
    assert all(" at the center " in data[i]["text"] for i in range(200) if positions[i] == CENTRE_INDEX)


def test_foreground_positions_tell_centre_from_quadrants():
    centre = CentreShapesDataset(24, 32, seed=2)
    quad = ShapesDataset(24, 32, split="train", seed=2)
    assert (foreground_positions(torch.stack([centre[i]["image"] for i in range(24)])) == CENTRE_INDEX).all()
    q = torch.stack([quad[i]["image"] for i in range(24)])
    assert torch.equal(foreground_positions(q), torch.tensor([quad[i]["position"] for i in range(24)]))
    assert foreground_positions(torch.full((1, 3, 32, 32), 128.0)).tolist() == [-1]  # background only


class _Fixed(nn.Module):
    """Predicts colour 0 and shape 1 for every image (stands in for the trained attribute classifier)."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b = x.shape[0]
        one_hot = lambda i, n: nn.functional.one_hot(torch.full((b,), i), n).float()  # noqa: E731
        return {"color": one_hot(0, 4), "shape": one_hot(1, 3), "position": one_hot(0, 4)}


def test_centre_accuracy_counts_each_attribute_and_all_three():
    data = CentreShapesDataset(8, 32, seed=3)
    images = torch.stack([data[i]["image"] for i in range(8)])
    images[4:] = torch.roll(images[4:], (-8, -8), dims=(2, 3))  # moved to the top-left quadrant
    acc = centre_accuracy(_Fixed(), images, colors=[0, 0, 0, 0, 0, 0, 1, 1], shapes=[1, 1, 2, 2, 1, 1, 1, 1])
    assert acc == {"color": 0.75, "shape": 0.75, "position": 0.5, "all": 0.25}
