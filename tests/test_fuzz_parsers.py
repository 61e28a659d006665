"""Property-based tests (hypothesis) of the parsers that take user input: the config loader (YAML files,
command-line overrides, typed instantiation), ``SamplingOptions`` (fields and the official ``sample_type``
string) and the web page's request parser. Arbitrary values and types must give a valid object or the
parser's named error (``ConfigError`` / ``ValueError`` / ``TypeError`` naming the field, ``InputError``),
never another exception or a hang (each example has a deadline).

Each test tries ``max_examples`` inputs (docs/reliability.md lists the counts); the derandomized profile
makes a run repeat exactly, so a failure found once is found again."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqdiff.app.requests import AppLimits, GenerateRequest, InputError, parse_generate
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions
from vqdiff.utils.config import ConfigError, instantiate_from_config, load_yaml_config, merge_opts_to_config

FUZZ = settings(max_examples=150, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# any value a user, a YAML file or a JSON client could hand over
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.binary(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=8)


# ------------------------------------------------------------------------------------------ config loader
yaml_texts = st.one_of(
    st.text(max_size=200),
    st.lists(st.tuples(st.sampled_from(["model", "solver", "a", "b.c", "- x", "!!python/tuple", "&a", "*a", "{", "["]),
                       st.sampled_from([": 1", ": [1, 2]", ": !!python/object:os.system x", ": {t: 1}", ":", " ",
                                        ": !!python/tuple [1]", ": &a [1]", ": *a", "\t: x", ": 'x"])),
             max_size=6).map(lambda rows: "\n".join(k + v for k, v in rows)),
)


@FUZZ
@given(text=yaml_texts, raw=st.binary(max_size=40))
def test_config_files_load_as_a_mapping_or_a_config_error(tmp_path, text, raw):
    for i, data in enumerate((text.encode("utf-8"), raw)):
        path = tmp_path / f"c{i}.yaml"
        path.write_bytes(data)
        try:
            config = load_yaml_config(path)
        except ConfigError as err:
            assert str(path) in str(err)
            continue
        assert isinstance(config, dict)


overrides = st.lists(st.one_of(
    st.text(max_size=20),
    st.tuples(st.sampled_from(["a", "a.b", "a.b.c", "l.0", "l.9", "l.x", "s.t", "a.b.0", "", "."]),
              st.sampled_from(["=", " "]), st.text(max_size=10)).map("".join),
), max_size=4)


@FUZZ
@given(opts=overrides, allow_new=st.booleans())
def test_command_line_overrides_apply_or_give_a_config_error(opts, allow_new):
    config = {"a": {"b": 1}, "l": [1, {"k": 2}], "s": 3}
    try:
        merge_opts_to_config(config, opts, allow_new=allow_new)
    except ConfigError:
        pass
    assert isinstance(config, dict)


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["rank", "alpha", "dropout", "target_modules", "train_also", "bogus"]),
                              values, max_size=4),
       node=st.one_of(values, st.just({"target": "vqdiff.engine.lora_config.LoraConfig"})))
def test_typed_instantiation_gives_the_object_or_a_named_error(params, node):
    """A config node (``target`` + ``params``) of a typed class: the object, or a ConfigError naming the key."""
    from vqdiff.engine.lora_config import LoraConfig

    for config in ({"target": "vqdiff.engine.lora_config.LoraConfig", "params": params}, node):
        try:
            made = instantiate_from_config(config)
        except ConfigError as err:
            assert str(err)
            continue
        assert made is None or isinstance(made, LoraConfig)


# ------------------------------------------------------------------------------------------ SamplingOptions
FIELDS = [f for f in SamplingOptions.__dataclass_fields__ if f != "generator"]


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(FIELDS), values, min_size=1, max_size=3))
def test_sampling_options_take_any_values_or_name_the_field(changes):
    try:
        options = SamplingOptions(**changes)
    except (ValueError, TypeError) as err:
        assert any(name in str(err) for name in changes), (changes, err)
        return
    assert str(options) is not None  # the official sample_type string of a valid object can be written


sample_types = st.one_of(
    st.text(max_size=30),
    st.lists(st.tuples(st.sampled_from(["top", "time", "fast", "q", "maskgit", "normal", "fp16", "compile", "x"]),
                       st.sampled_from(["", "0", "1", "2.5", "-1", "1e400", "inf", "nan", "0.86", "10:cosine",
                                        "3:zzz", "r", "p", "0.5r", "inf p", "nanr"]),
                       st.sampled_from(["", "r", "p"])).map("".join), max_size=4).map(",".join),
)


@FUZZ
@given(text=sample_types)
def test_the_sample_type_string_parses_or_names_itself(text):
    try:
        options = SamplingOptions.from_sample_type(text)
    except ValueError as err:
        assert "sample_type" in str(err) or any(f in str(err) for f in FIELDS), (text, err)
        return
    assert isinstance(options, SamplingOptions)


# ------------------------------------------------------------------------------------------ web request parser
LIMITS = AppLimits(max_images=4, max_waiting=1)
REQUEST = dict(prompt="a red circle", negative_prompt="", label=0, truncation_rate=0.85, guidance_scale=1.0,
               sampler="official", fast=2, prior_weight=1.0, maskgit_steps=4, seed=0, num_images=2)


@FUZZ
@given(kind=st.sampled_from(["text", "label", None]),
       changes=st.dictionaries(st.sampled_from(sorted(REQUEST)), st.one_of(values, st.sampled_from(
           ["maskgit", "fast", "purity", "official", 10**9, 10**30, -1, 0, 2.5, float("nan"), "x" * 600])),
           max_size=4),
       sampler=st.sampled_from(["official", "fast", "purity", "maskgit", "other"]))
def test_the_request_parser_gives_a_bounded_request_or_an_input_error(kind, changes, sampler):
    fields = {**REQUEST, "sampler": sampler, **changes}
    try:
        request = parse_generate(kind, LIMITS, num_classes=3, **fields)
    except InputError as err:
        assert str(err)
        return
    assert isinstance(request, GenerateRequest)
    assert 1 <= request.num_images <= LIMITS.max_images and 1 <= request.maskgit_steps <= LIMITS.max_maskgit_steps
    assert 2 <= request.fast <= LIMITS.max_fast and 0 <= request.seed < 2**63
    assert math.isfinite(request.guidance_scale) and request.guidance_scale <= LIMITS.max_scale
    assert request.kind != "text" or len(request.condition) <= LIMITS.max_prompt_chars
