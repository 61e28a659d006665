"""Evaluation: text-following accuracy on the synthetic shapes (``shapes_classifier``), FID and Inception
Score (``fid``) and CLIP score (``clip_score``), with Inception / CLIP weights from user-given paths."""
