"""The CLIP text transformer (Radford et al. 2021, arXiv 2103.00020, Sec. 2.4) and its weight loaders.

Architecture (GPT-2 style, pre-LayerNorm): ``x = token_embedding(ids) + positional_embedding``, then
``layers`` residual blocks ``x += attn(ln_1(x))`` (causal multi-head self attention),
``x += mlp(ln_2(x))`` (``c_fc`` -> QuickGELU -> ``c_proj``), then ``ln_final``; ``text_projection``
maps the end-of-text feature to the joint embedding space. Parameter names are OpenAI's, so a CLIP
state dict (or the ``transformer.condition_emb.*`` part of a VQ-Diffusion checkpoint) loads as is.
Width, layers, context length, vocabulary and projection size are read from the state dict;
``heads = width // 64`` as in OpenAI's ``build_model``.

Weights may be given as OpenAI's TorchScript release (read by parsing the archive's pickle with a
restricted unpickler: no TorchScript or Python code from the file is run) or as a plain state dict
(``torch.load(weights_only=True)``); the visual tower and ``logit_scale`` are dropped and fp16 tensors
are cast to the model's dtype on load.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CLIPTextConfig",
    "QuickGELU",
    "CausalSelfAttention",
    "ResidualAttentionBlock",
    "TextTransformer",
    "CLIPTextTransformer",
    "is_text_key",
    "extract_text_state_dict",
    "infer_text_config",
    "is_torchscript_archive",
    "read_torchscript_tensors",
    "load_clip_state_dict",
    "JIT_CLIP_ENV",
]

_BLOCK_KEY = re.compile(r"^transformer\.resblocks\.(\d+)\.")
_TEXT_TOP_KEYS = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection")


@dataclass(frozen=True)
class CLIPTextConfig:
    """Sizes of a CLIP text tower (ViT-B/32: 49408, 77, 512, 12, 8, 512)."""

    vocab_size: int
    context_length: int
    width: int
    layers: int
    heads: int
    embed_dim: int


class QuickGELU(nn.Module):
    """CLIP's GELU approximation ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CausalSelfAttention(nn.Module):
    """Multi-head self attention with a causal mask; parameters named as ``nn.MultiheadAttention``
    (``in_proj_weight`` (3D, D), ``in_proj_bias`` (3D), ``out_proj``) so CLIP weights load unchanged.
    The mask is applied inside the kernel, so no mask tensor is stored in the state dict."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # (B, L, D)
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        # (B, L, D) -> (B, h, L, D/h)
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # softmax(QK^T/sqrt(d_h) + causal) V
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))`` with a 4x QuickGELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = CausalSelfAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * width, width))])
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """The stack of blocks, held as ``resblocks`` (key prefix ``transformer.resblocks.N``)."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class CLIPTextTransformer(nn.Module):
    """CLIP's text tower. ``forward(tokens (B, L)) -> ln_final features (B, L, width)``.

    State dict keys: ``token_embedding.weight``, ``positional_embedding``,
    ``transformer.resblocks.N.{attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.*, ln_1.*,
    mlp.c_fc.*, mlp.c_proj.*, ln_2.*}``, ``ln_final.*``, ``text_projection`` -- nothing else.
    """

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = TextTransformer(config.width, config.layers, config.heads)
        self.ln_final = nn.LayerNorm(config.width)
        self.text_projection = nn.Parameter(torch.empty(config.width, config.embed_dim))
        # OpenAI's initialisation (only matters for randomly built models, e.g. in tests)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=config.width**-0.5)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], heads: int | None = None) -> "CLIPTextTransformer":
        """Build with sizes inferred from ``state_dict`` and load it (text keys only, cast to fp32)."""
        text_sd = extract_text_state_dict(state_dict)
        model = cls(infer_text_config(text_sd, heads=heads))
        model.load_text_weights(text_sd)
        return model

    @property
    def dtype(self) -> torch.dtype:
        return self.positional_embedding.dtype

    def load_text_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load CLIP text weights (extra visual/``logit_scale`` keys dropped), cast to the model dtype.

        Raises:
            KeyError: naming missing text keys.
            ValueError: naming a key whose shape differs from the model's.
        """
        text_sd = extract_text_state_dict(state_dict)
        own = self.state_dict()
        missing = [k for k in own if k not in text_sd]
        if missing:
            raise KeyError(f"CLIP text weights lack {len(missing)} key(s): {', '.join(missing[:8])}")
        unexpected = [k for k in text_sd if k not in own]
        if unexpected:
            raise KeyError(
                f"CLIP text weights have key(s) this model ({self.config.layers} layers) does not: "
                f"{', '.join(unexpected[:8])}"
            )
        for k, v in text_sd.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(f"CLIP weight '{k}' has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
        with torch.no_grad():
            for k, v in text_sd.items():
                own[k].copy_(v.to(dtype=own[k].dtype))  # fp16 release weights -> model dtype

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` (B, L) ids, L <= context_length -> (B, L, width) features after ``ln_final``."""
        n = tokens.shape[1]
        if n > self.positional_embedding.shape[0]:
            raise ValueError(f"token rows of length {n} exceed the context length {self.positional_embedding.shape[0]}")
        x = self.token_embedding(tokens) + self.positional_embedding[:n]  # (B, L, D)
        x = self.transformer(x)
        return self.ln_final(x)

    def project_eot(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The end-of-text feature (at the largest id of each row, as CLIP) times ``text_projection``:
        (B, L, width) -> (B, embed_dim)."""
        idx = tokens.argmax(dim=-1)
        return features[torch.arange(features.shape[0], device=features.device), idx] @ self.text_projection


# --------------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------------
def is_text_key(key: str) -> bool:
    return key in _TEXT_TOP_KEYS or _BLOCK_KEY.match(key) is not None


def extract_text_state_dict(state_dict: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """The text-tower entries of a CLIP state dict (visual tower, ``logit_scale``, attention masks and
    other attributes dropped). With ``prefix`` (e.g. ``'transformer.condition_emb.'`` for a VQ-Diffusion
    checkpoint) only keys under it are taken, with the prefix removed."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor) or not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        if is_text_key(key) and not key.endswith("attn_mask"):
            out[key] = value
    return out


def infer_text_config(state_dict: Mapping[str, torch.Tensor], heads: int | None = None) -> CLIPTextConfig:
    """Sizes from the weights: vocab/width from ``token_embedding``, context from
    ``positional_embedding``, layers from the ``resblocks`` indices, embed_dim from ``text_projection``,
    heads = width // 64 unless given.

    Raises:
        KeyError: naming the key that is missing.
    """
    for key in ("token_embedding.weight", "positional_embedding", "text_projection"):
        if key not in state_dict:
            raise KeyError(f"not a CLIP state dict: no '{key}' (keys start with: {', '.join(list(state_dict)[:5])})")
    vocab_size, width = state_dict["token_embedding.weight"].shape
    context_length = state_dict["positional_embedding"].shape[0]
    layer_ids = {int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k))}
    if not layer_ids:
        raise KeyError("not a CLIP state dict: no 'transformer.resblocks.N.*' keys")
    layers = max(layer_ids) + 1
    if sorted(layer_ids) != list(range(layers)):
        raise KeyError(f"CLIP state dict has gaps in its blocks: {sorted(layer_ids)}")
    heads = heads if heads is not None else max(1, width // 64)
    return CLIPTextConfig(
        vocab_size=int(vocab_size),
        context_length=int(context_length),
        width=int(width),
        layers=layers,
        heads=int(heads),
        embed_dim=int(state_dict["text_projection"].shape[1]),
    )


# --------------------------------------------------------------------------------------------------
# TorchScript archives, read without running them
# --------------------------------------------------------------------------------------------------
class _ScriptObject:
    """Stand-in for a ``__torch__.*`` class in a TorchScript pickle: just keeps the attribute dict."""

    def __init__(self, *args: Any):
        self.attrs: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, Mapping):  # a custom __getstate__: layout unknown to this reader
            raise _UnsupportedArchive(f"a scripted object stores its state as {type(state).__name__}")
        self.attrs = dict(state)


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _UnsupportedArchive(Exception):
    pass


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *args: Any) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset)


class _ArchiveUnpickler(pickle.Unpickler):
    """Reads ``data.pkl`` of a TorchScript zip: tensors and module attribute dicts only; any other
    global is refused, so nothing from the file is executed."""

    def __init__(self, data: bytes, zf: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(data))
        self._zf, self._root = zf, root
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return _ScriptObject
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise _UnsupportedArchive(f"archive pickle names '{module}.{name}', which the safe reader does not accept")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise _UnsupportedArchive(f"unknown persistent id {pid!r}")
        _, dtype, key, _location, numel = pid[:5]
        if not isinstance(dtype, torch.dtype):
            raise _UnsupportedArchive(f"storage type {dtype!r} is not a tensor storage")
        if key not in self._storages:
            raw = bytearray(self._zf.read(f"{self._root}/data/{key}"))
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if flat.numel() != numel:
                raise _UnsupportedArchive(f"storage {key}: {flat.numel()} elements, expected {numel}")
            self._storages[key] = flat
        return self._storages[key]


def is_torchscript_archive(path: str | Path) -> bool:
    """A zip holding ``<root>/constants.pkl`` or ``<root>/code/`` (what ``torch.jit.save`` writes)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def _collect_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    for name, value in obj.attrs.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _collect_tensors(value, f"{prefix}{name}.", out)


JIT_CLIP_ENV = "VQDIFF_ALLOW_JIT_CLIP"
"""Names (``os.pathsep``-separated) the CLIP archives trusted enough for the ``torch.jit.load`` fallback,
for when the loading happens deep inside model construction (as ``VQDIFF_ALLOW_UNSAFE_PICKLE`` does for
checkpoints)."""


def _jit_allowed(path: Path, allow_jit_fallback: bool) -> bool:
    if allow_jit_fallback:
        return True
    target = path.resolve()
    return any(Path(p).resolve() == target for p in os.environ.get(JIT_CLIP_ENV, "").split(os.pathsep) if p.strip())


def read_torchscript_tensors(path: str | Path, allow_jit_fallback: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript archive's module tree, by dotted name (parameters and
    buffers, as ``module.state_dict()`` would list them, plus tensor attributes such as a stored mask).

    The archive's pickle is parsed with a restricted unpickler and tensors are read from ``data/``; its
    TorchScript code is never compiled or run. An archive holding something this reader does not know is a
    ValueError naming the file, the reason and the opt-in: only with ``allow_jit_fallback`` (or the file
    named in ``VQDIFF_ALLOW_JIT_CLIP``) is it read by ``torch.jit.load(...).state_dict()`` on the CPU
    (which compiles the archive's TorchScript, though not Python), with a warning; like an unsafe pickle,
    for trusted files only.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            roots = [n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(roots) != 1:
                raise _UnsupportedArchive(f"expected one '<root>/data.pkl', found {len(roots)}")
            root = roots[0]
            if f"{root}/byteorder" in names and zf.read(f"{root}/byteorder").strip() != b"little":
                raise _UnsupportedArchive("tensors are stored big-endian")
            obj = _ArchiveUnpickler(zf.read(f"{root}/data.pkl"), zf, root).load()
        if not isinstance(obj, _ScriptObject):
            raise _UnsupportedArchive(f"top-level object is {type(obj).__name__}, not a scripted module")
        out: dict[str, torch.Tensor] = {}
        _collect_tensors(obj, "", out)
        return {k: v.clone() for k, v in out.items()}  # own memory (the zip bytes are not kept alive)
    except _UnsupportedArchive as e:
        if not _jit_allowed(path, allow_jit_fallback):
            raise ValueError(f"{path}: cannot read the TorchScript archive safely: {e}. Only if you trust this "
                             f"file, pass allow_jit_fallback=True or set {JIT_CLIP_ENV}={path.resolve()} to read "
                             f"it with torch.jit.load (which compiles the archive's TorchScript)") from None
        warnings.warn(f"{path}: {e}; reading it with torch.jit.load on the CPU instead (allowed for this file)",
                      stacklevel=2)
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())


def load_clip_state_dict(path: str | Path, allow_jit_fallback: bool = False) -> dict[str, torch.Tensor]:
    """Text-tower weights of a CLIP file: OpenAI's TorchScript release or a plain (full or text-only)
    state dict, possibly wrapped as ``{'state_dict': ...}``. Tensors keep their stored dtype.

    Raises:
        FileNotFoundError: naming the path and the working directory.
        KeyError: when the file holds no CLIP text weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP weights not found: '{path}' (resolved from the working directory '{Path.cwd()}' to "
            f"'{path.resolve()}'); put OpenAI's ViT-B-32.pt there or give 'clip_path'"
        )
    if is_torchscript_archive(path):
        raw: Any = read_torchscript_tensors(path, allow_jit_fallback=allow_jit_fallback)
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
            raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise KeyError(f"{path}: expected a state dict, found {type(raw).__name__}")
    text_sd = extract_text_state_dict(raw)
    if "token_embedding.weight" not in text_sd:
        raise KeyError(
            f"{path}: no CLIP text weights ('token_embedding.weight' missing; keys start with "
            f"{', '.join(list(raw)[:5])})"
        )
    return text_sd
