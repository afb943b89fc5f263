"""Operations over the ledger and the cluster: ingest status data and dead-letter replay."""
