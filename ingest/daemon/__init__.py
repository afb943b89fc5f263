"""The long-running ``ingest run`` process.

Per-stream workers, their supervisor, the health endpoints and the metrics.
"""
