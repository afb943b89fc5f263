"""The embedded local stack for development, tests and benchmarks.

Starting and stopping the servers, sample orders, and the demo producer.
"""
