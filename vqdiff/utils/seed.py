"""Seeding of every random source a run touches (Python, NumPy, torch, DataLoader workers)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything", "worker_init_fn", "make_generator"]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices). ``deterministic`` asks cuDNN/torch for repeatable kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker seeding: derive numpy/python seeds from torch's per-worker seed."""
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A ``torch.Generator`` seeded with ``seed`` on ``device`` (``None`` gives ``None``: global RNG)."""
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
