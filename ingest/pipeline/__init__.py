"""One record's way from Kafka bytes to a bulk action.

Processing, transform hooks, batching, and the wiring that builds the parts for a stream.
"""
