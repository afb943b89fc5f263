"""Avro: schemas, decoding and validation.

The schema catalog and registry, the codec (Confluent framing), the reader, checks, and the
native fast path (_transcode.c).
"""
