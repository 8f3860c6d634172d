"""``python -m tri_panet.cli ...`` (what ``torchrun -m tri_panet.cli train ...`` runs)."""

import sys

from . import main

sys.exit(main())
