"""YAML configs and the `target` + `params` idiom.

A config node is a mapping with a dotted class path under ``target`` and keyword arguments under
``params``. :func:`instantiate_from_config` imports the class and calls it. The official VQ-Diffusion
YAML files name classes under ``image_synthesis.``; :data:`OFFICIAL_ALIASES` maps each of those to its
vqdiff equivalent so the released files load unchanged.

Errors are :class:`ConfigError` and always say *where* in the config the problem is (a dotted key path
such as ``model.params.diffusion_config.params.transformer_config.target``) and *what* was expected.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

__all__ = [
    "ConfigError",
    "ConfigNode",
    "OFFICIAL_ALIASES",
    "load_yaml_config",
    "save_yaml_config",
    "resolve_target",
    "instantiate_from_config",
    "merge_opts_to_config",
    "get_by_path",
]


class ConfigError(ValueError):
    """A config that cannot be turned into objects; the message names the key path and the fix."""


class ConfigNode(dict):
    """A plain ``dict`` that remembers its dotted key path inside the whole config.

    The path only serves error messages; a ``ConfigNode`` behaves exactly like a ``dict`` otherwise.
    """

    def __init__(self, data: Mapping = (), key_path: str = "<config>"):
        super().__init__(data)
        self.key_path = key_path


# --------------------------------------------------------------------------------------------------
# YAML loading
# --------------------------------------------------------------------------------------------------
class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader plus the one non-safe tag the official configs use: ``!!python/tuple``."""


def _construct_tuple(loader: yaml.SafeLoader, node: yaml.Node) -> tuple:
    return tuple(loader.construct_sequence(node, deep=True))


_ConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple", _construct_tuple)


class _ConfigDumper(yaml.SafeDumper):
    """Writes tuples as plain lists so saved configs load with any YAML reader."""


_ConfigDumper.add_representer(tuple, lambda dumper, data: dumper.represent_list(list(data)))


def load_yaml_config(path: str | Path) -> dict:
    """Load a YAML config safely.

    ``!!python/tuple`` (used by every official config) becomes a tuple; any other ``!!python/...`` tag is
    refused, so loading a config never constructs arbitrary Python objects.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: '{path}' (resolved to '{path.resolve()}')")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_ConfigLoader)
        except yaml.constructor.ConstructorError as e:
            raise ConfigError(
                f"{path}: unsupported YAML tag ({e.problem}); only !!python/tuple is accepted"
            ) from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        except (UnicodeDecodeError, RecursionError) as e:  # not UTF-8 text; nesting deeper than Python recurses
            raise ConfigError(f"{path}: not a readable YAML text file ({type(e).__name__}: {e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def save_yaml_config(config: Mapping, path: str | Path) -> None:
    """Write ``config`` as YAML (tuples become lists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.dump(_plain(config), f, Dumper=_ConfigDumper, sort_keys=False)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------------
# Official class names -> vqdiff classes (the one explicit alias table)
# --------------------------------------------------------------------------------------------------
_M = "image_synthesis.modeling"
_TAMING = "vqdiff.modeling.codecs.image"
OFFICIAL_ALIASES: dict[str, str] = {
    # models
    f"{_M}.models.dalle.DALLE": "vqdiff.modeling.models.dalle.DALLE",
    f"{_M}.models.conditional_dalle.C_DALLE": "vqdiff.modeling.models.conditional_dalle.C_DALLE",
    f"{_M}.models.unconditional_dalle.UC_DALLE": "vqdiff.modeling.models.unconditional_dalle.UC_DALLE",
    # image codecs
    f"{_M}.codecs.image_codec.taming_gumbel_vqvae.TamingGumbelVQVAE": f"{_TAMING}.taming_vqvae.TamingGumbelVQVAE",
    f"{_M}.codecs.image_codec.taming_gumbel_vqvae.TamingVQVAE": f"{_TAMING}.taming_vqvae.TamingVQVAE",
    f"{_M}.codecs.image_codec.taming_gumbel_vqvae.TamingFFHQVQVAE": f"{_TAMING}.taming_vqvae.TamingFFHQVQVAE",
    f"{_M}.codecs.image_codec.ema_vqvae.PatchVQVAE": f"{_TAMING}.patch_vqvae.PatchVQVAE",
    f"{_M}.codecs.image_codec.patch_vqgan.PatchVQGAN": f"{_TAMING}.patch_vqvae.PatchVQGAN",
    f"{_M}.codecs.image_codec.patch_vqgan.Encoder": f"{_TAMING}.patch_vqvae.PatchEncoder",
    f"{_M}.codecs.image_codec.patch_vqgan.Decoder": f"{_TAMING}.patch_vqvae.PatchDecoder",
    # taming-transformers classes named by the codec YAMLs (with and without the vendored prefix)
    "image_synthesis.taming.models.vqgan.VQModel": f"{_TAMING}.vqgan.VQModel",
    "image_synthesis.taming.models.vqgan.GumbelVQ": f"{_TAMING}.vqgan.GumbelVQ",
    "image_synthesis.taming.models.cond_transformer.Net2NetTransformer": f"{_TAMING}.vqgan.Net2NetFirstStage",
    "image_synthesis.taming.modules.losses.vqperceptual.DummyLoss": f"{_TAMING}.losses.DummyLoss",
    "image_synthesis.taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator": f"{_TAMING}.losses.VQLPIPSWithDiscriminator",
    "taming.models.vqgan.VQModel": f"{_TAMING}.vqgan.VQModel",
    "taming.models.vqgan.GumbelVQ": f"{_TAMING}.vqgan.GumbelVQ",
    "taming.models.cond_transformer.Net2NetTransformer": f"{_TAMING}.vqgan.Net2NetFirstStage",
    "taming.modules.losses.vqperceptual.DummyLoss": f"{_TAMING}.losses.DummyLoss",
    "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator": f"{_TAMING}.losses.VQLPIPSWithDiscriminator",
    # text codec
    f"{_M}.codecs.text_codec.tokenize.Tokenize": "vqdiff.modeling.codecs.text.tokenize.Tokenize",
    f"{_M}.modules.clip.simple_tokenizer.SimpleTokenizer": "vqdiff.modeling.codecs.text.bpe.SimpleTokenizer",
    # embeddings
    f"{_M}.embeddings.clip_text_embedding.CLIPTextEmbedding": "vqdiff.modeling.embeddings.clip_text_embedding.CLIPTextEmbedding",
    f"{_M}.embeddings.class_embedding.ClassEmbedding": "vqdiff.modeling.embeddings.class_embedding.ClassEmbedding",
    f"{_M}.embeddings.dalle_mask_image_embedding.DalleMaskImageEmbedding": "vqdiff.modeling.embeddings.dalle_mask_image_embedding.DalleMaskImageEmbedding",
    # diffusion and networks
    f"{_M}.transformers.diffusion_transformer.DiffusionTransformer": "vqdiff.modeling.diffusion.diffusion_transformer.DiffusionTransformer",
    f"{_M}.transformers.transformer_utils.Text2ImageTransformer": "vqdiff.modeling.transformers.networks.Text2ImageTransformer",
    f"{_M}.transformers.transformer_utils.Condition2ImageTransformer": "vqdiff.modeling.transformers.networks.Condition2ImageTransformer",
    f"{_M}.transformers.transformer_utils.UnCondition2ImageTransformer": "vqdiff.modeling.transformers.networks.UnCondition2ImageTransformer",
    # engine
    "image_synthesis.engine.clip_grad_norm.ClipGradNorm": "vqdiff.engine.clip_grad_norm.ClipGradNorm",
    "image_synthesis.engine.lr_scheduler.ReduceLROnPlateauWithWarmup": "vqdiff.engine.lr_scheduler.ReduceLROnPlateauWithWarmup",
    "image_synthesis.engine.lr_scheduler.CosineAnnealingLRWithWarmup": "vqdiff.engine.lr_scheduler.CosineAnnealingLRWithWarmup",
    "image_synthesis.taming.lr_scheduler.LambdaWarmUpCosineScheduler": "vqdiff.engine.lr_scheduler.LambdaWarmUpCosineScheduler",
    # data
    "image_synthesis.data.mscoco_dataset.CocoDataset": "vqdiff.data.coco.CocoDataset",
    "image_synthesis.data.cub200_dataset.Cub200Dataset": "vqdiff.data.cub200.Cub200Dataset",
    "image_synthesis.data.imagenet_dataset.ImageNetDataset": "vqdiff.data.imagenet.ImageNetDataset",
    "image_synthesis.data.ffhq_dataset.FFHQDataset": "vqdiff.data.ffhq.FFHQDataset",
    "image_synthesis.data.utils.image_preprocessor.DalleTransformerPreprocessor": "vqdiff.data.preprocess.DalleTransformerPreprocessor",
}


def resolve_target(target: str, key_path: str = "<config>") -> Any:
    """Import the object named by a dotted path, going through :data:`OFFICIAL_ALIASES` first."""
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(
            f"'{key_path}': target must be a dotted path like 'package.module.Class', got {target!r}"
        )
    dotted = OFFICIAL_ALIASES.get(target, target)
    if dotted.startswith(("image_synthesis.", "taming.")) and target not in OFFICIAL_ALIASES:
        raise ConfigError(
            f"unknown target '{target}' at '{key_path}': it names a class of the official code that "
            f"vqdiff has no equivalent for (see vqdiff.utils.config.OFFICIAL_ALIASES for the supported ones)"
        )
    module_name, _, attr = dotted.rpartition(".")
    alias_note = f" (alias of '{target}')" if dotted != target else ""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"unknown target '{dotted}'{alias_note} at '{key_path}': module '{module_name}' "
            f"cannot be imported ({e})"
        ) from e
    if not hasattr(module, attr):
        public = sorted(n for n in dir(module) if not n.startswith("_") and n[:1].isupper())
        raise ConfigError(
            f"unknown target '{dotted}'{alias_note} at '{key_path}': module '{module_name}' has no "
            f"'{attr}'. Classes there: {', '.join(public) or '(none)'}"
        )
    return getattr(module, attr)


# --------------------------------------------------------------------------------------------------
# Instantiation
# --------------------------------------------------------------------------------------------------
def _tag_children(params: dict, key_path: str) -> None:
    """Turn every nested config node under ``params`` into a :class:`ConfigNode` knowing its path."""
    for key, value in list(params.items()):
        child_path = f"{key_path}.{key}"
        if isinstance(value, dict):
            node = value if isinstance(value, ConfigNode) else ConfigNode(value, child_path)
            node.key_path = child_path
            params[key] = node
            _tag_children(node, child_path)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    node = item if isinstance(item, ConfigNode) else ConfigNode(item, f"{child_path}[{i}]")
                    node.key_path = f"{child_path}[{i}]"
                    value[i] = node
                    _tag_children(node, node.key_path)


def _describe_signature(cls: Any) -> tuple[list[str], bool, dict[str, inspect.Parameter]]:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return [], True, {}
    params = {
        n: p
        for n, p in sig.parameters.items()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
    var_kw = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    return list(params), var_kw, params


def _type_ok(value: Any, annotation: Any) -> bool:
    """A light check of simple annotations (int, float, bool, str and their Optional/Union)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or annotation is dict:
        return isinstance(value, Mapping)
    return True  # anything richer is the class's own business


def _check_params(cls: Any, target: str, params: dict, key_path: str) -> None:
    names, var_kw, sig_params = _describe_signature(cls)
    if not sig_params and var_kw:
        return
    if not var_kw:
        unknown = [k for k in params if k not in sig_params]
        if unknown:
            raise ConfigError(
                f"'{key_path}.params': {target} does not accept parameter(s) "
                f"{', '.join(repr(u) for u in unknown)}; accepted: {', '.join(names) or '(none)'}"
            )
    missing = [
        n
        for n, p in sig_params.items()
        if p.default is inspect.Parameter.empty and n not in params and n != "self"
    ]
    if missing:
        raise ConfigError(
            f"'{key_path}.params': {target} needs parameter(s) {', '.join(repr(m) for m in missing)} "
            f"that the config does not give; accepted: {', '.join(names)}"
        )
    try:
        hints = typing.get_type_hints(cls.__init__) if inspect.isclass(cls) else typing.get_type_hints(cls)
    except Exception:  # unresolved forward references: skip the type check
        hints = {}
    for name, value in params.items():
        if name in hints and not _type_ok(value, hints[name]):
            raise ConfigError(
                f"'{key_path}.params.{name}': {target} expects {getattr(hints[name], '__name__', hints[name])}"
                f" for '{name}', got {type(value).__name__} {value!r}"
            )


def instantiate_from_config(config: Mapping | None, key_path: str | None = None, **extra: Any) -> Any:
    """Build ``config['target']`` with ``**config.get('params', {})`` (plus ``extra`` keyword arguments).

    ``None`` gives ``None`` (official behaviour, used for optional parts). Nested config nodes in
    ``params`` are tagged with their key path so that an error raised while a child is built names it.
    """
    if config is None:
        return None
    key_path = key_path or getattr(config, "key_path", None) or "<config>"
    if not isinstance(config, Mapping):
        raise ConfigError(f"'{key_path}': expected a mapping with 'target' and 'params', got {config!r}")
    if "target" not in config:
        raise ConfigError(
            f"'{key_path}': no 'target' key (a dotted class path); keys present: {', '.join(map(str, config))}"
        )
    target = config["target"]
    cls = resolve_target(target, f"{key_path}.target")
    params = config.get("params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"'{key_path}.params' must be a mapping, got {type(params).__name__}")
    if not isinstance(params, dict):
        params = dict(params)
    if isinstance(config, dict) and config.get("params") is not None and params is not config.get("params"):
        config["params"] = params  # type: ignore[index]
    _tag_children(params, f"{key_path}.params")
    kwargs = {**params, **extra}
    _check_params(cls, target, kwargs, key_path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except Exception as e:  # keep the deep traceback as the cause, but say where it came from
        raise ConfigError(f"building '{target}' at '{key_path}' failed: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------------------------------
# Command-line overrides
# --------------------------------------------------------------------------------------------------
def get_by_path(config: Mapping, dotted: str) -> Any:
    """``get_by_path(cfg, 'solver.base_lr')``; raises :class:`ConfigError` naming the missing key."""
    node: Any = config
    walked = []
    for part in dotted.split("."):
        walked.append(part)
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ConfigError(f"config has no key '{'.'.join(walked)}'")
    return node


def _parse_scalar(text: str) -> Any:
    try:
        value = yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string; users mean a float
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _split_opts(opts: Iterable[str]) -> list[tuple[str, str]]:
    """Accept ``a.b=1`` items and the official ``a.b 1`` pairs."""
    opts = list(opts or [])
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(opts):
        item = opts[i]
        if item.startswith("--"):
            raise ConfigError(f"'{item}' is a flag after the config overrides: flags go before overrides "
                              f"(… {item} a.b=1, not … a.b=1 {item})")
        if "=" in item:
            key, value = item.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(opts):
                raise ConfigError(f"override '{item}' has no value; write it as {item}=VALUE")
            key, value = item, opts[i + 1]
            if value.startswith("--"):
                raise ConfigError(f"'{value}' is a flag after the config overrides: flags go before overrides "
                                  f"(… {value} {item} VALUE)")
            i += 2
        pairs.append((key.strip(), value))
    return pairs


def _list_index(node: list, part: str, key: str) -> int:
    index = int(part)
    if index >= len(node):
        raise ConfigError(f"override '{key}': index {index} is past the end of a list of {len(node)}")
    return index


def merge_opts_to_config(config: dict, opts: Iterable[str] | None, allow_new: bool = False) -> dict:
    """Apply dotted overrides such as ``solver.base_lr=1e-4 dataloader.batch_size=8`` in place.

    Values are parsed as YAML scalars (``1e-4`` is a float, ``[1, 2]`` a list, ``null`` None). A key that
    is not in the config is an error unless ``allow_new`` (typos should not pass silently).
    """
    for key, raw in _split_opts(opts or []):
        value = _parse_scalar(raw)
        parts = key.split(".")
        node: Any = config
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list) and part.isdigit():
                node = node[_list_index(node, part, key)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}': '{'.'.join(parts[:depth])}' is not a mapping")
            if part not in node:
                if not allow_new:
                    raise ConfigError(
                        f"override '{key}': config has no key '{'.'.join(parts[:depth + 1])}'"
                    )
                node[part] = {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list) and last.isdigit():
            node[_list_index(node, last, key)] = value
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{'.'.join(parts[:-1])}' is not a mapping")
        if last not in node and not allow_new:
            raise ConfigError(
                f"override '{key}': config has no key '{key}' (existing keys there: {', '.join(map(str, node))})"
            )
        node[last] = value
    return config
