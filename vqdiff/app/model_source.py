"""Which model the web app serves: ``--config``/``--ckpt`` as the CLI takes them, a diffusers folder, or by
default the model of the last CPU demo run (``running_command/run_demo_shapes.py``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vqdiff.inference.diffusers_import import is_diffusers_folder

__all__ = ["DEMO_COMMAND", "DEMO_DIR", "DEMO_GUIDANCE_SCALE", "ModelSource", "NoModelError", "resolve_model_source",
           "shown_path"]

DEMO_DIR = Path("OUTPUT") / "demo_shapes"
"""Where the demo writes its run (its ``--output`` default, relative to the working directory, as the
demo's config names its parts relative to it too)."""

DEMO_COMMAND = "python running_command/run_demo_shapes.py"
"""The one command that trains the demo model the app serves when given no model."""

DEMO_GUIDANCE_SCALE = 3.0
"""The page's starting guidance scale for the demo model: the scale the demo scores it with
(``run_demo_shapes.py --guidance-scale``). Other models start at 1 (no guidance, ``SamplingOptions``)."""


class NoModelError(FileNotFoundError):
    """No model was named and no demo run exists; the message names the command that makes one."""


@dataclass(frozen=True)
class ModelSource:
    """A model to serve.

    Attributes:
        config: the model YAML (official or vqdiff), or a diffusers ``VQDiffusionPipeline`` folder.
        ckpt: the checkpoint (``.pth`` or ``.safetensors``); None for a diffusers folder.
        is_demo: True when this is the demo run's model (chosen because no model was named).
    """

    config: str
    ckpt: Optional[str]
    is_demo: bool = False

    def describe(self) -> str:
        """One line for the page and the log."""
        what = "the demo model" if self.is_demo else "model"
        return f"{what}: {self.config}" + (f" + {self.ckpt}" if self.ckpt else " (diffusers folder)")

    def shown(self, cwd: Path, absolute: bool = False) -> "ModelSource":
        """This source with the paths clients may see (:func:`shown_path`)."""
        ckpt = shown_path(self.ckpt, cwd, absolute) if self.ckpt else None
        return ModelSource(shown_path(self.config, cwd, absolute), ckpt, self.is_demo)


def shown_path(path: str, cwd: Path, absolute: bool = False) -> str:
    """``path`` as the page shows it to every client: relative to the server's working folder ``cwd`` (so
    the shown code runs from there, and no absolute path reaches a client); the absolute path only when
    ``absolute`` (``--show-absolute-paths``)."""
    full = os.path.abspath(path)
    if absolute:
        return full
    try:
        return Path(os.path.relpath(full, os.path.abspath(cwd))).as_posix()
    except ValueError:  # another drive (Windows): the file name only
        return Path(full).name


def resolve_model_source(config: Optional[str], ckpt: Optional[str], demo_dir: Path = DEMO_DIR) -> ModelSource:
    """The model named by ``config``/``ckpt`` (either may be a diffusers folder), or with neither the
    demo run in ``demo_dir`` (``configs/demo_text_shapes.yaml`` + ``diffusion/checkpoint/last.pth``).

    Raises:
        NoModelError: neither was given and the demo run is missing (the message names :data:`DEMO_COMMAND`).
        FileNotFoundError: a named file or folder does not exist.
        ValueError: a YAML config without a checkpoint, or a checkpoint without its config.
    """
    if config is None and ckpt is None:
        demo_config = Path(demo_dir) / "configs" / "demo_text_shapes.yaml"
        demo_ckpt = Path(demo_dir) / "diffusion" / "checkpoint" / "last.pth"
        if demo_config.is_file() and demo_ckpt.is_file():
            return ModelSource(str(demo_config), str(demo_ckpt), is_demo=True)
        raise NoModelError(f"no model given and no demo run in '{demo_dir}' (it needs {demo_config} and "
                           f"{demo_ckpt}). Train the demo model with:\n    {DEMO_COMMAND}\n"
                           "or serve any model with: python -m vqdiff.app --config CONFIG.yaml --ckpt CHECKPOINT")
    for flag, value in (("--config", config), ("--ckpt", ckpt)):
        if value is not None and not Path(value).exists():
            raise FileNotFoundError(f"{flag} '{value}' does not exist")
    if config is not None and is_diffusers_folder(config):
        if ckpt is not None:
            raise ValueError(f"--config '{config}' is a diffusers folder, which holds its weights: give no --ckpt")
        return ModelSource(str(config), None)
    if config is None:
        if is_diffusers_folder(ckpt):
            return ModelSource(str(ckpt), None)
        raise ValueError(f"--ckpt '{ckpt}' needs its --config (the model YAML)")
    if ckpt is None:
        raise ValueError(f"--config '{config}' needs --ckpt (the checkpoint), unless it is a diffusers folder "
                         "(one with model_index.json)")
    return ModelSource(str(config), str(ckpt))
