-- How long each backfill chunk ran and how much it read, so a run can point at the chunks
-- that were abnormally slow per record (a slow search node, a hot partition, a bad
-- dependency). Written when the chunk finishes, done or failed: duration_s is the copy's
-- wall time in the worker, records the source records it read (window-skipped ones too: they
-- were read), read_bytes their raw key + value bytes, run_id the backfill run that ran it.
-- The run then judges the chunks it copied (done) against their median time per record:
-- skew_ratio is a chunk's time per record over that median (NULL when not judged: too few
-- records, or failed — a failed chunk's time is mostly its retry budget), skewed whether it
-- was above the run's factor. A re-run of the chunk clears all of them.
ALTER TABLE backfill_chunks
    ADD COLUMN duration_s  double precision,
    ADD COLUMN records     bigint,
    ADD COLUMN read_bytes  bigint,
    ADD COLUMN run_id      bigint,
    ADD COLUMN skew_ratio  double precision,
    ADD COLUMN skewed      boolean NOT NULL DEFAULT false;

CREATE INDEX backfill_chunks_run ON backfill_chunks (run_id);
