"""Data: the Zarr store and everything that writes one.

``store``       the store format alone: layout, writer, reader, guarded atomic outputs, the
                split map.
``preprocess``  split assignment, running statistics, standardisation.
``schema``      fixed column layouts (NSL-KDD, HTRU2) and :class:`FeatureLayout`.
``columns``     which source column is label, target, categorical or ignored.
``accumulate``  what every ingest does with parsed rows (bad rows, splits, labels, stats)
                and its report.
``ingest``      CSV/TSV/log files; ``parquet``: Parquet data; ``adopt``: existing arrays;
``sources``     format detection and the one ``ingest`` entry point.
``synth``       synthetic traffic in the NSL-KDD schema.
"""
