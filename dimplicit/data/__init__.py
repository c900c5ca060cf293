"""Data: CSV -> Zarr ingest, schemas, synthetic traffic."""
