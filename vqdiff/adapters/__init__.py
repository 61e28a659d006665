"""Adapters of a trained model, used by training and inference alike: LoRA model surgery (``lora.py``), the
adapter folder's format and its checks (``folder.py``) and the ``solver.lora`` section (``config.py``).
The training side of a LoRA run (base loading, checkpoints, the adapter folder per save) stays beside the
trainer in ``vqdiff.engine.lora_training``."""
