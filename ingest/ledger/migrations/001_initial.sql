-- 001: the ledger's first tables.
--
-- Runs with search_path set to the ledger schema only, so names here are unqualified and the
-- schema name stays configurable. Applied once, inside the migration advisory lock, in the
-- same transaction that records it in schema_migrations.

-- Where each consumer group stands on each partition. next_offset is the NEXT offset to read
-- (NULL: claimed, never committed). generation fences a stale owner: every claim bumps it and
-- every commit must present the generation it claimed.
CREATE TABLE partition_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL CHECK (partition >= 0),
    next_offset    bigint      CHECK (next_offset >= 0),
    generation     bigint      NOT NULL DEFAULT 1 CHECK (generation >= 1),
    owner          text        NOT NULL DEFAULT '',
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- One row per process run (daemon, backfill, reindex). params never hold secrets.
CREATE TABLE runs (
    id           bigserial   PRIMARY KEY,
    kind         text        NOT NULL CHECK (kind ~ '^[a-z][a-z_-]*$'),
    stream       text,
    params       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status       text        NOT NULL DEFAULT 'running'
                             CHECK (status IN ('running', 'succeeded', 'failed', 'stopped')),
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    counters     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error        text
);
CREATE INDEX runs_kind_id ON runs (kind, id DESC);
CREATE INDEX runs_running ON runs (heartbeat_at) WHERE status = 'running';

-- Records that could not be ingested, raw bytes kept for replay. A record dead-lettered again
-- (crash replay, re-run backfill, failed replay) lands on the same row.
CREATE TABLE dead_letters (
    id            bigserial   PRIMARY KEY,
    stream        text        NOT NULL,
    source        text        NOT NULL,
    topic         text        NOT NULL,
    partition     integer     NOT NULL,
    "offset"      bigint      NOT NULL,
    key           bytea,
    value         bytea,
    headers       jsonb       NOT NULL DEFAULT '[]'::jsonb,
    timestamp_ms  bigint      NOT NULL DEFAULT 0,
    stage         text        NOT NULL,
    reason        text        NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    attempts      integer     NOT NULL DEFAULT 1,
    replayed_at   timestamptz,
    CONSTRAINT dead_letters_record UNIQUE (stream, source, topic, partition, "offset")
);
CREATE INDEX dead_letters_stage ON dead_letters (stream, stage) WHERE replayed_at IS NULL;
CREATE INDEX dead_letters_last_seen ON dead_letters (last_seen_at);

-- Physical indices behind each alias. handoff maps partition -> the first offset written to
-- this version by the streaming daemon (the reindex copies everything below it).
CREATE TABLE index_versions (
    alias              text        NOT NULL,
    version            integer     NOT NULL CHECK (version >= 1),
    index_name         text        NOT NULL UNIQUE,
    schema_fingerprint text        NOT NULL,
    state              text        NOT NULL
                                   CHECK (state IN ('building', 'live', 'retired', 'failed', 'deleted')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    handoff            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    details            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (alias, version)
);
-- At most one live version per alias.
CREATE UNIQUE INDEX index_versions_one_live ON index_versions (alias) WHERE state = 'live';

-- Luigi backfill chunks: a task is complete when its row is 'done'.
CREATE TABLE backfill_chunks (
    task_id     text        PRIMARY KEY,
    family      text        NOT NULL,
    stream      text        NOT NULL,
    params      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status      text        NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts    integer     NOT NULL DEFAULT 0,
    counts      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    started_at  timestamptz,
    finished_at timestamptz,
    error       text,
    locked_by   text
);
CREATE INDEX backfill_chunks_stream ON backfill_chunks (stream, family);
