"""Experiments built on dimplicit: reproductions of published results (data, protocol, report)."""
