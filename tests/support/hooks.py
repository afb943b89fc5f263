"""Transform hooks for daemon tests (``transform = "tests.support.hooks:<name>"``).

The daemon subprocess imports them, so its ``PYTHONPATH`` must hold the repository root.
"""

from __future__ import annotations

from typing import Any

from ingest.types import RawRecord


def refuse_with_nul(doc: dict[str, Any], record: RawRecord) -> dict[str, Any]:
    """Refuse orders of customers named ``nul-*`` with a message holding a NUL character
    and the record's key as text (which may hold one too), as careless hooks do."""
    if str(doc.get("customer_id", "")).startswith("nul-"):
        key = (record.key or b"").decode("utf-8", "replace")
        raise ValueError(f"customer \x00 refused for key {key}")
    return doc
