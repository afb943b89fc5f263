"""Luigi backfills and reindexing over the ingest pipeline."""
