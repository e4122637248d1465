"""Training: the loop, its callbacks (progress, checkpoints), lr_find, the feature cache, run state, distributed."""
