"""Alias of :mod:`vqdiff.adapters.folder` (the adapter folder format), kept because configs and scripts name this path."""

from vqdiff.adapters.folder import (  # noqa: F401
    AdapterFiles,
    LoraError,
    read_adapter_folder,
    read_json,
    WEIGHTS_FILE,
    CONFIG_FILE,
    TRAIN_ALSO_FILE,
    RECORD_FILE,
)

__all__ = ["AdapterFiles", "LoraError", "read_adapter_folder", "read_json", "WEIGHTS_FILE", "CONFIG_FILE",
           "TRAIN_ALSO_FILE", "RECORD_FILE"]
