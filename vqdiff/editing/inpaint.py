"""Text-guided inpainting and editing with any vqdiff model (DALLE, C_DALLE, UC_DALLE).

VQ-Diffusion's network predicts ``p(x_0 | x_t)`` at every position from a partly masked ``x_t``
(arXiv 2111.14822 Sec. 3.3), so inpainting is sampling with the known tokens pinned: the tokens of the
region to repaint start as [MASK], every other token is fixed to the image's token at EVERY step (the
samplers' ``fixed = (keep, tokens)``), and the masked tokens are drawn with the text (or class) and
classifier-free guidance as in ordinary generation (ancestral, Improved, skip-step or MaskGIT sampler
per ``sample_type``).

The official partial-noising edit (``filter_ratio``): the whole image's tokens are noised to step
``int(T * filter_ratio) - 1`` (``x_t ~ q(x_t | x_0)``, Eq. 5) and denoised with the new text;
with a mask it can be limited to the region (:func:`inpaint_tokens` with ``filter_ratio > 0``).

Masks: nonzero/True = repaint. A pixel mask (H, W) becomes a token mask (h, w) where a token is masked
if ANY of its pixels is masked (:func:`token_mask_from_pixel_mask`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vqdiff.modeling.diffusion.sampling_options import SamplingOptions

__all__ = [
    "as_mask_tensor",
    "token_mask_from_pixel_mask",
    "token_mask_to_pixels",
    "dilate_token_mask",
    "as_image_tensor",
    "inpaint_tokens",
    "edit_tokens",
    "inpaint_image",
]


# ------------------------------------------------------------------------------------------------------
# masks and images
# ------------------------------------------------------------------------------------------------------
def as_mask_tensor(mask: Any) -> torch.Tensor:
    """A bool tensor from a mask given as a tensor, numpy array or PIL image (nonzero = masked).

    Shapes kept: (H, W), (B, H, W) or (B, 1, H, W) -> (H, W) / (B, H, W). A PIL image is read as 'L'.
    """
    if hasattr(mask, "convert") and hasattr(mask, "size"):  # PIL image
        mask = np.asarray(mask.convert("L"))
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.array(mask, copy=True))
    if not torch.is_tensor(mask):
        raise TypeError(f"mask must be a tensor, numpy array or PIL image, got {type(mask).__name__}")
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"a 4-D mask must be (B, 1, H, W), got shape {tuple(mask.shape)}")
        mask = mask[:, 0]
    if mask.dim() not in (2, 3):
        raise ValueError(f"mask must be (H, W), (B, H, W) or (B, 1, H, W), got shape {tuple(mask.shape)}")
    return mask != 0


def token_mask_from_pixel_mask(mask: Any, token_shape: Sequence[int], batch_size: Optional[int] = None) -> torch.Tensor:
    """Token mask ``(B, h*w)`` bool, row-major, from a mask in pixel space (H, W) or token space (h, w).

    A mask whose last two dimensions equal ``token_shape`` is taken as a token mask; otherwise H and W
    must be multiples of h and w and a token is masked if any pixel of its (H/h, W/w) patch is masked.
    A single (unbatched) mask is repeated ``batch_size`` times (default 1).
    """
    m = as_mask_tensor(mask)
    h, w = int(token_shape[0]), int(token_shape[1])
    if m.dim() == 2:
        m = m.unsqueeze(0)
        if batch_size is not None:
            m = m.expand(int(batch_size), -1, -1)
    elif batch_size is not None and m.shape[0] != batch_size:
        if m.shape[0] != 1:
            raise ValueError(f"mask has batch {m.shape[0]} but {batch_size} images are inpainted")
        m = m.expand(int(batch_size), -1, -1)
    B, H, W = m.shape
    if (H, W) != (h, w):
        if H % h or W % w:
            raise ValueError(
                f"mask of size {H}x{W} is neither the token grid {h}x{w} nor a multiple of it "
                f"(pixel masks must be the image size, a multiple of the token grid)"
            )
        m = m.reshape(B, h, H // h, w, W // w).any(dim=4).any(dim=2)
    return m.reshape(B, h * w).contiguous()


def token_mask_to_pixels(token_mask: torch.Tensor, token_shape: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """The pixels covered by masked tokens: ``(B, N)`` bool -> ``(B, H, W)`` bool (nearest upsampling)."""
    h, w = int(token_shape[0]), int(token_shape[1])
    m = token_mask.reshape(-1, 1, h, w).float()
    return F.interpolate(m, size=(int(size[0]), int(size[1])), mode="nearest")[:, 0] > 0.5


def dilate_token_mask(token_mask: torch.Tensor, token_shape: Sequence[int], radius: int = 1) -> torch.Tensor:
    """Grow a token mask ``(B, h*w)`` (or ``(h*w,)``) by ``radius`` tokens in every direction (a square
    structuring element), clipped at the grid's border.

    Why: a codec's encoder sees past its token's own pixels (its receptive field spans the neighbouring
    patches), so the tokens just outside an edited region still describe what was inside it -- the
    background tokens around a red shape encode "background next to red". Kept, they pin that context
    and the sampler tends to redraw the old content (in the shapes demo, the old colour). Repainting a
    ring of ``radius`` tokens around the region lets the model redraw that context with the new caption.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    m = token_mask.bool()
    squeeze = m.dim() == 1
    if squeeze:
        m = m.unsqueeze(0)
    h, w = int(token_shape[0]), int(token_shape[1])
    if m.shape[-1] != h * w:
        raise ValueError(f"token mask has {m.shape[-1]} positions, token_shape {h}x{w} has {h * w}")
    if radius > 0:
        grid = m.view(-1, 1, h, w).float()
        grid = F.max_pool2d(grid, kernel_size=2 * radius + 1, stride=1, padding=radius)
        m = grid.view(-1, h * w) > 0
    return m[0] if squeeze else m


def as_image_tensor(image: Any) -> torch.Tensor:
    """Images as float ``(B, 3, H, W)`` in [0, 255] from a PIL image, a uint8 (H, W, 3) array, a list of
    these, or a (3, H, W) / (B, 3, H, W) tensor already in [0, 255]."""
    if isinstance(image, (list, tuple)):
        return torch.cat([as_image_tensor(i) for i in image], dim=0)
    if hasattr(image, "convert") and hasattr(image, "size"):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an image array must be (H, W, 3), got shape {image.shape}")
        image = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)
    if not torch.is_tensor(image):
        raise TypeError(f"image must be a PIL image, numpy array or tensor, got {type(image).__name__}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image tensor must be (3, H, W) or (B, 3, H, W), got shape {tuple(image.shape)}")
    return image.float()


# ------------------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------------------
def _condition_batch(model, condition: Any, batch_size: int) -> Optional[dict]:
    """The ``batch`` for ``generate_content``: texts for DALLE, labels for C_DALLE, None unconditional."""
    key = getattr(model, "condition_info", {}).get("key") if hasattr(model, "condition_info") else None
    if key is None:
        if condition is not None:
            raise ValueError(f"{type(model).__name__} is unconditional: pass no text/label (got {condition!r})")
        return None
    if condition is None:
        raise ValueError(f"{type(model).__name__} needs a condition under '{key}' (a text or a class label)")
    if isinstance(condition, str):
        condition = [condition] * batch_size
    elif torch.is_tensor(condition) or isinstance(condition, (int, np.integer)):
        condition = torch.as_tensor(condition).reshape(-1)
        condition = condition.expand(batch_size).clone() if condition.numel() == 1 else condition
    condition = list(condition) if isinstance(condition, (list, tuple)) else condition
    if len(condition) == 1 and batch_size > 1:
        condition = list(condition) * batch_size
    if len(condition) != batch_size:
        raise ValueError(f"{len(condition)} conditions for {batch_size} images")
    return {key: condition}


def inpaint_tokens(
    model,
    tokens: torch.Tensor,
    token_mask: Any,
    text: Any = None,
    *,
    sample_type: Optional[str] = None,
    options: Optional[SamplingOptions] = None,
    negative_prompt: Any = None,
    filter_ratio: float = 0.0,
    callback: Optional[Callable[[dict], None]] = None,
    decode: bool = True,
    **option_fields: Any,
) -> dict:
    """Resample the masked tokens of ``tokens`` with the condition ``text``; the others never change.

    Args:
        model: a ``DALLE`` / ``C_DALLE`` / ``UC_DALLE``.
        tokens: (B, N) or (N,) image tokens in ``0 .. K-1``.
        token_mask: (B, N), (N,), (B, h, w) or (h, w) bool, True = repaint (see
            :func:`token_mask_from_pixel_mask` for pixel masks).
        text: caption(s) for DALLE (one or B), class label(s) for C_DALLE, None for UC_DALLE.
        sample_type / options / option_fields: the request, as for ``generate_content``: a
            ``SamplingOptions``, or the official string (``'top0.85r'``, ``',fast{k}'``, ``',maskgit{S}'``,
            ...; None: ``'top0.85r'``) with ``SamplingOptions`` fields as keywords (``guidance_scale``,
            ``generator``, ``prior_rule`` ...; None: the model's default).
        negative_prompt: the negative text (or class label) of guidance's unconditional branch.
        filter_ratio: 0 = the region starts all-[MASK]; > 0 = the official partial noising limited to the
            region: its tokens are noised to step ``int(T * filter_ratio) - 1`` and denoised.
        callback: the sampler's per-step callback (``{'step', 't', 'x', 'log_x0'}``).

    Returns ``{'content_token': (B, N), 'token_mask': (B, N), 'content': (B, 3, H, W)}`` (no
    ``'content'`` when ``decode`` is False).
    """
    tokens = torch.as_tensor(tokens).long()
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (B, N) or (N,), got shape {tuple(tokens.shape)}")
    B, N = tokens.shape
    K = model.transformer.num_classes - 1
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= K):
        raise ValueError(f"token values must lie in 0..{K - 1}, got {int(tokens.min())}..{int(tokens.max())}")
    m = as_mask_tensor(token_mask) if not torch.is_tensor(token_mask) else token_mask.bool()
    if m.dim() >= 2 and m.shape[-1] * m.shape[-2] == N and tuple(m.shape[-2:]) != (B, N):
        m = m.reshape(*m.shape[:-2], N)  # (h, w) or (B, h, w) token grids
    if m.dim() == 1:
        m = m.unsqueeze(0)
    if m.shape[-1] != N:
        raise ValueError(f"token mask has {m.shape[-1]} positions but the image has {N} tokens")
    m = m.expand(B, N) if m.shape[0] == 1 else m
    if m.shape[0] != B:
        raise ValueError(f"token mask has batch {m.shape[0]} but tokens have batch {B}")
    device = model.device
    tokens, m = tokens.to(device), m.to(device)
    fixed = (~m, tokens)
    batch = _condition_batch(model, text, B)
    if options is None:
        options = model.sampling_options(sample_type, **option_fields)
    elif sample_type is not None or option_fields:
        raise TypeError("give the request as options= or as sample_type= and option keywords, not both")
    kw: dict = dict(options=options, callback=callback, fixed=fixed, filter_ratio=float(filter_ratio))
    if batch is not None:
        kw["negative_prompt"] = negative_prompt
    if filter_ratio > 0:
        batch = dict(batch or {})
        batch["content_token"] = tokens
    elif batch is None:
        kw["replicate"] = B  # unconditional: one sample per image
    out = model.generate_content(batch=batch, **kw)
    res = {"content_token": out["content_token"], "token_mask": m}
    if decode:
        res["content"] = out["content"]
    return res


def edit_tokens(model, tokens: torch.Tensor, text: Any = None, *, filter_ratio: float = 0.5, **kwargs) -> dict:
    """The official partial-noising edit of the WHOLE image: ``x_t ~ q(x_t | tokens)`` at
    ``t = int(T * filter_ratio) - 1``, then denoised with ``text`` (kwargs as :func:`inpaint_tokens`)."""
    if not 0.0 < filter_ratio <= 1.0:
        raise ValueError(f"filter_ratio must be in (0, 1], got {filter_ratio}")
    tokens = torch.as_tensor(tokens).long()
    return inpaint_tokens(model, tokens, torch.ones_like(tokens, dtype=torch.bool), text,
                          filter_ratio=filter_ratio, **kwargs)


@torch.no_grad()
def inpaint_image(
    model,
    image: Any,
    mask: Any,
    text: Any = None,
    *,
    save_path: Optional[str] = None,
    **kwargs,
) -> dict:
    """Inpaint an image: encode it with the model's codec, repaint the tokens touched by ``mask``
    (pixel (H, W) or token (h, w) space, nonzero = repaint), decode. kwargs as :func:`inpaint_tokens`.

    Returns ``{'image': (B, 3, H, W) input, 'content': (B, 3, H, W) result in [0, 255], 'content_token',
    'input_token', 'token_mask' (B, N), 'pixel_mask' (B, H, W) the pixels of the repainted tokens}``;
    with ``save_path`` also writes input | mask | result side by side (:func:`save_inpaint_figure`).
    """
    images = as_image_tensor(image).to(model.device)
    codec = model.content_codec
    tokens = codec.get_tokens(images)["token"]
    token_shape = tuple(codec.token_shape)
    tmask = token_mask_from_pixel_mask(mask, token_shape, batch_size=images.shape[0])
    out = inpaint_tokens(model, tokens, tmask, text, **kwargs)
    pix = token_mask_to_pixels(out["token_mask"].cpu(), token_shape, images.shape[-2:])
    res = {"image": images, "content": out["content"], "content_token": out["content_token"],
           "input_token": tokens, "token_mask": out["token_mask"], "pixel_mask": pix}
    if save_path is not None:
        from .figure import save_inpaint_figure

        save_inpaint_figure(save_path, images, pix, out["content"])
    return res
