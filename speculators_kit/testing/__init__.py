"""Helpers for tests and examples: tiny random targets saved as HF folders."""
