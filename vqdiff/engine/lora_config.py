"""The ``solver.lora`` section: fine-tune a trained model through LoRA adapters (arXiv 2106.09685) made by peft.

    solver:
      lora:
        rank: 16
        alpha: 32
        dropout: 0.0
        target_modules: [query, key, value, proj, mlp.0, mlp.2]
        train_also: [empty_text_embed]

``target_modules`` name linear layers of the denoising network (``DiffusionTransformer.transformer``); a name
matches every layer whose dotted name is it or ends with ``.<name>`` (``query`` = the self- and cross-attention
queries of every block, ``blocks.3.attn2.key`` = one layer), peft's own rule for a list. ``train_also`` names
tensors of the ``DiffusionTransformer`` that train in full beside the adapters, by the same suffix rule on
parameter or module names (``empty_text_embed``, the learned null text of ``learnable_cf`` models; ``ln1.linear``,
the timestep AdaLN linears of every block). Everything else (the network's other weights, the image codec, CLIP)
stays frozen and gets no optimizer state.

Default targets, against aMUSEd's LoRA (diffusers' ``train_amused.py --use_lora``: rank 16, alpha 32 on
``to_q``/``to_k``/``to_v``): the same rank and alpha (scaling alpha / rank = 2), but all the attention
projections and the MLP. In VQ-Diffusion a caption reaches the image tokens only through the cross-attention
keys and values, which is where a new word's meaning has to land; the queries, the output projections and the
MLP (about two thirds of a block's weights) decide which codebook entries each token position turns into, and a
new concept (a colour the base never drew) needs new token choices, not only new attention patterns. The demo
(README, "LoRA fine-tuning") measures this default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vqdiff.utils.config import ConfigError

__all__ = ["LoraConfig", "parse_lora_config", "DEFAULT_TARGET_MODULES"]

DEFAULT_TARGET_MODULES = ("query", "key", "value", "proj", "mlp.0", "mlp.2")


def _names(value: Any, key_path: str) -> tuple:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"'{key_path}' must be a list of module names, got {value!r}")
    names = tuple(v.strip() for v in value)
    if len(set(names)) != len(names):
        raise ConfigError(f"'{key_path}' lists a name twice: {list(names)}")
    return names


@dataclass(frozen=True)
class LoraConfig:
    """The typed ``solver.lora`` section (checked in ``__post_init__``: the one home of defaults and ranges).

    Args:
        rank: r, the inner width of each adapter ``B A`` (A: (r, in), B: (out, r)); >= 1.
        alpha: the adapter's output is scaled by ``alpha / rank``; > 0.
        dropout: dropout on the adapter's input while training, in [0, 1).
        target_modules: the network's linear layers that get an adapter (suffix match, see module doc).
        train_also: tensors of the DiffusionTransformer trained in full beside the adapters.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple = DEFAULT_TARGET_MODULES
    train_also: tuple = ()

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"'solver.lora.rank' must be an integer >= 1, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ConfigError(f"'solver.lora.alpha' must be a number > 0, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"'solver.lora.dropout' must be a number in [0, 1), got {self.dropout!r}")
        if not self.target_modules:
            raise ConfigError("'solver.lora.target_modules' must name at least one linear layer")

    def as_dict(self) -> dict:
        return {"rank": self.rank, "alpha": float(self.alpha), "dropout": float(self.dropout),
                "target_modules": list(self.target_modules), "train_also": list(self.train_also)}


_KNOWN = tuple(LoraConfig.__dataclass_fields__)


def parse_lora_config(section: Any, key_path: str = "solver.lora") -> LoraConfig:
    """Check ``section`` key by key (unknown keys name the closest known one) and return a :class:`LoraConfig`."""
    from vqdiff.engine.solver_config import check_known_keys

    if not isinstance(section, Mapping):
        raise ConfigError(f"'{key_path}' must be a mapping, got {type(section).__name__} {section!r}")
    check_known_keys(section, _KNOWN, key_path)
    kwargs: dict = {}
    if "rank" in section:
        kwargs["rank"] = section["rank"]
    for key in ("alpha", "dropout"):
        if key in section:
            value = section[key]
            if isinstance(value, str):  # YAML 1.1 reads 1e-1 as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
            kwargs[key] = value
    for key in ("target_modules", "train_also"):
        if key in section and section[key] is not None:
            kwargs[key] = _names(section[key], f"{key_path}.{key}")
    return LoraConfig(**kwargs)
