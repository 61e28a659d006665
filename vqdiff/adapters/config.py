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
(docs/results.md, "LoRA fine-tuning on the demo") measures this default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from vqdiff.utils.config import ConfigError
from vqdiff.utils.config_sections import ConfigSection, parse_section, setting

__all__ = ["LoraConfig", "parse_lora_config", "DEFAULT_TARGET_MODULES"]

DEFAULT_TARGET_MODULES = ("query", "key", "value", "proj", "mlp.0", "mlp.2")


def _names_or(default: tuple) -> Callable[[Any, str], tuple]:
    """A parser of a list of module names (one name alone as a list of one; empty: ``default``)."""

    def names(value: Any, key_path: str) -> tuple:
        if value is None:
            return default
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigError(f"'{key_path}' must be a list of module names, got {value!r}")
        found = tuple(v.strip() for v in value)
        if len(set(found)) != len(found):
            raise ConfigError(f"'{key_path}' lists a name twice: {list(found)}")
        return found

    return names


@dataclass(frozen=True)
class LoraConfig(ConfigSection):
    """The typed ``solver.lora`` section: each key's default and range, checked when parsed or built.

    Args:
        rank: r, the inner width of each adapter ``B A`` (A: (r, in), B: (out, r)); >= 1.
        alpha: the adapter's output is scaled by ``alpha / rank``; > 0.
        dropout: dropout on the adapter's input while training, in [0, 1).
        target_modules: the network's linear layers that get an adapter (suffix match, see module doc).
        train_also: tensors of the DiffusionTransformer trained in full beside the adapters.
    """

    KEY_PATH = "solver.lora"

    rank: int = setting(16, check=lambda v: v >= 1, must="an integer >= 1")
    alpha: float = setting(32.0, check=lambda v: v > 0, must="a number > 0")
    dropout: float = setting(0.0, check=lambda v: 0 <= v < 1, must="a number in [0, 1)")
    target_modules: tuple = setting(DEFAULT_TARGET_MODULES, parse=_names_or(DEFAULT_TARGET_MODULES),
                                    check=lambda v: len(v) > 0, must="a list naming at least one linear layer")
    train_also: tuple = setting((), parse=_names_or(()))

    def as_dict(self) -> dict:
        return {"rank": self.rank, "alpha": float(self.alpha), "dropout": float(self.dropout),
                "target_modules": list(self.target_modules), "train_also": list(self.train_also)}


def parse_lora_config(section: Any, key_path: str = "solver.lora") -> LoraConfig:
    """Check ``section`` key by key (unknown keys name the closest known one) and return a :class:`LoraConfig`."""
    return parse_section(section, LoraConfig, key_path)
