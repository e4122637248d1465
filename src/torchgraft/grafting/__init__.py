"""Grafting: dry runs on the meta device, finding the classifier, cutting the body, new heads, input channels,
the pretrained-weights guard. Knows nothing of training."""
