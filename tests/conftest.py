"""Shared test helpers.

Fixtures of the official code live outside the repository (``../shared/fixtures`` beside a checkout, or
wherever ``VQDIFF_FIXTURES`` points). Tests that need them use :func:`fixtures_dir`, which skips with the
reason when the folder is absent (a user's clone); CI always has it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_root() -> Path:
    env = os.environ.get("VQDIFF_FIXTURES")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "fixtures"


def fixtures_dir(sub: str = "") -> Path:
    """Path of ``<fixtures>/<sub>``; skips the calling test when it does not exist."""
    path = fixtures_root() / sub
    if not path.exists():
        pytest.skip(f"official fixtures not found at {path} (set VQDIFF_FIXTURES to their folder)")
    return path


@pytest.fixture
def official_tiny_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of ``official_tiny_text/`` as the working directory (its paths are relative)."""
    src = fixtures_dir("official_tiny_text")
    dst = tmp_path / "official_tiny_text"
    shutil.copytree(src, dst)
    monkeypatch.chdir(dst)
    return dst


@pytest.fixture(autouse=True)
def _fp32_and_seeded():
    torch.manual_seed(0)
    yield
