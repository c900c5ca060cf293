"""Distributed execution on Dask: connecting to clusters (:mod:`.cluster`) and the training
data flow built on top of them (see docs/design.md §4)."""
