"""``python -m backfill.reindex``: the reindex command on its own."""

from backfill.reindex.command import reindex_command

reindex_command()
