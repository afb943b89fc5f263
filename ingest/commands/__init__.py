"""Subcommands of the ``ingest`` CLI that live in modules of their own."""
