"""Evaluation: image and codebook metrics, LPIPS, and the pretrained-weights helper (weights.py)."""
