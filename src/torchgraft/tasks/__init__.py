"""Tasks: what a batch means, the loss, the metrics, how outputs decode into predictions (one module per task)."""
