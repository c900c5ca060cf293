"""dimplicit: implicit neural networks trained on Dask over Zarr."""

__version__ = "0.1.0"
