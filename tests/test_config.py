import textwrap

import pytest

from vqdiff.utils.config import (
    OFFICIAL_ALIASES,
    ConfigError,
    instantiate_from_config,
    load_yaml_config,
    merge_opts_to_config,
    resolve_target,
    save_yaml_config,
)

from conftest import fixtures_dir


class Widget:
    def __init__(self, size: int, name: str = "w", ratio: float = 1.0, child=None):
        self.size, self.name, self.ratio = size, name, ratio
        self.child = instantiate_from_config(child)


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_python_tuple_tag_loads_as_tuple(tmp_path):
    cfg = load_yaml_config(_write(tmp_path, """
        a: !!python/tuple [32, 32]
        b: !!python/tuple
        - 0.9
        - 0.96
    """))
    assert cfg["a"] == (32, 32) and isinstance(cfg["a"], tuple)
    assert cfg["b"] == (0.9, 0.96)


def test_other_python_tags_are_refused(tmp_path):
    p = _write(tmp_path, "a: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="unsupported YAML tag"):
        load_yaml_config(p)


def test_missing_file_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_yaml_config(tmp_path / "nope.yaml")


def test_save_and_reload_roundtrip(tmp_path):
    cfg = {"a": (1, 2), "b": {"c": [1, 2.5, "x"]}}
    save_yaml_config(cfg, tmp_path / "out.yaml")
    assert load_yaml_config(tmp_path / "out.yaml") == {"a": [1, 2], "b": {"c": [1, 2.5, "x"]}}


def test_instantiate_builds_class_and_nested():
    cfg = {"target": "test_config.Widget", "params": {"size": 3, "child": {"target": "test_config.Widget", "params": {"size": 4}}}}
    w = instantiate_from_config(cfg)
    assert w.size == 3 and w.child.size == 4
    assert instantiate_from_config(None) is None


def test_instantiate_torch_class():
    import torch

    opt = instantiate_from_config({"target": "torch.optim.AdamW", "params": {"lr": 0.1, "betas": (0.9, 0.96)}},
                                  params=[torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.AdamW)


def test_unknown_target_names_key_path():
    cfg = {"model": {"target": "test_config.Widget", "params": {"size": 1, "child": {
        "target": "test_config.Widgit", "params": {"size": 2}}}}}
    with pytest.raises(ConfigError) as e:
        instantiate_from_config(cfg["model"], key_path="model")
    msg = str(e.value)
    assert "model.params.child.target" in msg and "test_config.Widgit" in msg and "Widget" in msg


def test_unknown_module_named():
    with pytest.raises(ConfigError, match="no_such_pkg.mod.Thing"):
        instantiate_from_config({"target": "no_such_pkg.mod.Thing"}, key_path="solver.x")


def test_unknown_official_target_is_reported():
    with pytest.raises(ConfigError, match="image_synthesis.modeling.foo.Bar"):
        resolve_target("image_synthesis.modeling.foo.Bar")


def test_bad_parameter_names_class_param_and_accepted():
    with pytest.raises(ConfigError) as e:
        instantiate_from_config({"target": "test_config.Widget", "params": {"size": 1, "colour": "red"}}, key_path="model")
    msg = str(e.value)
    assert "'colour'" in msg and "test_config.Widget" in msg and "size, name, ratio, child" in msg


def test_missing_parameter_named():
    with pytest.raises(ConfigError, match="'size'"):
        instantiate_from_config({"target": "test_config.Widget", "params": {}})


def test_wrong_type_named():
    with pytest.raises(ConfigError) as e:
        instantiate_from_config({"target": "test_config.Widget", "params": {"size": "big"}}, key_path="model")
    assert "model.params.size" in str(e.value) and "int" in str(e.value)


def test_int_is_accepted_for_float():
    assert instantiate_from_config({"target": "test_config.Widget", "params": {"size": 1, "ratio": 2}}).ratio == 2


def test_overrides_dotted_yaml_scalars():
    cfg = {"solver": {"base_lr": 3e-6, "ema": {"decay": 0.99}}, "dataloader": {"batch_size": 4, "data_root": "x"}}
    merge_opts_to_config(cfg, ["solver.base_lr=1e-4", "dataloader.batch_size=8", "solver.ema.decay", "0.5"])
    assert cfg["solver"]["base_lr"] == 1e-4 and isinstance(cfg["solver"]["base_lr"], float)
    assert cfg["dataloader"]["batch_size"] == 8 and cfg["solver"]["ema"]["decay"] == 0.5


def test_override_typo_is_an_error():
    with pytest.raises(ConfigError, match="solver.base_lrr"):
        merge_opts_to_config({"solver": {"base_lr": 1}}, ["solver.base_lrr=2"])


def test_alias_table_covers_every_official_target():
    root = fixtures_dir("official_configs")
    import yaml

    targets = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("target"), str):
                targets.add(node["target"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for f in sorted(root.glob("configs__*.yaml")) + sorted(root.glob("config_*.yaml")):
        cfg = load_yaml_config(f)
        assert isinstance(cfg, dict)
        walk({k: cfg[k] for k in ("model", "solver", "dataloader") if k in cfg})
    assert targets, "no targets found"
    for t in targets:
        if t.startswith("image_synthesis."):
            assert t in OFFICIAL_ALIASES, t
    # and the taming codec YAMLs parse with the same loader
    for f in root.glob("taming_dvae__*.yaml"):
        assert "model" in load_yaml_config(f)
