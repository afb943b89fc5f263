#!/usr/bin/env bash
# `make run`: start the embedded stack (which also creates the topics configured in
# ingest.toml), feed it sample orders (some corrupt payloads, some newer duplicates) and run
# the streaming daemon in the foreground until Ctrl-C. Only the `ingest` CLI, as a user types it.
set -euo pipefail
COUNT="${1:-20000}"
STATE=.ingest-dev
METRICS_PORT="${METRICS_PORT:-9108}"
ingest dev down --state-dir "$STATE" >/dev/null 2>&1 || true
EXPORTS="$(ingest dev up --state-dir "$STATE")"
eval "$EXPORTS"
trap 'kill "${PRODUCER:-0}" 2>/dev/null || true; ingest dev down --state-dir "$STATE" >/dev/null' EXIT

cat <<EOF

Embedded stack up. Where to look, from another terminal in this directory:
$(sed 's/^/  /' <<<"$EXPORTS")
  ingest status                                  # offsets, lag, daemons, dead letters
  curl -s $INGEST_SEARCH_URL/orders/_count
  curl -s http://127.0.0.1:$METRICS_PORT/metrics        # also /healthz and /readyz
  search: $INGEST_SEARCH_URL

Producing $COUNT sample orders in the background; the daemon runs below (Ctrl-C stops it).

EOF
ingest produce --stream orders --count "$COUNT" --rate 2000 --seed 1 \
    --invalid-ratio 0.01 --duplicate-ratio 0.1 >/dev/null &
PRODUCER=$!
ingest run --stream orders --metrics-port "$METRICS_PORT"
