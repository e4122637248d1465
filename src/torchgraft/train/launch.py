"""What torchrun told this process, read from its environment without importing torch (the command line
asks before torch is loaded, so that a bad argument is refused at once)."""

from __future__ import annotations

import os

__all__ = ["launched"]


def launched() -> bool:
    """Whether this process was started by torchrun as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
