"""Weights: safe checkpoint reading, key alignment, loading and saving, building pretrained models by name."""
