"""Inference helpers: building a model from a config and loading checkpoints (:mod:`.loading`), saving
images and grids (:mod:`.images`), checkpoint conversion (:mod:`.conversion`), the diffusers export
(:mod:`.diffusers_export`) and import (:func:`load_diffusers`, :mod:`.diffusers_import`). The notebook
API is ``inference_VQ_Diffusion.VQ_Diffusion``."""

from .diffusers_import import load_diffusers
from .images import make_grid, safe_name, save_images, to_pil_images
from .loading import (
    LoadReport,
    build_model,
    choose_device,
    freeze_for_inference,
    load_model_weights,
    prepare_config,
    read_checkpoint_file,
    split_checkpoint,
)

__all__ = [
    "LoadReport",
    "load_diffusers",
    "build_model",
    "choose_device",
    "freeze_for_inference",
    "load_model_weights",
    "prepare_config",
    "read_checkpoint_file",
    "split_checkpoint",
    "make_grid",
    "safe_name",
    "save_images",
    "to_pil_images",
]
