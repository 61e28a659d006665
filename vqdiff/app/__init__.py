"""A local web page for any trained vqdiff model: ``python -m vqdiff.app --config C --ckpt P``.

Parts: :mod:`.model_source` (which model: the flags, a diffusers folder, or the last demo run),
:mod:`.requests` (the page's values as a checked request and its notebook call), :mod:`.gate` (one
generation at a time, a bounded queue), :mod:`.service` (generation with previews, editing) and
:mod:`.ui` (the Gradio page; imported only when serving, Gradio being the ``app`` extra).
"""

from .gate import RequestGate, ServerBusy
from .model_source import DEMO_COMMAND, ModelSource, NoModelError, resolve_model_source
from .requests import AppLimits, GenerateRequest, InputError, parse_generate
from .service import ModelService

__all__ = ["AppLimits", "DEMO_COMMAND", "GenerateRequest", "InputError", "ModelService", "ModelSource",
           "NoModelError", "RequestGate", "ServerBusy", "parse_generate", "resolve_model_source"]
