"""``python -m flowkit``: the ``flowkit`` command (also what ``torchrun -m flowkit`` runs)."""

import sys

from flowkit.cli import main

if __name__ == "__main__":  # not on import (tools that import every module)
    sys.exit(main())
