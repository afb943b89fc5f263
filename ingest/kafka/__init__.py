"""Kafka: everything that talks to the broker.

Client configuration, the daemon's consumer, bounded range reads for backfills, the producer
library for upstream teams, and the dead-letter topic.
"""
