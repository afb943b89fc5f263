"""Kafka -> Avro -> Elasticsearch/OpenSearch streaming ingester with a PostgreSQL ledger."""
