-- 004: ingestion latency per flush, for `ingest status` (a separate process from the daemon).
--
-- One row per flush and clock source (the Kafka timestamp, or the stream's event_time_field),
-- written in the flush's own ledger transaction, so a row exists exactly when the flush was
-- recorded. bucket_counts are histogram counts (not cumulative) over the bounds in
-- ingest/latency.py BUCKETS_S, plus one last entry for anything above the last bound: rows add
-- up bucket by bucket, so p50/p99 over any window are estimated exactly as Prometheus'
-- histogram_quantile does. Daemons prune rows past a retention window, keeping each series'
-- newest row so the age of the newest indexed record stays known while a stream is idle.
CREATE TABLE flush_latency (
    id               bigserial        PRIMARY KEY,
    stream           text             NOT NULL,
    path             text             NOT NULL CHECK (path IN ('live', 'backfill', 'replay')),
    source           text             NOT NULL CHECK (source IN ('kafka_timestamp', 'event_time')),
    run_id           bigint,
    acked_at         timestamptz      NOT NULL,
    records          integer          NOT NULL CHECK (records > 0),
    sum_s            double precision NOT NULL,
    bucket_counts    integer[]        NOT NULL,
    newest_record_at timestamptz      NOT NULL
);
CREATE INDEX flush_latency_recent ON flush_latency (stream, path, source, acked_at DESC);
