#!/bin/sh
# Create the secret files docker-compose.yml expects, if they do not exist yet:
#   postgres_password  the PostgreSQL password (postgres, luigid via PGPASSWORD_FILE)
#   ledger_dsn         the ingester's ledger DSN with that same password
#                      (INGEST_LEDGER_DSN_FILE; ingest/settings.py reads it)
# Usage: deploy/make-secrets.sh [directory]   (default: deploy/secrets next to this script)
# Existing files are left alone, so re-running never rotates a password under a live volume.
set -eu

dir="${1:-$(dirname "$0")/secrets}"
# The directory guards the files on the host. The files themselves must be readable inside
# the containers by their non-root users (postgres, ingest): compose bind-mounts file
# secrets with the host's owner and mode, ignoring uid/gid/mode outside swarm.
mkdir -p "$dir"
chmod 0700 "$dir"
umask 022

if [ ! -s "$dir/postgres_password" ]; then
    # Letters and digits only: the password is embedded in a DSN URL without escaping.
    password="$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32)"
    printf '%s\n' "$password" >"$dir/postgres_password"
    echo "created $dir/postgres_password"
fi

if [ ! -s "$dir/ledger_dsn" ]; then
    password="$(cat "$dir/postgres_password")"
    printf 'postgresql://ingest:%s@postgres:5432/ingest\n' "$password" >"$dir/ledger_dsn"
    echo "created $dir/ledger_dsn"
fi
