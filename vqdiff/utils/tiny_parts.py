"""The random stand-in parts that ``configs/tiny_text_shapes.yaml`` loads, so that its tiny text-to-image
model trains on CPU in seconds without downloading anything.

Written under ``<root>/OUTPUT/tiny_parts/`` (the config names these paths relative to the working directory):
- ``clip_tiny.pt``: a random CLIP text tower with the real 49408-token vocabulary (width 32, 1 layer,
  1 head, 77 positions, 32-d output), weights ~ N(0, 0.02), layer-norm weights 1, biases 0;
- ``vq.yaml`` + ``vq.pth``: a random taming ``VQModel`` (16x16 images -> 4x4 tokens, 16 codes, 8-d codes).

The weights are drawn from a fixed seed (0) on a private generator state: the same files every time, and
the caller's global RNG is left as it was.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["TINY_PARTS_DIR", "random_clip_text_tower", "write_tiny_parts"]

TINY_PARTS_DIR = Path("OUTPUT") / "tiny_parts"  # relative to the working directory, as the config reads it

_VQ_CONFIG = {"target": "vqdiff.modeling.codecs.image.vqgan.VQModel", "params": {
    "embed_dim": 8, "n_embed": 16, "ddconfig": {
        "double_z": False, "z_channels": 8, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}


def random_clip_text_tower(width: int = 32, layers: int = 1, seed: int = 0, other_std: float = 0.0,
                           token_std: float | None = None) -> torch.nn.Module:
    """A CLIP text tower with the real 49408-token vocabulary (77 positions, ``max(1, width // 64)`` heads)
    and random weights drawn after ``torch.manual_seed(seed)`` (the global generator): matrices
    ~ N(0, 0.02), layer-norm weights 1, the other 1-D parameters ~ N(0, other_std) (zeros when 0), and
    the token embedding redrawn ~ N(0, token_std) when given."""
    from vqdiff.modeling.embeddings.clip_model import CLIPTextConfig, CLIPTextTransformer

    torch.manual_seed(seed)
    model = CLIPTextTransformer(CLIPTextConfig(49408, 77, width, layers, max(1, width // 64), width))
    for name, p in model.named_parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.02)
        elif "ln" in name and name.endswith("weight"):
            torch.nn.init.ones_(p)
        elif other_std > 0:
            torch.nn.init.normal_(p, std=other_std)
        else:
            torch.nn.init.zeros_(p)
    if token_std is not None:
        torch.nn.init.normal_(model.token_embedding.weight, std=token_std)
    return model


def write_tiny_parts(root: str | Path = ".") -> Path:
    """Write the tiny CLIP text tower and VQModel under ``root/OUTPUT/tiny_parts``; returns that folder."""
    from vqdiff.modeling.codecs.image.vqgan import VQModel
    from vqdiff.utils.config import save_yaml_config

    parts = Path(root) / TINY_PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        clip = random_clip_text_tower(width=32, layers=1, seed=0)
        vq = VQModel(**_VQ_CONFIG["params"])
    torch.save(clip.state_dict(), parts / "clip_tiny.pt")
    save_yaml_config({"model": _VQ_CONFIG}, parts / "vq.yaml")
    torch.save({"state_dict": vq.state_dict()}, parts / "vq.pth")
    return parts
