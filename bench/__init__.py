"""Alignment-algorithm benchmark harness: contracts, shared machinery, run records and CLI."""

__version__ = "0.1.0"
