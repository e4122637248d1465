"""Other libraries quiet while a command runs: no Hugging Face progress bars ("Loading weights", downloads),
no hub or transformers warnings and retry logs, no library warnings; torchgraft's own lines stay.
``--verbose`` leaves them as the libraries have them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

__all__ = ["QUIETED", "libraries_quiet"]

QUIETED = ("huggingface_hub", "transformers", "timm", "datasets", "httpx", "urllib3")  # their loggers and warnings
_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "DATASETS_VERBOSITY": "error"}


def _bars_off() -> None:
    """Turn off the bars of libraries imported already (the environment covers the ones imported later)."""
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()


@contextlib.contextmanager
def libraries_quiet(quiet: bool = True) -> Iterator[None]:
    """Inside the block other libraries print only errors (``quiet=False``: nothing changes).

    Example:
        >>> with libraries_quiet():
        ...     model = transformers.AutoModel.from_pretrained(folder)  # no "Loading weights" bar
    """
    if not quiet:
        yield
        return
    saved_env = {name: os.environ.get(name) for name in _ENV}
    loggers = [logging.getLogger(name) for name in QUIETED]
    levels = [logger.level for logger in loggers]
    os.environ.update({name: value for name, value in _ENV.items() if name not in os.environ})
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    _bars_off()
    try:
        with warnings.catch_warnings():
            for name in QUIETED:
                warnings.filterwarnings("ignore", module=rf"{name}(\..*)?$")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
