"""``python -m flowkit``: the ``flowkit`` command (also what ``torchrun -m flowkit`` runs)."""

import sys

from flowkit.cli import main

sys.exit(main())
