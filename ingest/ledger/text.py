"""What text the ledger can store: every string sent to PostgreSQL, with NUL made visible.

PostgreSQL ``text`` and ``jsonb`` cannot hold the NUL character (U+0000): psycopg raises
``DataError`` and, since that is no connection trouble, the ledger would make it fatal. Text
from outside reaches the ledger all the time — a search server's error reason, a transform
hook's exception message, a header name, a run's error — so one NUL in one record would
stop the stream at every restart, in the same batch. Sanitising each call site would miss
the next one, so the rule lives here, in the ledger connections' adapters: every Python
``str`` parameter, and every string inside a ``Json``/``Jsonb`` value, has each NUL replaced
by U+FFFD (the Unicode replacement character, ``"\ufffd"``), which keeps the text readable
and shows where the NUL was. Raw record bytes go to ``bytea`` columns as ``bytes`` and are
never touched.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap
from psycopg.types.json import set_json_dumps
from psycopg.types.string import StrBinaryDumper, StrDumperUnknown

NUL = "\x00"
#: What a NUL becomes in the ledger.
REPLACEMENT = "\ufffd"


def storable(text: str) -> str:
    """``text`` with every NUL replaced by U+FFFD (``text`` itself when it has none)."""
    return text.replace(NUL, REPLACEMENT) if NUL in text else text


def _storable_json(value: Any) -> Any:
    """``value`` with :func:`storable` applied to every string in it, keys included."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(str(k)): _storable_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable_json(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    # jsonb refuses the escape \u0000 as well, so strings are cleaned before encoding.
    return json.dumps(_storable_json(value))


class _StorableText(StrDumperUnknown):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(storable(obj))


class _StorableBinaryText(StrBinaryDumper):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(storable(obj))


def ledger_adapters() -> AdaptersMap:
    """The adapters every ledger connection uses (pass as ``context`` when connecting)."""
    adapters = AdaptersMap(psycopg.adapters)
    # The binary one first: the last registered is also the default (AUTO) format, and
    # that must stay text to the unknown oid, so PostgreSQL still casts '%s' as it needs.
    adapters.register_dumper(str, _StorableBinaryText)
    adapters.register_dumper(str, _StorableText)
    set_json_dumps(_dumps, context=adapters)
    return adapters
