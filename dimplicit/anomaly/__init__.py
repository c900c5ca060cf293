"""Anomaly detection: calibration and metrics (:mod:`.metrics`), out-of-core scoring
(:mod:`.score`), evaluation and plots (:mod:`.evaluate`).

Import from the submodules: this package imports nothing itself, so that the chunk loaders
and evaluation tasks on the workers, which need only the NumPy helpers of :mod:`.metrics`,
do not pay for scikit-learn, matplotlib or Dask.
"""
