#!/usr/bin/env bash
# `make run`: start the embedded stack, feed it sample orders (with some corrupt payloads and
# newer duplicates), and run the streaming daemon in the foreground until Ctrl-C.
set -euo pipefail
COUNT="${1:-20000}"
STATE=.ingest-dev
ingest dev down --state-dir "$STATE" >/dev/null 2>&1 || true
eval "$(ingest dev up --state-dir "$STATE")"
trap 'kill "${PRODUCER:-0}" 2>/dev/null || true; ingest dev down --state-dir "$STATE" >/dev/null' EXIT
echo "stack up: kafka=$INGEST_KAFKA_BOOTSTRAP_SERVERS search=$INGEST_SEARCH_URL"
python - <<'PY'
import os
from confluent_kafka.admin import AdminClient, NewTopic
admin = AdminClient({"bootstrap.servers": os.environ["INGEST_KAFKA_BOOTSTRAP_SERVERS"]})
for f in admin.create_topics([NewTopic("orders", 4, 1)]).values():
    try:
        f.result(15)
    except Exception as exc:  # already exists is fine
        print("topic:", exc)
PY
ingest produce --stream orders --count "$COUNT" --rate 2000 --seed 1 \
    --invalid-ratio 0.01 --duplicate-ratio 0.1 &
PRODUCER=$!
echo "producing $COUNT sample orders in the background; daemon starting (Ctrl-C to stop)"
echo "metrics: http://127.0.0.1:9108/metrics   status: ingest status"
ingest run --stream orders --metrics-port 9108
