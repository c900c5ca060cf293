"""Synthetic NSL-KDD-schema traffic: determinism, streaming, signatures, CSV round trip."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from dimplicit.cli import main
from dimplicit.data.ingest import ingest_csv
from dimplicit.data.store import open_store
from dimplicit.data.synth import LABEL_CLASSES, synth_traffic, synth_traffic_csv

ROWS = 30000


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "traffic.zarr"
    report = synth_traffic(ROWS, out, seed=7, chunk_rows=5000, attack_fraction=0.3)
    return open_store(out), report


def _arrays(store):
    return store.features[:], store.labels[:], store.split[:]


def test_deterministic_by_seed_and_chunk_independent(traffic, tmp_path):
    a = traffic[0]
    same = open_store(synth_traffic(ROWS, tmp_path / "b.zarr", seed=7, chunk_rows=7777,
                                    attack_fraction=0.3)["out"])  # fmt: skip
    assert same.chunk_rows == 7777
    for x, y in zip(_arrays(a), _arrays(same), strict=True):
        np.testing.assert_array_equal(x, y)
    other = open_store(synth_traffic(ROWS, tmp_path / "c.zarr", seed=8, attack_fraction=0.3)["out"])
    assert not np.array_equal(a.features[:], other.features[:])
    assert not np.array_equal(a.labels[:], other.labels[:])
    # a shorter run is a prefix of a longer one
    short = open_store(
        synth_traffic(10000, tmp_path / "d.zarr", seed=7, attack_fraction=0.3)["out"]
    )
    np.testing.assert_array_equal(short.features[:], a.features[:10000])


def test_layout_and_attrs(traffic, slice_data, tmp_path):
    st, report = traffic
    assert st.n_rows == report["rows"] == ROWS
    assert st.attrs["format"] == "synthetic-traffic"
    assert (
        st.attrs["label_classes"]
        == LABEL_CLASSES
        == [
            "normal",
            "flooding",
            "scanning",
            "login_abuse",
        ]
    )
    assert st.attrs["normal_classes"] == ["normal"]
    # identical feature layout to an ingested NSL-KDD file
    kdd = tmp_path / "kdd.txt"
    with open(slice_data / "nsl-kdd" / "KDDTrain+_slice.txt", newline="") as f:
        kdd.write_text("".join(next(f) for _ in range(200)), newline="")
    ingested = open_store(ingest_csv(kdd, tmp_path / "kdd.zarr")["store"])
    assert st.feature_names == ingested.feature_names
    assert st.categories == ingested.categories
    assert st.attrs["columns"] == ingested.attrs["columns"]
    # one-hot blocks are valid, rates lie in [0, 1] with two decimals, counts in 0..511
    x = st.features[:]
    names = st.feature_names
    for c in ("protocol_type", "service", "flag"):
        block = [i for i, n in enumerate(names) if n.startswith(c + "=")]
        np.testing.assert_array_equal(x[:, block].sum(axis=1), 1.0)
        assert (x[:, names.index(f"{c}=<unknown>")] == 0).all()
    rates = [i for i, n in enumerate(names) if n.endswith("_rate")]
    r = x[:, rates].astype(np.float64)
    assert r.min() >= 0 and r.max() <= 1
    np.testing.assert_allclose(r * 100, np.rint(r * 100), atol=1e-4)
    for c in ("count", "srv_count"):
        assert x[:, names.index(c)].min() >= 0 and x[:, names.index(c)].max() <= 511
    for c in ("dst_host_count", "dst_host_srv_count"):
        assert x[:, names.index(c)].max() <= 255


def test_label_fractions_and_stats(traffic):
    st, report = traffic
    y = st.labels[:]
    counts = np.bincount(y, minlength=4)
    assert report["labels"] == dict(zip(LABEL_CLASSES, counts.tolist(), strict=True))
    attack = 1 - counts[0] / ROWS
    assert abs(attack - 0.3) < 0.015
    np.testing.assert_allclose(counts[1:] / counts[1:].sum(), [0.5, 0.3, 0.2], atol=0.03)
    # statistics: normal rows of the train split, as numpy computes them
    x = st.features[:].astype(np.float64)
    sel = (st.split[:] == 0) & st.is_normal(y)
    stats = st.attrs["stats"]
    assert stats["count"] == sel.sum()
    np.testing.assert_allclose(stats["mean"], x[sel].mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats["std"], x[sel].std(0), rtol=1e-9, atol=1e-12)


def test_attack_signatures(traffic):
    st = traffic[0]
    x, y = st.features[:], st.labels[:]
    names = st.feature_names

    def col(name, label):
        return x[y == LABEL_CLASSES.index(label), names.index(name)]

    # flooding: S0 half-open connections, no payload, many connections, serror rates ~1
    assert col("flag=S0", "flooding").mean() > 0.9 > col("flag=S0", "normal").mean() + 0.8
    assert (col("src_bytes", "flooding") == 0).all() and (col("dst_bytes", "flooding") == 0).all()
    assert col("count", "flooding").mean() > 100 > col("count", "normal").mean() + 50
    assert col("serror_rate", "flooding").mean() > 0.9 > 0.1 > col("serror_rate", "normal").mean()
    assert col("service=private", "flooding").mean() > 0.5
    # scanning: rejected/reset connections to many different services
    rej = sum(col(f"flag={f}", "scanning") for f in ("REJ", "RSTO", "RSTR", "SH"))
    assert rej.mean() > 0.9
    assert col("diff_srv_rate", "scanning").mean() > 0.5 > col("diff_srv_rate", "normal").mean()
    assert col("rerror_rate", "scanning").mean() > 0.5 > col("rerror_rate", "normal").mean()
    services = [n for n in names if n.startswith("service=")]
    used = {s for s in services if col(s, "scanning").any()}
    assert len(used) > 50
    # login abuse: failed logins on telnet/ftp/login, never logged in, small transfers
    assert (col("num_failed_logins", "login_abuse") >= 1).all()
    assert (col("num_failed_logins", "normal") == 0).all()
    login = sum(col(f"service={s}", "login_abuse") for s in ("telnet", "ftp", "login"))
    assert (login == 1).all()
    assert (col("logged_in", "login_abuse") == 0).all()
    assert col("src_bytes", "login_abuse").max() < 200
    # normal: mostly tcp / http / SF
    assert col("protocol_type=tcp", "normal").mean() > 0.7
    assert col("service=http", "normal").mean() > 0.4
    assert col("flag=SF", "normal").mean() > 0.9


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bounded_memory(tmp_path):
    rows, chunk = 200_000, 10_000
    full = rows * 125 * 4  # bytes to hold every feature row at once (100 MB)
    peak = _peak_bytes(lambda: synth_traffic(rows, tmp_path / "big.zarr", chunk_rows=chunk))
    small = _peak_bytes(lambda: synth_traffic(rows // 5, tmp_path / "s.zarr", chunk_rows=chunk))
    # about one block + one chunk + temporaries (~20 MB), whatever the number of rows
    assert peak < full / 3, (peak, full)
    assert peak < 1.25 * small, (peak, small)
    assert open_store(tmp_path / "big.zarr").n_rows == rows


def test_csv_round_trip(traffic, tmp_path):
    st = traffic[0]
    csv_path = tmp_path / "traffic.txt"
    report = synth_traffic_csv(ROWS, csv_path, seed=7, attack_fraction=0.3)
    assert report["rows"] == ROWS and report["bytes"] == csv_path.stat().st_size
    first = csv_path.read_text().split("\n", 1)[0].split(",")
    assert len(first) == 43 and first[-2] in LABEL_CLASSES
    back = open_store(ingest_csv(csv_path, tmp_path / "back.zarr", split_seed=7)["store"])
    np.testing.assert_array_equal(back.features[:], st.features[:])
    np.testing.assert_array_equal(back.split[:], st.split[:])
    decoded = np.asarray(back.attrs["label_classes"])[back.labels[:]]
    np.testing.assert_array_equal(decoded, np.asarray(LABEL_CLASSES)[st.labels[:]])
    # with the synthetic store as reference, label codes agree too
    ref = open_store(ingest_csv(csv_path, tmp_path / "ref.zarr", reference=st.path)["store"])
    np.testing.assert_array_equal(ref.labels[:], st.labels[:])


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    assert main(["synth", "traffic", "--rows", "5000", "--out", str(out), "--seed", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 5000 and report["bytes"] > 0 and report["rows_per_s"] > 0
    assert open_store(out).n_rows == 5000
    assert main(["synth", "traffic", "--rows", "5000", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    csv_out = tmp_path / "cli.txt"
    assert main(["synth", "traffic", "--rows", "100", "--out", str(csv_out), "--csv"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "csv"
    assert len(csv_out.read_text().splitlines()) == 100


def test_cli_synth_progress_on_stderr_unless_quiet(tmp_path, monkeypatch, capsys):
    from dimplicit import progress

    # As on a terminal: progress_enabled says stderr is one.
    monkeypatch.setattr(progress, "progress_enabled", lambda quiet=False: not quiet)
    for kind, extra in (("zarr", []), ("csv", ["--csv"])):
        args = ["synth", "traffic", "--rows", "20000", "--out", str(tmp_path / kind), *extra]
        assert main([*args, "--split", "0.5,0.5,0"]) == 0  # the old spelling, hidden
        captured = capsys.readouterr()
        assert json.loads(captured.out)["rows"] == 20000
        assert "synth" in captured.err and "20.0k/20.0k" in captured.err, captured.err
        assert "rows/s" in captured.err
        if kind == "zarr":
            assert open_store(tmp_path / kind).attrs["split_fractions"] == [0.5, 0.5, 0.0]
        assert main([*args, "--overwrite", "--quiet"]) == 0
        assert capsys.readouterr().err == ""
    monkeypatch.undo()  # stderr is not a terminal under pytest: no bar without --quiet either
    assert main(["synth", "traffic", "--rows", "100", "--out", str(tmp_path / "z")]) == 0
    assert capsys.readouterr().err == ""
