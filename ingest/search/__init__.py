"""The search cluster: everything that talks to Elasticsearch or OpenSearch.

The client for both cluster kinds, the bulk sink, live indices and mappings.
"""
