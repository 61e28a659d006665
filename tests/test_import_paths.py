"""The package is installed (``bash install_req.sh``: editable), so no launcher, script, benchmark or test edits
the import path: code in another folder is imported as a package (``benchmarks.perf``, ``scripts.merge_lora``)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EDIT = "sys.path." + "insert"  # spelled in two pieces so that this file does not match itself


def test_no_folder_edits_the_import_path():
    found = sorted(str(p.relative_to(REPO)) for folder in ("benchmarks", "scripts", "running_command", "tests")
                   for p in (REPO / folder).rglob("*.py") if EDIT in p.read_text(encoding="utf-8"))
    assert found == []


def test_benchmarks_and_scripts_import_as_packages():
    from benchmarks import perf
    from scripts import merge_lora

    assert Path(perf.__file__).parent == REPO / "benchmarks" and callable(merge_lora.main)


def test_launchers_are_thin_and_the_demo_is_a_package():
    """The demo's recipe and run live in ``vqdiff.demo``; the launchers only call its ``main``."""
    from vqdiff.demo import editing, lora, shapes

    for name, module in (("run_demo_shapes", shapes), ("run_demo_editing", editing), ("run_demo_lora", lora)):
        text = (REPO / "running_command" / f"{name}.py").read_text(encoding="utf-8")
        assert f"from {module.__name__} import main" in text and len(text.splitlines()) < 20, name
