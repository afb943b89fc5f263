"""Secrets in tests: the forms a leaked one would take, and rotating one in its file."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from urllib.parse import quote


def secret_forms(secret: str) -> set[str]:
    """How a secret could show up in text: as is, URL-encoded, hex (bytea), base64."""
    return {
        secret,
        quote(secret, safe=""),
        secret.encode().hex(),
        base64.b64encode(secret.encode()).decode(),
    }


def rotate_file(path: Path, value: str) -> None:
    """Write ``value`` beside ``path`` and rename it over, as rotating agents do."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)
