-- Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d).
-- luigid keeps its task history in a database of its own, apart from the ingest ledger.
CREATE DATABASE luigi;
