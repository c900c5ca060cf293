"""Synthetic network traffic in the NSL-KDD schema, of any size, with planted attacks.

Rows are generated in fixed internal blocks of 8192 rows; block ``b`` draws from its own
generator seeded with ``(seed, b)``, and a short last block is drawn whole and cut, so row
``i`` depends only on ``(seed, i)``: a smaller data set is a prefix of a larger one.  The split
of row ``i`` also depends only on ``(seed, i)`` (:func:`~dimplicit.data.preprocess.assign_splits`).
Output is therefore identical for a given seed whatever ``chunk_rows`` is, and memory stays at
one block plus the writer's one chunk, whatever the number of rows.

Normal traffic has roughly NSL-KDD-like marginals: mostly tcp/http/SF, log-normal byte
counts, rates with two decimals in [0, 1], host counts in 0..255.  Three attack families
have the textbook signatures:

``flooding`` (neptune-like SYN flood)
    tcp, mostly ``private``, flag S0, zero bytes, high ``count``, serror rates near 1.
``scanning`` (portsweep/satan-like)
    REJ/RSTO/RSTR/SH flags, services all over the vocabulary, high ``diff_srv_rate`` and
    rerror rates, almost no bytes.
``login_abuse`` (guess_passwd-like)
    telnet/ftp/login, ``num_failed_logins`` >= 1, not logged in, small byte counts.

The attack rows are ``attack_fraction`` of the total in expectation, split 50/30/20 between
flooding, scanning and login abuse.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from dimplicit.atomic import write_file
from dimplicit.data import schema
from dimplicit.data.preprocess import RunningStats, assign_splits, check_split_fractions
from dimplicit.data.schema import nslkdd_layout
from dimplicit.data.store import (
    DEFAULT_CHUNK_ROWS,
    SPLIT_NAMES,
    OutputExistsError,
    StoreWriter,
)
from dimplicit.progress import row_progress

LABEL_CLASSES = ["normal", "flooding", "scanning", "login_abuse"]
NORMAL_CLASSES = ["normal"]
FAMILY_SHARES = (0.5, 0.3, 0.2)  # flooding, scanning, login_abuse among attack rows
_BLOCK_ROWS = 8192  # fixed: chunk-size independence rests on it, do not derive from chunk_rows

_LAYOUT = nslkdd_layout()
_NUMERIC = [schema.NSLKDD_COLUMNS[i] for i in _LAYOUT.numeric_columns]
_CATEGORICAL = [schema.NSLKDD_COLUMNS[i] for i in _LAYOUT.categorical_columns]
_VOCAB = {c: _LAYOUT.categories[c] for c in _CATEGORICAL}


def _code(column: str, value: str) -> int:
    return _VOCAB[column].index(value)


def _codes(column: str, values) -> np.ndarray:
    return np.array([_code(column, v) for v in values])


_PROTO = {v: _code("protocol_type", v) for v in ("tcp", "udp", "icmp")}
_SERVICES = np.arange(len(_VOCAB["service"]) - 1)  # every known service (not <unknown>)
# Normal services by protocol, with their shares and log-normal (mu, sigma) of src/dst bytes.
_NORMAL_SERVICES = {
    "tcp": (
        ["http", "smtp", "ftp_data", "ftp", "private", "telnet", "other", "pop_3", "ssh"],
        [0.60, 0.10, 0.12, 0.04, 0.04, 0.03, 0.03, 0.02, 0.02],
    ),
    "udp": (["domain_u", "private", "ntp_u", "other"], [0.6, 0.2, 0.1, 0.1]),
    "icmp": (["ecr_i", "eco_i", "urp_i", "tim_i"], [0.6, 0.3, 0.07, 0.03]),
}
_BYTES = {  # service: (src mu, src sigma, dst mu, dst sigma)
    "http": (5.4, 0.5, 7.8, 1.0),
    "smtp": (7.0, 1.0, 5.8, 0.5),
    "ftp_data": (6.0, 2.0, 2.0, 2.5),
    "ftp": (5.0, 1.5, 6.0, 1.0),
    "telnet": (5.5, 1.5, 7.0, 1.5),
    "ssh": (7.5, 1.0, 7.5, 1.0),
    "pop_3": (4.5, 0.5, 7.5, 1.5),
    "domain_u": (3.8, 0.3, 4.6, 0.5),
    "ntp_u": (3.9, 0.1, 3.9, 0.1),
    "ecr_i": (6.2, 0.5, None, None),
    "eco_i": (2.9, 0.3, None, None),
    "urp_i": (4.0, 0.5, None, None),
    "tim_i": (3.4, 0.2, None, None),
}
_DEFAULT_BYTES = (4.5, 1.5, 4.0, 2.0)


def _rate(rng, n, lo=0.0, hi=1.0):
    """Rates as the files print them: two decimals, built as k/100 so that the value equals
    what ``float("0.kk")`` parses back (the CSV round trip is exact)."""
    return rng.integers(round(lo * 100), round(hi * 100) + 1, n) / 100.0


def _mostly(rng, n, value, p, other):
    """``value`` with probability ``p``, else ``other`` (an array of length n)."""
    return np.where(rng.random(n) < p, value, other)


def _generate_block(rng: np.random.Generator, n: int, attack_fraction: float):
    """One block of raw rows: numeric columns (dict of float64), category codes, labels."""
    col = {c: np.zeros(n) for c in _NUMERIC}
    cat = {c: np.zeros(n, dtype=np.intp) for c in _CATEGORICAL}

    # --- normal traffic, for every row (attack rows are overwritten below) ---
    proto_names = np.array(["tcp", "udp", "icmp"])
    proto = rng.choice(3, size=n, p=[0.82, 0.12, 0.06])
    cat["protocol_type"] = _codes("protocol_type", proto_names)[proto]
    src_mu, src_sd, dst_mu, dst_sd = (np.empty(n) for _ in range(4))
    has_dst = np.zeros(n, dtype=bool)
    for k, pname in enumerate(proto_names):
        rows = np.flatnonzero(proto == k)
        names, shares = _NORMAL_SERVICES[pname]
        pick = rng.choice(len(names), size=rows.size, p=shares)
        cat["service"][rows] = _codes("service", names)[pick]
        for j, s in enumerate(names):
            a, b, c, d = _BYTES.get(s, _DEFAULT_BYTES)
            r = rows[pick == j]
            src_mu[r], src_sd[r] = a, b
            if c is not None:
                dst_mu[r], dst_sd[r], has_dst[r] = c, d, True
    tcp = proto == 0
    flags = ["SF", "S0", "REJ", "RSTO", "S1", "RSTR"]
    f = rng.choice(len(flags), size=n, p=[0.95, 0.01, 0.02, 0.01, 0.005, 0.005])
    cat["flag"] = np.where(tcp, _codes("flag", flags)[f], _code("flag", "SF"))
    sf = cat["flag"] == _code("flag", "SF")
    col["duration"] = _mostly(rng, n, 0.0, 0.9, np.rint(rng.lognormal(2.0, 1.5, n)))
    col["src_bytes"] = np.rint(rng.lognormal(src_mu, src_sd))
    dst = np.rint(rng.lognormal(np.where(has_dst, dst_mu, 0.0), np.where(has_dst, dst_sd, 1.0)))
    col["dst_bytes"] = np.where(has_dst & sf, dst, 0.0)  # icmp and failed tcp: no reply bytes
    col["hot"] = _mostly(rng, n, 0.0, 0.95, rng.integers(1, 4, n))
    col["logged_in"] = (tcp & sf).astype(float)
    col["num_file_creations"] = _mostly(rng, n, 0.0, 0.99, rng.integers(1, 3, n))
    col["num_access_files"] = _mostly(rng, n, 0.0, 0.995, 1.0)
    col["is_guest_login"] = _mostly(rng, n, 0.0, 0.995, 1.0)
    col["count"] = np.minimum(np.rint(rng.lognormal(1.5, 1.0, n)) + 1, 511)
    col["srv_count"] = np.minimum(col["count"] + rng.integers(0, 10, n), 511)
    col["serror_rate"] = _mostly(rng, n, 0.0, 0.97, _rate(rng, n, 0.0, 0.5))
    col["srv_serror_rate"] = _mostly(rng, n, 0.0, 0.97, _rate(rng, n, 0.0, 0.5))
    col["rerror_rate"] = _mostly(rng, n, 0.0, 0.95, _rate(rng, n, 0.0, 0.5))
    col["srv_rerror_rate"] = _mostly(rng, n, 0.0, 0.95, _rate(rng, n, 0.0, 0.5))
    col["same_srv_rate"] = _mostly(rng, n, 1.0, 0.85, _rate(rng, n, 0.5, 1.0))
    col["diff_srv_rate"] = _mostly(rng, n, 0.0, 0.85, _rate(rng, n, 0.0, 0.2))
    col["srv_diff_host_rate"] = _mostly(rng, n, 0.0, 0.7, _rate(rng, n, 0.0, 0.5))
    col["dst_host_count"] = _mostly(rng, n, 255.0, 0.4, rng.integers(1, 256, n))
    col["dst_host_srv_count"] = _mostly(rng, n, 255.0, 0.5, rng.integers(1, 256, n))
    col["dst_host_same_srv_rate"] = _mostly(rng, n, 1.0, 0.6, _rate(rng, n, 0.3, 1.0))
    col["dst_host_diff_srv_rate"] = _mostly(rng, n, 0.0, 0.7, _rate(rng, n, 0.0, 0.1))
    col["dst_host_same_src_port_rate"] = _mostly(rng, n, 0.0, 0.5, _rate(rng, n, 0.0, 0.2))
    col["dst_host_srv_diff_host_rate"] = _mostly(rng, n, 0.0, 0.7, _rate(rng, n, 0.0, 0.1))
    col["dst_host_serror_rate"] = _mostly(rng, n, 0.0, 0.95, _rate(rng, n, 0.0, 0.1))
    col["dst_host_srv_serror_rate"] = _mostly(rng, n, 0.0, 0.95, _rate(rng, n, 0.0, 0.1))
    col["dst_host_rerror_rate"] = _mostly(rng, n, 0.0, 0.9, _rate(rng, n, 0.0, 0.2))
    col["dst_host_srv_rerror_rate"] = _mostly(rng, n, 0.0, 0.9, _rate(rng, n, 0.0, 0.2))

    # --- labels and attack families ---
    attack = rng.random(n) < attack_fraction
    family = rng.choice(3, size=n, p=FAMILY_SHARES) + 1
    labels = np.where(attack, family, 0).astype(np.int32)

    def overwrite(rows, values: dict):
        for c, v in values.items():
            (cat if c in cat else col)[c][rows] = v

    r = np.flatnonzero(labels == 1)  # flooding
    m = r.size
    overwrite(
        r,
        {
            "protocol_type": _PROTO["tcp"],
            "service": _mostly(rng, m, _code("service", "private"), 0.6, rng.choice(_SERVICES, m)),
            "flag": _mostly(rng, m, _code("flag", "S0"), 0.95, _code("flag", "REJ")),
            "duration": 0.0, "src_bytes": 0.0, "dst_bytes": 0.0, "hot": 0.0, "logged_in": 0.0,
            "count": rng.integers(100, 512, m), "srv_count": rng.integers(1, 30, m),
            "serror_rate": _mostly(rng, m, 1.0, 0.9, _rate(rng, m, 0.8, 1.0)),
            "srv_serror_rate": _mostly(rng, m, 1.0, 0.9, _rate(rng, m, 0.8, 1.0)),
            "rerror_rate": 0.0, "srv_rerror_rate": 0.0,
            "same_srv_rate": _rate(rng, m, 0.0, 0.1), "diff_srv_rate": _rate(rng, m, 0.04, 0.08),
            "srv_diff_host_rate": 0.0, "dst_host_count": 255.0,
            "dst_host_srv_count": rng.integers(1, 30, m),
            "dst_host_same_srv_rate": _rate(rng, m, 0.0, 0.12),
            "dst_host_diff_srv_rate": _rate(rng, m, 0.04, 0.08),
            "dst_host_same_src_port_rate": 0.0, "dst_host_srv_diff_host_rate": 0.0,
            "dst_host_serror_rate": 1.0, "dst_host_srv_serror_rate": 1.0,
            "dst_host_rerror_rate": 0.0, "dst_host_srv_rerror_rate": 0.0,
        },
    )  # fmt: skip

    r = np.flatnonzero(labels == 2)  # scanning
    m = r.size
    scan_flags = _codes("flag", ["REJ", "RSTO", "RSTR", "SH", "S0"])
    overwrite(
        r,
        {
            "protocol_type": _PROTO["tcp"],
            "service": rng.choice(_SERVICES, m),
            "flag": scan_flags[rng.choice(5, size=m, p=[0.45, 0.25, 0.15, 0.1, 0.05])],
            "duration": 0.0, "src_bytes": _mostly(rng, m, 0.0, 0.8, rng.integers(1, 10, m)),
            "dst_bytes": 0.0, "hot": 0.0, "logged_in": 0.0,
            "count": rng.integers(1, 150, m), "srv_count": rng.integers(1, 5, m),
            "serror_rate": _mostly(rng, m, 0.0, 0.9, _rate(rng, m, 0.0, 0.3)),
            "srv_serror_rate": _mostly(rng, m, 0.0, 0.9, _rate(rng, m, 0.0, 0.3)),
            "rerror_rate": _rate(rng, m, 0.5, 1.0), "srv_rerror_rate": _rate(rng, m, 0.5, 1.0),
            "same_srv_rate": _rate(rng, m, 0.0, 0.2), "diff_srv_rate": _rate(rng, m, 0.5, 1.0),
            "srv_diff_host_rate": _rate(rng, m, 0.0, 1.0),
            "dst_host_count": rng.integers(1, 256, m), "dst_host_srv_count": rng.integers(1, 20, m),
            "dst_host_same_srv_rate": _rate(rng, m, 0.0, 0.1),
            "dst_host_diff_srv_rate": _rate(rng, m, 0.5, 1.0),
            "dst_host_same_src_port_rate": _rate(rng, m, 0.5, 1.0),
            "dst_host_srv_diff_host_rate": 0.0,
            "dst_host_serror_rate": _rate(rng, m, 0.0, 0.1),
            "dst_host_srv_serror_rate": _rate(rng, m, 0.0, 0.1),
            "dst_host_rerror_rate": _rate(rng, m, 0.5, 1.0),
            "dst_host_srv_rerror_rate": _rate(rng, m, 0.5, 1.0),
        },
    )  # fmt: skip

    r = np.flatnonzero(labels == 3)  # login abuse
    m = r.size
    login_services = _codes("service", ["telnet", "ftp", "login"])
    overwrite(
        r,
        {
            "protocol_type": _PROTO["tcp"],
            "service": login_services[rng.choice(3, size=m, p=[0.6, 0.3, 0.1])],
            "flag": _mostly(rng, m, _code("flag", "SF"), 0.7, _code("flag", "RSTO")),
            "duration": rng.integers(0, 6, m), "src_bytes": rng.integers(100, 160, m),
            "dst_bytes": rng.integers(100, 300, m), "hot": rng.integers(0, 2, m),
            "num_failed_logins": rng.integers(1, 6, m), "logged_in": 0.0,
            "count": rng.integers(1, 4, m), "srv_count": rng.integers(1, 4, m),
            "serror_rate": 0.0, "srv_serror_rate": 0.0, "rerror_rate": 0.0,
            "srv_rerror_rate": 0.0, "same_srv_rate": 1.0, "diff_srv_rate": 0.0,
            "srv_diff_host_rate": 0.0,
            "dst_host_count": rng.integers(1, 60, m), "dst_host_srv_count": rng.integers(1, 60, m),
            "dst_host_same_srv_rate": _rate(rng, m, 0.8, 1.0),
            "dst_host_diff_srv_rate": _rate(rng, m, 0.0, 0.05),
            "dst_host_same_src_port_rate": _rate(rng, m, 0.0, 0.1),
            "dst_host_srv_diff_host_rate": 0.0, "dst_host_serror_rate": 0.0,
            "dst_host_srv_serror_rate": 0.0, "dst_host_rerror_rate": _rate(rng, m, 0.0, 0.1),
            "dst_host_srv_rerror_rate": _rate(rng, m, 0.0, 0.1),
        },
    )  # fmt: skip

    numeric = np.stack([col[c] for c in _NUMERIC], axis=1)
    return numeric, [cat[c] for c in _CATEGORICAL], labels


def _check_args(rows, seed, attack_fraction):
    if int(rows) < 1:
        raise ValueError(f"rows must be a positive integer, got {rows}")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not 0.0 <= float(attack_fraction) <= 1.0:
        raise ValueError(f"attack_fraction must be in [0, 1], got {attack_fraction}")


def traffic_blocks(rows: int, seed: int = 0, attack_fraction: float = 0.2):
    """Yield the synthetic rows block by block (8192 rows a block, the last may be shorter).

    Parameters
    ----------
    rows : int
        Total number of rows.
    seed : int
        Block ``b`` uses ``numpy.random.default_rng([seed, b])``.
    attack_fraction : float
        Expected share of attack rows.

    Yields
    ------
    start : int
        Index of the block's first row.
    numeric : float64 array (n, 38)
        NSL-KDD numeric columns, in file order.
    codes : list of 3 int arrays
        ``protocol_type``, ``service``, ``flag`` codes into the ingest vocabularies.
    labels : int32 array (n,)
        Codes into :data:`LABEL_CLASSES`.
    """
    _check_args(rows, seed, attack_fraction)
    for b, start in enumerate(range(0, int(rows), _BLOCK_ROWS)):
        n = min(_BLOCK_ROWS, int(rows) - start)
        rng = np.random.default_rng([int(seed), b])
        # Always draw a whole block and cut it: then row i depends only on (seed, i), and a
        # shorter data set is exactly a prefix of a longer one.
        numeric, codes, labels = _generate_block(rng, _BLOCK_ROWS, float(attack_fraction))
        yield start, numeric[:n], [c[:n] for c in codes], labels[:n]


def _report(out, kind, rows, label_counts, split_counts, t0) -> dict:
    seconds = time.perf_counter() - t0
    out = Path(out)
    size = (
        out.stat().st_size
        if out.is_file()
        else sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    )
    report = {
        "out": str(out),
        "kind": kind,
        "rows": int(rows),
        "labels": {c: int(v) for c, v in zip(LABEL_CLASSES, label_counts, strict=True)},
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1) if seconds > 0 else None,
        "bytes": int(size),
    }
    if split_counts is not None:
        report["splits"] = {k: int(v) for k, v in zip(SPLIT_NAMES, split_counts, strict=True)}
    return report


def synth_traffic(
    rows: int,
    out,
    seed: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    attack_fraction: float = 0.2,
    splits=(0.8, 0.1, 0.1),
    overwrite: bool = False,
    write_csv: bool = False,
    progress: bool = False,
) -> dict:
    """Write ``rows`` synthetic NSL-KDD-schema connection records to a store (or a CSV).

    The store has the layout and ``feature_names`` of an ingested NSL-KDD file, format
    ``"synthetic-traffic"``, label classes :data:`LABEL_CLASSES` and statistics over the
    normal rows of the train split.  Deterministic by ``seed`` and independent of
    ``chunk_rows``; memory is bounded by one block plus one chunk.

    Parameters
    ----------
    rows : int
        Number of rows.
    out : str or Path
        The store (or, with ``write_csv``, the CSV file) to create.
    seed : int
        Seed of the generator and of the split.
    chunk_rows : int
        Rows per Zarr chunk.
    attack_fraction : float
        Expected share of attack rows (split 50/30/20 among flooding, scanning, login abuse).
    splits : sequence of 3 floats
        Train, validation, test fractions.
    overwrite : bool
        Replace an existing output.
    write_csv : bool
        Write an NSL-KDD-format CSV text file instead (see :func:`synth_traffic_csv`).
    progress : bool
        Show rows done, rows/s and ETA on stderr (:func:`~dimplicit.progress.row_progress`).
        Off by default: the library prints nothing else.

    Returns
    -------
    dict
        Report: out, rows, label and split counts, seconds, rows/s, bytes.
    """
    if write_csv:
        return synth_traffic_csv(rows, out, seed, attack_fraction, overwrite, progress=progress)
    t0 = time.perf_counter()
    _check_args(rows, seed, attack_fraction)
    fractions = check_split_fractions(splits)
    stats = RunningStats(_LAYOUT.n_features)
    label_counts = np.zeros(len(LABEL_CLASSES), dtype=np.int64)
    split_counts = np.zeros(3, dtype=np.int64)
    with StoreWriter(out, _LAYOUT.feature_names, chunk_rows, overwrite) as writer:
        with row_progress(int(rows), "synth", enabled=progress) as bar:
            for start, numeric, codes, labels in traffic_blocks(rows, seed, attack_fraction):
                x = _LAYOUT.encode(numeric, codes)
                split = assign_splits(int(seed), start, len(labels), fractions)
                stats.update(x[(split == 0) & (labels == 0)])
                writer.append(x, labels, split)
                label_counts += np.bincount(labels, minlength=len(LABEL_CLASSES))
                split_counts += np.bincount(split, minlength=3)
                bar.update(len(labels))
        writer.close(
            {
                "format": "synthetic-traffic",
                "source": (
                    f"dimplicit.data.synth.synth_traffic(rows={int(rows)}, seed={int(seed)}, "
                    f"attack_fraction={float(attack_fraction)})"
                ),
                "columns": list(schema.NSLKDD_COLUMNS),
                "label_column": schema.NSLKDD_LABEL,
                "ignored_columns": list(schema.NSLKDD_IGNORE),
                "feature_names": _LAYOUT.feature_names,
                "categories": _LAYOUT.categories,
                "label_classes": LABEL_CLASSES,
                "normal_classes": NORMAL_CLASSES,
                "stats": stats.to_attr("train split rows, normal only"),
                "bad_rows": {"count": 0, "rows": [], "policy": "none (generated)"},
                "split_fractions": list(fractions),
                "split_seed": int(seed),
                "attack_fraction": float(attack_fraction),
                "family_shares": dict(zip(LABEL_CLASSES[1:], FAMILY_SHARES, strict=True)),
            }
        )
    return _report(out, "zarr", rows, label_counts, split_counts, t0)


# One printf-style template per row: rates with two decimals like the NSL-KDD files (exact,
# since rates are k/100), counts and bytes as integers.  Much faster than numpy string ops.
_CSV_TEMPLATE = (
    ",".join(
        "%.2f" if c.endswith("_rate") else "%d" if c in _NUMERIC or c == "difficulty" else "%s"
        for c in schema.NSLKDD_COLUMNS
    )
    + "\n"
)


def _format_block(numeric, codes, labels) -> str:
    """CSV text of one block, in NSL-KDD column order (43 fields, LF line endings)."""
    fields = {c: numeric[:, j].tolist() for j, c in enumerate(_NUMERIC)}
    for c, k in zip(_CATEGORICAL, codes, strict=True):
        fields[c] = np.asarray(_VOCAB[c][:-1])[k].tolist()  # generated codes never hit <unknown>
    fields[schema.NSLKDD_LABEL] = np.asarray(LABEL_CLASSES)[labels].tolist()
    # difficulty has no meaning for generated rows; 21 means "every reference classifier
    # got it right", the value most NSL-KDD rows carry.
    fields["difficulty"] = [21] * len(labels)
    rows = zip(*(fields[c] for c in schema.NSLKDD_COLUMNS), strict=True)
    return "".join(map(_CSV_TEMPLATE.__mod__, rows))


def synth_traffic_csv(
    rows: int,
    out,
    seed: int = 0,
    attack_fraction: float = 0.2,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Write the same synthetic rows as :func:`synth_traffic` as an NSL-KDD-format CSV.

    43 comma-separated fields a row, no header, LF line endings, like ``KDDTrain+.txt``;
    ``dimplicit ingest --format nsl-kdd`` reads it back to exactly the features of the
    store :func:`synth_traffic` writes with the same seed (the split too, with
    ``split_seed=seed``).  Written to a temporary sibling and renamed into place.

    Parameters
    ----------
    rows, seed, attack_fraction
        As for :func:`synth_traffic`.
    out : str or Path
        The CSV file to create.
    overwrite : bool
        Replace an existing file (never a directory).
    progress : bool
        As for :func:`synth_traffic`.

    Returns
    -------
    dict
        Report: out, rows, label counts, seconds, rows/s, bytes.
    """
    t0 = time.perf_counter()
    _check_args(rows, seed, attack_fraction)
    out = Path(out)
    if os.path.lexists(out) and (not overwrite or not out.is_file()):
        if out.is_file():
            raise OutputExistsError(out)
        raise FileExistsError(f"{out} exists and is not a file; refusing to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"parent directory of {out} does not exist")
    label_counts = np.zeros(len(LABEL_CLASSES), dtype=np.int64)

    def write(fh):
        with row_progress(int(rows), "synth", enabled=progress) as bar:
            for _, numeric, codes, labels in traffic_blocks(rows, seed, attack_fraction):
                fh.write(_format_block(numeric, codes, labels).encode("ascii"))
                label_counts[:] += np.bincount(labels, minlength=len(LABEL_CLASSES))
                bar.update(len(labels))

    write_file(out, write, replace=overwrite)
    return _report(out, "csv", rows, label_counts, None, t0)
