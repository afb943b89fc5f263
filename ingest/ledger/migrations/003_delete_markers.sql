-- Deletes outlive the search server's memory of them. With external versions an index only
-- refuses an older write of a deleted document while it keeps the delete's tombstone
-- (index.gc_deletes, 60 s by default); after that a backfill, a replay or a long-retried
-- bulk request would re-create the document. Each applied delete is recorded here, in the
-- flush's own transaction, and every write path drops a write whose version is not newer
-- than the marker. One row per (alias, doc_id): the newest delete version wins.
CREATE TABLE delete_markers (
    alias      text        NOT NULL,
    doc_id     text        NOT NULL,
    version    bigint      NOT NULL,
    stream     text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (alias, doc_id)
);

-- Purging by age (delete_marker_retention_s) scans by applied_at.
CREATE INDEX delete_markers_applied_at ON delete_markers (applied_at);
