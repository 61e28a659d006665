"""Alias of :mod:`vqdiff.data.image_files` (the reader base classes and bad-image handling), kept because
existing code and notebooks name this path."""

from .image_files import (  # noqa: F401
    BadImageError,
    CaptionedImageDataset,
    ImageFileDataset,
    MissingImageError,
    build_preprocessor,
    load_rgb,
    require_dir,
    require_file,
)

__all__ = ["BadImageError", "MissingImageError", "ImageFileDataset", "CaptionedImageDataset", "require_dir",
           "require_file", "load_rgb", "build_preprocessor"]
