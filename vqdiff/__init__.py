"""vqdiff: VQ-Diffusion (arXiv 2111.14822, 2205.16007) in plain PyTorch."""

__version__ = "0.1.0"
