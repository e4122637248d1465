"""``python -m torchgraft``: the command line, also as ``torchrun --nproc_per_node N -m torchgraft train DATA``."""

import sys

from torchgraft.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
