"""Thin CLI adapters; the work lives in the library modules they call."""
