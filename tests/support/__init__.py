"""Helpers shared by the integration and fault tests: processes, fault proxies, the stack."""
