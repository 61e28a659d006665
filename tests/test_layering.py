"""The layers stay layered: nothing under ``vqdiff/modeling`` or ``vqdiff/utils`` imports ``vqdiff.engine``,
``vqdiff.inference`` or ``vqdiff.app`` (a static scan of every import statement, at any depth: module level
or inside a function)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vqdiff"
LOWER = ("modeling", "utils")
UPPER = ("vqdiff.engine", "vqdiff.inference", "vqdiff.app")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every ``import`` / ``from ... import`` in the file; relative imports
    are resolved against the file's package."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def upward_imports(root: Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        for line, module in imported_modules(path):
            if any(module == up or module.startswith(up + ".") for up in UPPER):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    return bad


def test_modeling_and_utils_import_nothing_above_them():
    bad = [entry for part in LOWER for entry in upward_imports(PACKAGE / part)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_scan_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    fake = tmp_path / "vqdiff" / "modeling" / "sub"
    fake.mkdir(parents=True)
    (fake / "a.py").write_text("def f():\n    from vqdiff.engine.checkpoint import load_checkpoint\n")
    (fake / "b.py").write_text("from ...inference import api\n")
    (fake / "c.py").write_text("from vqdiff import app\nimport vqdiff.utils.config\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "vqdiff")
    bad = upward_imports(tmp_path / "vqdiff" / "modeling")
    assert [b.split(" imports ")[1] for b in bad] == ["vqdiff.engine.checkpoint",
                                                     "vqdiff.engine.checkpoint.load_checkpoint",
                                                     "vqdiff.inference", "vqdiff.inference.api", "vqdiff.app"]
