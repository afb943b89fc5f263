-- Run counters are added once per flush even when a commit is re-sent: a commit whose reply
-- was lost (PostgreSQL restarted, the network dropped) may have landed, and the retry must
-- not count that flush again. Each batch writer numbers its flushes; the run row keeps the
-- last number applied per writer ({"<writer id>": <flush number>}), and counters are only
-- added for a higher number.
ALTER TABLE runs ADD COLUMN flush_marks jsonb NOT NULL DEFAULT '{}'::jsonb;
