"""Evaluation: text-following accuracy on the synthetic shapes (``shapes_classifier``), FID / Inception Score / KID
through torchmetrics on the TF-FID Inception (``fid``) and CLIP score on the project's CLIP text tower
(``clip_score``), with Inception / CLIP weights from user-given paths."""
