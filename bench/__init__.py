"""Reproducible benchmarks behind ``make bench``: real embedded servers, measured figures."""
