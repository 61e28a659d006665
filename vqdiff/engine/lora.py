"""Alias of :mod:`vqdiff.adapters.lora` (model surgery and the adapter folder), kept because configs and scripts name this path."""

from vqdiff.adapters.lora import (  # noqa: F401
    ADAPTER_NAME,
    RECORD_FILE,
    LoraError,
    lora_network,
    linear_layer_names,
    resolve_targets,
    resolve_train_also,
    add_lora,
    file_sha256,
    save_adapter,
    read_adapter_record,
    check_base,
    apply_adapter,
    set_lora_scale,
    merge_lora,
    is_adapter_folder,
    LoraSetup,
    NETWORK,
)

__all__ = ["ADAPTER_NAME", "RECORD_FILE", "LoraError", "lora_network", "linear_layer_names",
           "resolve_targets", "resolve_train_also", "add_lora", "file_sha256", "save_adapter",
           "read_adapter_record", "check_base", "apply_adapter", "set_lora_scale", "merge_lora",
           "is_adapter_folder", "LoraSetup", "NETWORK"]
