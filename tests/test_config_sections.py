"""One mechanism for every typed config section (vqdiff.utils.config_sections): a typo in any section gives
the same error naming its key path and known keys, number strings become numbers once, and the package's
imports form no cycle (the LoRA section used to import the solver's key check inside a function)."""

from __future__ import annotations

import ast
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from vqdiff.adapters.config import LoraConfig, parse_lora_config
from vqdiff.engine.solver_config import OptimizerConfig, SolverConfig, parse_solver_config
from vqdiff.modeling.diffusion.masked_elbo import MaskedELBOOptions
from vqdiff.utils.config import ConfigError
from vqdiff.utils.config_sections import (ConfigSection, DataloaderConfig, EMAConfig, check_config_sections,
                                          parse_ema_config, parse_section, setting)

REPO = Path(__file__).resolve().parents[1]


def _solver(**over) -> dict:
    section = {"base_lr": 1e-3, "max_epochs": 1, "optimizers_and_schedulers": [{"optimizer": {}}]}
    section.update(over)
    return section


def _known(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


# (parse the section with the typo, the key path, the typo, the key it meant, the section's class)
TYPOS = [
    (lambda: parse_solver_config(_solver(base_lrr=1)), "solver", "base_lrr", "base_lr", SolverConfig),
    (lambda: parse_solver_config(_solver(optimizers_and_schedulers=[{"optimizer": {"parms": {}}}])),
     "solver.optimizers_and_schedulers.0.optimizer", "parms", "params", OptimizerConfig),
    (lambda: parse_solver_config(_solver(lora={"rnak": 4})), "solver.lora", "rnak", "rank", LoraConfig),
    (lambda: parse_lora_config({"dropuot": 0.1}, "solver.lora"), "solver.lora", "dropuot", "dropout", LoraConfig),
    (lambda: parse_solver_config(_solver(ema={"decy": 0.5})), "solver.ema", "decy", "decay", EMAConfig),
    (lambda: parse_ema_config({"params": {"update_intreval": 2}}), "solver.ema", "update_intreval",
     "update_interval", EMAConfig),
    (lambda: check_config_sections({"dataloader": {"num_worker": 2}}), "dataloader", "num_worker", "num_workers",
     DataloaderConfig),
    (lambda: MaskedELBOOptions.from_config({"shedule": "cosine"}, "diffusion_config.params.masked_elbo"),
     "diffusion_config.params.masked_elbo", "shedule", "schedule", MaskedELBOOptions),
]


@pytest.mark.parametrize("parse, path, typo, meant, cls", TYPOS, ids=[t[1] + "." + t[2] for t in TYPOS])
def test_a_typo_in_every_section_names_the_key_path_and_the_known_keys(parse, path, typo, meant, cls):
    with pytest.raises(ConfigError) as info:
        parse()
    assert str(info.value) == (f"unknown key '{path}.{typo}'; did you mean '{path}.{meant}'? "
                               f"(known keys: {_known(cls)})")


def test_masked_elbo_options_raise_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match=re.escape("'masked_elbo.eps' must be a number in [0, 0.5), got 0.6")):
        MaskedELBOOptions.from_config({"eps": 0.6})
    with pytest.raises(ConfigError, match=r"'masked_elbo\.schedule' must be one of"):
        MaskedELBOOptions(schedule="sigmoid")  # built directly: the same check


def test_number_strings_are_numbers_in_every_section():
    # YAML 1.1 reads a float without a dot ("1e-4") as a string
    solver = parse_solver_config(_solver(base_lr="1e-4", max_epochs="2", lora={"alpha": "1e1", "dropout": "1e-1"},
                                         ema={"decay": "9.5e-1"}))
    assert (solver.base_lr, solver.max_epochs, solver.lora.alpha, solver.lora.dropout, solver.ema.decay) == (
        1e-4, 2, 10.0, 0.1, 0.95)
    assert isinstance(solver.max_epochs, int) and isinstance(solver.base_lr, float)
    assert MaskedELBOOptions.from_config({"eps": "1e-3", "exponent": 2}) == MaskedELBOOptions(eps=1e-3, exponent=2.0)
    assert parse_section({"batch_size": "8"}, DataloaderConfig, "dataloader").batch_size == 8
    for bad, words in [("1e-4x", "a number"), (True, "a number"), ("nan", "a number")]:
        with pytest.raises(ConfigError, match=f"'solver.base_lr' must be {words}"):
            parse_solver_config(_solver(base_lr=bad))
    with pytest.raises(ConfigError, match=r"'solver\.max_epochs' must be an integer, got str '1\.5'"):
        parse_solver_config(_solver(max_epochs="1.5"))


@dataclass(frozen=True)
class _Warmup(ConfigSection):
    """A section written the way the module doc says, to test the mechanism itself."""

    KEY_PATH = "solver.warmup"
    IGNORED_KEYS = ("legacy",)

    steps: int = setting(check=lambda v: v >= 0, must=">= 0")
    lr: float = setting(1e-4, check=lambda v: v > 0, must="> 0")
    names: tuple = ()
    until: Optional[int] = None

    @classmethod
    def check_together(cls, values, key_path):
        if values["until"] is not None and values["until"] < values["steps"]:
            raise ConfigError(f"'{key_path}.until' must be >= '{key_path}.steps'")


def test_a_new_section_gets_defaults_checks_conversions_and_key_paths():
    got = parse_section({"steps": 3.0, "names": ["a"], "legacy": 1}, _Warmup, "train.warmup")
    assert got == _Warmup(steps=3, names=("a",)) and isinstance(got.steps, int) and got.lr == 1e-4
    for node, message in [({}, "'train.warmup.steps' is required"),
                          ({"steps": -1}, "'train.warmup.steps' must be >= 0, got -1"),
                          ({"steps": 1, "lr": "0"}, "'train.warmup.lr' must be > 0, got 0.0"),
                          ({"steps": 1, "names": "a"}, "'train.warmup.names' must be a list, got str 'a'"),
                          ({"steps": 2, "until": 1}, "'train.warmup.until' must be >= 'train.warmup.steps'"),
                          ([1], "'train.warmup' must be a mapping, got list [1]")]:
        with pytest.raises(ConfigError) as info:
            parse_section(node, _Warmup, "train.warmup")
        assert str(info.value) == message
    with pytest.raises(ConfigError, match=r"^'solver\.warmup\.steps' must be >= 0, got -2$"):
        _Warmup(steps=-2)  # built directly: the same check under KEY_PATH
    assert _Warmup(steps="4").steps == 4


def _imports(path: Path, module: str, modules: set) -> set:
    """The vqdiff modules ``path`` imports anywhere in it (function-level imports included)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in found if m in modules and m != module}


def test_the_package_has_no_import_cycle():
    files = {}
    for path in (REPO / "vqdiff").rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {m: _imports(p, m, set(files)) for m, p in files.items()}
    done, path_now = set(), []

    def visit(module: str) -> None:  # depth-first; a module met again on the current path closes a cycle
        if module in path_now:
            raise AssertionError("import cycle: " + " -> ".join(path_now[path_now.index(module):] + [module]))
        if module in done:
            return
        path_now.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        path_now.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


@dataclass(frozen=True)
class _Adam(ConfigSection):
    KEY_PATH = "solver"

    betas: tuple[float, float] = setting((0.9, 0.99), check=lambda v: all(0 <= b < 1 for b in v), must="in [0, 1)")
    milestones: list[int] = setting(default_factory=list)


def test_typed_lists_convert_and_check_their_items():
    got = parse_section({"betas": ["5e-1", 0.9], "milestones": [1, "2"]}, _Adam, "solver")
    assert got.betas == (0.5, 0.9) and got.milestones == [1, 2]
    with pytest.raises(ConfigError, match=r"^'solver\.betas' must be a list of 2 items, got list \[0\.5\]$"):
        parse_section({"betas": [0.5]}, _Adam, "solver")
    with pytest.raises(ConfigError, match=r"^'solver\.milestones\.1' must be an integer, got str 'x'$"):
        parse_section({"milestones": [1, "x"]}, _Adam, "solver")
    with pytest.raises(ConfigError, match=r"^'solver\.betas' must be in \[0, 1\), got \(0\.5, 1\.0\)$"):
        parse_section({"betas": [0.5, 1]}, _Adam, "solver")
