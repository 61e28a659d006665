"""The notebook API of VQ-Diffusion, importable as in the official repository::

    from inference_VQ_Diffusion import VQ_Diffusion
    m = VQ_Diffusion(config='OUTPUT/pretrained_model/config_text.yaml',
                     path='OUTPUT/pretrained_model/human_pretrained.pth')
    m.inference_generate_sample_with_condition("a beautiful smiling woman", truncation_rate=0.85,
                                               save_root="RESULT", batch_size=4)

The implementation lives in :mod:`vqdiff.inference.api` (see docs/inference.md).
"""

from vqdiff.inference.api import VQ_Diffusion, sample_type_string

__all__ = ["VQ_Diffusion", "sample_type_string"]
