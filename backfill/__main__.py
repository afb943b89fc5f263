"""``python -m backfill``: the ``backfill`` command without the console script."""

from backfill.cli import main

main()
