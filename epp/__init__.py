"""LLM-aware Endpoint Picker (EPP) for Envoy ext_proc."""

__version__ = "0.1.0"
