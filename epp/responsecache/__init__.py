"""Exact-response cache: repeated deterministic requests answered by the EPP (docs/response-cache.md)."""
