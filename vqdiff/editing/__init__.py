"""Editing with a trained vqdiff model: text-guided inpainting (known tokens fixed), partial-noising edits."""

from .figure import inpaint_figure, save_inpaint_figure
from .inpaint import (
    as_image_tensor,
    as_mask_tensor,
    dilate_token_mask,
    edit_tokens,
    inpaint_image,
    inpaint_tokens,
    token_mask_from_pixel_mask,
    token_mask_to_pixels,
)

__all__ = [
    "as_image_tensor",
    "as_mask_tensor",
    "dilate_token_mask",
    "edit_tokens",
    "inpaint_image",
    "inpaint_tokens",
    "token_mask_from_pixel_mask",
    "token_mask_to_pixels",
    "inpaint_figure",
    "save_inpaint_figure",
]
