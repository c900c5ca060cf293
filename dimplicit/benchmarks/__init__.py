"""Benchmarks behind ``dimplicit bench``; each returns one JSON-ready dict.

- :mod:`.core`: one training step against the machine's measured GEMM peak;
- :mod:`.distributed`: 1 and 2 Dask workers against the in-process executor;
- :mod:`.scoring`: out-of-core scoring throughput and peak memory;
- :mod:`.measure`: FLOP counts, the GEMM peak and peak RSS, shared by all three.
"""
