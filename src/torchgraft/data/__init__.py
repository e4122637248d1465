"""Data: reading images, folder and CSV datasets, preprocessing from the weights' metadata."""
