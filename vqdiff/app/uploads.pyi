"""Uploaded images: checked for file size and pixel count before anything decodes them, decoded only once
the request holds the model's gate.

Gradio's image editor decodes every upload (background, painted layers, composite) while it prepares the
request, before the handler runs and so before :class:`~vqdiff.app.gate.RequestGate` admits it. The
:class:`GatedImageMask` editor instead hands the handler an :class:`Upload`: the file's bytes or path and
the size its header claims, checked against :class:`~vqdiff.app.requests.AppLimits` (``max_upload_bytes``,
``max_upload_pixels``). :func:`decode_upload` decodes it; the Edit handler calls it inside the gate.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Union

import gradio as gr
from gradio.data_classes import FileData
from PIL import Image

from .requests import AppLimits, InputError

__all__ = ["GatedImageMask", "Upload", "check_upload", "decode_upload"]


@dataclass(frozen=True)
class Upload:
    """An uploaded image not decoded yet: ``source`` (a file path or the bytes), the ``size`` (W, H) its
    header claims, its ``name`` for messages, and ``flatten`` (composite transparency on white, as the
    editor does for the background)."""

    source: Union[str, bytes]
    size: tuple[int, int]
    name: str
    flatten: bool = False


def check_upload(source: Union[str, bytes], limits: AppLimits, name: str = "the uploaded image",
                 flatten: bool = False) -> Upload:
    """``source`` as an :class:`Upload` after checking its byte size and the pixel count its header claims
    (PIL reads only the header here); :class:`InputError` naming ``name`` when over a limit or unreadable."""
    nbytes = len(source) if isinstance(source, (bytes, bytearray)) else os.path.getsize(source)
    if nbytes > limits.max_upload_bytes:
        raise InputError(f"{name} has {nbytes} bytes; this server takes at most {limits.max_upload_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
                size = (int(im.width), int(im.height))
    except Image.DecompressionBombError:
        raise InputError(f"{name} is over the pixel limit ({limits.max_upload_pixels} pixels)") from None
    except Exception as err:  # noqa: BLE001 - anything PIL cannot identify is "not an image"
        raise InputError(f"cannot read {name}: it is not an image file PIL can open "
                         f"({type(err).__name__})") from None
    if size[0] * size[1] > limits.max_upload_pixels:
        raise InputError(f"{name} is {size[0]}x{size[1]} = {size[0] * size[1]} pixels; this server takes at "
                         f"most {limits.max_upload_pixels}")
    return Upload(bytes(source) if isinstance(source, bytearray) else source, size, name, flatten)


def decode_upload(upload: Upload) -> Image.Image:
    """The decoded image of a checked upload (RGB when ``flatten``, else with its alpha as RGBA)."""
    try:
        src = io.BytesIO(upload.source) if isinstance(upload.source, bytes) else upload.source
        with Image.open(src) as im:
            if (im.width, im.height) != upload.size:
                raise InputError(f"{upload.name} changed since it was checked")
            im.load()
            rgba = im.convert("RGBA")
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - a truncated or corrupt file passes the header check
        raise InputError(f"cannot read {upload.name}: {type(err).__name__}") from None
    if not upload.flatten:
        return rgba
    return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")

from gradio.events import Dependency

class GatedImageMask(gr.ImageMask):
    """Gradio's ``ImageMask`` whose prepared value holds :class:`Upload` s (checked, not decoded) instead of
    decoded images; the page's browser code is the editor's own. Make it with :meth:`with_limits` (Gradio
    builds a component's config from its ``__init__`` signature, so this class keeps its parent's)."""

    limits: AppLimits = AppLimits()

    @classmethod
    def with_limits(cls, limits: AppLimits, **kwargs: Any) -> "GatedImageMask":
        editor = cls(**kwargs)
        editor.limits = limits
        return editor

    def get_block_name(self) -> str:
        return "imageeditor"

    def get_block_class(self) -> str:
        return "imageeditor"

    def convert_and_format_image(self, file: Optional[Union[FileData, bytes]],
                                 flatten_on_white: bool = False) -> Optional[Upload]:
        if file is None:
            return None
        if isinstance(file, FileData):
            source: Union[str, bytes] = file.path
            name = f"the uploaded image '{os.path.basename(file.orig_name or file.path)}'"
        else:
            source, name = bytes(file), "the uploaded image"
        try:
            return check_upload(source, self.limits, name, flatten=flatten_on_white)
        except InputError as err:
            raise gr.Error(str(err)) from None
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component