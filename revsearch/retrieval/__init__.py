"""Retrieval options stored with an index and applied at query time: alpha-QE, alpha-DBA, copy-mode fusion."""
