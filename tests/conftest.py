"""Shared test helpers.

Fixtures of the official code live outside the repository (``../shared/fixtures`` beside a checkout, or
wherever ``VQDIFF_FIXTURES`` points). Tests that need them use :func:`fixtures_dir`, which skips with the
reason when the folder is absent (a user's clone). CI sets ``VQDIFF_REQUIRE_FIXTURES=1`` (``.ci/run``):
then a missing folder fails the test instead, so the official-parity evidence cannot silently vanish.
Other optional inputs (the CLIP BPE vocabulary) go through :func:`require`: skipped on a user's machine,
failed under CI (``CI`` set, as ``.ci/run`` does).
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


def fixtures_required() -> bool:
    """Whether a missing fixture folder is an error (``VQDIFF_REQUIRE_FIXTURES`` set, not ``0``/empty)."""
    return os.environ.get("VQDIFF_REQUIRE_FIXTURES", "").strip() not in ("", "0")


def fixtures_dir(sub: str = "") -> Path:
    """Path of ``<fixtures>/<sub>``. When it does not exist the calling test is skipped with the reason,
    or fails naming the path when :func:`fixtures_required` (CI)."""
    path = fixtures_root() / sub
    if not path.exists():
        reason = f"official fixtures not found at {path} (set VQDIFF_FIXTURES to their folder)"
        if fixtures_required():
            pytest.fail(f"{reason}; VQDIFF_REQUIRE_FIXTURES is set, so a missing fixture is an error",
                        pytrace=False)
        pytest.skip(reason)
    return path


def under_ci() -> bool:
    """Whether the suite runs under CI (``CI`` set to anything but empty/``0``/``false``; ``.ci/run`` sets it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def require(ok: bool, what: str, install: str) -> None:
    """Skip the calling test when ``what`` is missing on a user's machine; under CI (:func:`under_ci`) fail
    instead, naming it and how to ``install`` it, so the check cannot silently vanish."""
    if ok:
        return
    reason = f"{what} is missing ({install})"
    if under_ci():
        pytest.fail(f"{reason}; CI is set, so this test must run", pytrace=False)
    pytest.skip(reason)


def copy_fixture(name: str, dst_root: Path) -> Path:
    """A private, writable copy of the fixture folder ``name`` under ``dst_root`` (its paths are relative)."""
    dst = dst_root / name
    shutil.copytree(fixtures_dir(name), dst)
    return dst


@pytest.fixture
def official_tiny_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of ``official_tiny_text/`` as the working directory (its paths are relative)."""
    dst = copy_fixture("official_tiny_text", tmp_path)
    monkeypatch.chdir(dst)
    return dst


@pytest.fixture(autouse=True)
def _fp32_and_seeded():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    # a test (or a tool it runs with --threads 1) may pin torch to one thread for the whole process; left
    # pinned, every later test would run on one of the two cores (the suite's demo test reported 1 thread)
    torch.set_num_threads(threads)
    # the demo and the benchmarks flush denormal floats for the whole process (a 7x speed-up of all-[MASK]
    # inputs); left on, it changes later tests' floats and makes hypothesis refuse subnormal examples
    torch.set_flush_denormal(False)


@pytest.fixture
def one_thread():
    """Torch on one thread for this test (float order fixed, no oversubscription with spawned processes);
    the autouse fixture above restores the count after it."""
    torch.set_num_threads(1)
    yield
