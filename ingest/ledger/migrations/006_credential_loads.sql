-- 005: every load of a credential that put a new value in force, for audit.
--
-- One row per load: which credential (its settings name, e.g. search.password, ledger.dsn,
-- kafka.sasl.password), the file it came from and that file's modification time, a short
-- non-reversible fingerprint of the value (12 hex digits of a keyed HMAC-SHA256; never the
-- value), why it was loaded (start, changed, refused) and which process loaded it. A row is
-- written when the ledger is reachable, so loaded_at (when the process read the file) can be
-- earlier than recorded_at (a rotated ledger DSN is recorded once connected with it).
CREATE TABLE credential_loads (
    id          bigserial   PRIMARY KEY,
    loaded_at   timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    name        text        NOT NULL,
    source      text        NOT NULL,
    file_mtime  timestamptz NOT NULL,
    fingerprint text        NOT NULL CHECK (fingerprint ~ '^[0-9a-f]{12}$'),
    reason      text        NOT NULL CHECK (reason IN ('start', 'changed', 'refused'))
);

CREATE INDEX credential_loads_name_loaded_at ON credential_loads (name, loaded_at);
