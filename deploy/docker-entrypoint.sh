#!/bin/sh
# Container entrypoint: turn PGPASSWORD_FILE (a compose secret) into PGPASSWORD, then run
# the command. luigid's task history connects through libpq, which reads a password from
# PGPASSWORD or a pgpass file but not from a plain secret file. The ingester needs none of
# this: it reads INGEST_*_FILE variables itself (see ingest/settings.py).
set -eu

if [ -n "${PGPASSWORD_FILE:-}" ]; then
    if [ ! -r "$PGPASSWORD_FILE" ]; then
        echo "docker-entrypoint: cannot read PGPASSWORD_FILE=$PGPASSWORD_FILE" >&2
        exit 1
    fi
    PGPASSWORD="$(cat "$PGPASSWORD_FILE")"
    export PGPASSWORD
    unset PGPASSWORD_FILE
fi

exec "$@"
