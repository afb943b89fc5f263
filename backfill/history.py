"""luigid's task history in the ledger's PostgreSQL: the SQLAlchemy URL that points there.

luigid records task history through SQLAlchemy (``[task_history] db_connection``), while
everything else here speaks libpq DSNs. :func:`sqlalchemy_url` turns the ledger DSN (URL or
``key=value`` form, TCP or unix socket) into the ``postgresql+psycopg://`` URL of the psycopg
3 dialect, for the same server and optionally another database. The password is left out
unless asked for: luigid's libpq then reads ``PGPASSWORD`` / ``PGPASSFILE``, so no secret is
written into luigi.cfg or shown by ``ps``.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL

from ingest.errors import ConfigError


def sqlalchemy_url(dsn: str, *, database: str | None = None, with_password: bool = False) -> str:
    """``postgresql+psycopg://user@host:port/db`` for ``dsn``; unix sockets go in ``?host=``."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        raise ConfigError("invalid ledger DSN: can not derive the task-history URL") from None
    host = str(params.get("host") or "") or None
    query: dict[str, str] = {}
    if host is not None and host.startswith("/"):
        query["host"] = host
        host = None
    port = params.get("port")
    url = URL.create(
        "postgresql+psycopg",
        username=str(params["user"]) if params.get("user") else None,
        password=str(params["password"]) if with_password and params.get("password") else None,
        host=host,
        port=int(port) if port else None,
        database=database or (str(params["dbname"]) if params.get("dbname") else None),
        query=query,
    )
    return url.render_as_string(hide_password=False)


def luigi_cfg_value(value: str) -> str:
    """``value`` as written in luigi.cfg, whose parser treats ``%`` as interpolation."""
    return value.replace("%", "%%")
