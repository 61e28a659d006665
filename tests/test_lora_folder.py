"""A LoRA adapter folder is checked completely before the model is touched (issue 35): every corrupt or
unfitting folder is a LoraError naming the file and the problem (never a raw SafetensorError / KeyError /
JSONDecodeError), and the model's state_dict stays bit-identical, with no adapter layer injected."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vqdiff.adapters.lora import LoraError, add_lora, apply_adapter, save_adapter
from vqdiff.adapters.config import LoraConfig
from vqdiff.utils.config import instantiate_from_config, load_yaml_config
from vqdiff.utils.tiny_parts import write_tiny_parts

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_text_shapes.yaml"
CFG = LoraConfig(rank=2, alpha=4.0, target_modules=("query", "value"), train_also=("to_logits.0",))


def _model(root: Path, seed: int = 0):
    here = os.getcwd()
    os.chdir(root)  # the tiny config names its parts relative to the working directory
    try:
        torch.manual_seed(seed)
        return instantiate_from_config(load_yaml_config(TINY)["model"])
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """(root, folder): an adapter of the tiny model with non-zero B matrices and a train_also tensor."""
    root = tmp_path_factory.mktemp("lora_folder")
    write_tiny_parts(root)
    torch.set_num_threads(1)
    model = _model(root)
    setup = add_lora(model, CFG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.endswith("to_logits.0.weight"):
                p.add_(0.01)
    folder = save_adapter(root / "adapter", model, setup, {"base_checkpoint": "base.pth", "base_sha256": None})
    return root, folder


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    for f in folder.iterdir():
        (to / f.name).write_bytes(f.read_bytes())
    return to


def _snapshot(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _corrupt(kind: str, folder: Path) -> str:
    """Break ``folder`` one way; returns the words the error must hold."""
    weights, config = folder / "adapter_model.safetensors", folder / "adapter_config.json"
    if kind == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:100])
        return "adapter_model.safetensors' is not a readable safetensors file"
    if kind == "missing tensor":
        state = load_file(str(weights))
        state.pop(sorted(state)[-1])
        save_file(state, str(weights))
        return "is missing (adapter_config.json targets"
    if kind == "wrong shape":
        state = load_file(str(weights))
        key = sorted(k for k in state if "lora_A" in k)[0]
        state[key] = torch.zeros(3, state[key].shape[1])
        save_file(state, str(weights))
        return "has shape (3,"
    if kind == "NaN":
        state = load_file(str(weights))
        key = sorted(state)[0]
        state[key][0, 0] = float("nan")
        save_file(state, str(weights))
        return "holds NaN or infinite values"
    if kind == "extra tensor":
        state = load_file(str(weights))
        state["blocks.0.nothing.lora_A.weight"] = torch.zeros(2, 2)
        save_file(state, str(weights))
        return "fit no targeted layer"
    if kind == "broken config json":
        config.write_text("{ not json")
        return "adapter_config.json' is not readable JSON"
    if kind == "unknown target":
        cfg = json.loads(config.read_text())
        cfg["target_modules"] = ["no_such_layer"]
        config.write_text(json.dumps(cfg))
        return "target module 'no_such_layer' names no linear layer"
    if kind == "missing train_also file":
        (folder / "train_also.safetensors").unlink()
        return "train_also.safetensors' is missing"
    if kind == "train_also shape":
        tuned = load_file(str(folder / "train_also.safetensors"))
        name = sorted(tuned)[0]
        tuned[name] = torch.zeros(1)
        save_file(tuned, str(folder / "train_also.safetensors"))
        return "has shape (1,), the model's is"
    if kind == "broken record":
        (folder / "vqdiff_adapter.json").write_text("[1, 2")
        return "vqdiff_adapter.json' is not readable JSON"
    raise AssertionError(kind)


KINDS = ["truncated weights", "missing tensor", "wrong shape", "NaN", "extra tensor", "broken config json",
         "unknown target", "missing train_also file", "train_also shape", "broken record"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_corrupt_adapter_folder_is_refused_naming_the_file_and_the_model_is_unchanged(adapter, tmp_path, kind):
    root, folder = adapter
    broken = _copy(folder, tmp_path / "broken")
    words = _corrupt(kind, broken)
    model = _model(root)
    before = _snapshot(model)
    with pytest.raises(LoraError) as err:
        apply_adapter(model, broken)
    assert words in str(err.value) and str(broken) in str(err.value), str(err.value)
    after = model.state_dict()
    assert list(after) == list(before)  # no adapter layer injected: the same keys, in order
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any("lora" in type(m).__module__ for m in model.modules())


def test_the_intact_folder_applies_and_the_base_hash_is_checked(adapter, tmp_path):
    root, folder = adapter
    model = _model(root)
    record = apply_adapter(model, folder)
    assert record["train_also"] and any(".lora_A." in k for k in model.state_dict())
    (tmp_path / "base.pth").write_bytes(b"some base")
    hashed = _copy(folder, tmp_path / "hashed")
    rec = json.loads((hashed / "vqdiff_adapter.json").read_text())
    (hashed / "vqdiff_adapter.json").write_text(json.dumps({**rec, "base_sha256": "0" * 64}))
    fresh = _model(root)
    before = _snapshot(fresh)
    with pytest.raises(LoraError, match="SHA-256 0000000000000000.*refused"):
        apply_adapter(fresh, hashed, base_path=tmp_path / "base.pth")
    assert all(torch.equal(fresh.state_dict()[k], before[k]) for k in before) and len(fresh.state_dict()) == len(before)
    with pytest.warns(UserWarning, match="was trained on"):
        apply_adapter(fresh, hashed, base_path=tmp_path / "base.pth", allow_base_mismatch=True)
