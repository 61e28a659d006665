"""The notebook API of VQ-Diffusion, importable as in the official repository::

    from inference_VQ_Diffusion import VQ_Diffusion
    m = VQ_Diffusion(config='configs/ithq.yaml', path='OUTPUT/pretrained_model/ithq_learnable.pth')
    m.inference_generate_sample_with_condition("teddy bear playing in the pool", truncation_rate=1.0,
                                               save_root="RESULT", batch_size=4, guidance_scale=5.0)

``python inference_VQ_Diffusion.py`` runs that official example (images in ``RESULT/<caption>/``); when
a file it needs is missing it says which, and the ``scripts/download_checkpoints.py`` command to get it.
The implementation lives in :mod:`vqdiff.inference.api` (see docs/inference.md).
"""

import sys

from vqdiff.inference.api import VQ_Diffusion, sample_type_string
from vqdiff.utils.released_files import MissingReleasedFileError

__all__ = ["VQ_Diffusion", "sample_type_string"]


def main() -> int:
    """The official ``__main__`` example: ITHQ, learnable classifier-free guidance 5.0."""
    try:
        model = VQ_Diffusion(config="configs/ithq.yaml", path="OUTPUT/pretrained_model/ithq_learnable.pth")
    except MissingReleasedFileError as e:
        print(f"inference_VQ_Diffusion.py: {e}", file=sys.stderr)
        return 2
    model.inference_generate_sample_with_condition("teddy bear playing in the pool", truncation_rate=1.0,
                                                   save_root="RESULT", batch_size=4, guidance_scale=5.0)
    print("saved RESULT/teddy bear playing in the pool/000000.png ... 000003.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
