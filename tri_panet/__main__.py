"""``python -m tri_panet ...`` runs the ``tri-panet`` command line."""

from .cli import main

raise SystemExit(main())
