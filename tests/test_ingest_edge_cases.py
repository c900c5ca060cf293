"""CSV ingest edge cases (issue 11, minor items): a byte-order mark, a byte that is not UTF-8,
a field beyond the csv module's size limit, numbers that only Python's float() reads.

Each bad input is one line on stderr naming the file and the row, exit status 2; under
``--on-bad-rows skip`` the row is counted among the bad rows and the rest is ingested.
"""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from dimplicit.cli import main
from dimplicit.data.ingest import _NUMBER, detect_csv_format, ingest_csv
from dimplicit.data.store import open_store

N = 60
BIG = 10 * 1024 * 1024  # the 10 MB field of the issue


def _rows(n: int = N, seed: int = 0) -> list[str]:
    """HTRU2-like rows: 8 numbers and a 0/1 class."""
    rng = np.random.default_rng(seed)
    return [",".join(f"{v:.4f}" for v in rng.normal(size=8)) + f",{i % 2}" for i in range(n)]


def _features(lines: list[str]) -> np.ndarray:
    return np.array([[float(v) for v in line.split(",")[:8]] for line in lines], np.float32)


def _ingest(capsys, path, out, *options):
    """``dimplicit ingest`` -> (exit status, stdout, stderr)."""
    rc = main(["ingest", str(path), "--out", str(out), *options])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _error_line(capsys, path, out, *options) -> str:
    rc, _, err = _ingest(capsys, path, out, *options)
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err
    assert not out.exists()
    return err


def _skipped(capsys, path, out, *options) -> dict:
    rc, stdout, err = _ingest(capsys, path, out, *options, "--on-bad-rows", "skip")
    assert rc == 0, err
    return json.loads(stdout)


# --------------------------------------------------------------------------------------
# 1. UTF-8 byte-order mark
# --------------------------------------------------------------------------------------


def test_bom_is_stripped_without_header(tmp_path, capsys):
    lines = _rows()
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode())
    # detected as HTRU2: the mark does not spoil the first field
    assert detect_csv_format(path).fmt == "htru2"
    out = tmp_path / "bom.zarr"
    rc, stdout, err = _ingest(capsys, path, out)
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["format"] == "htru2"
    assert report["rows"] == N and report["bad_rows"]["count"] == 0
    np.testing.assert_array_equal(open_store(out).features[:], _features(lines))


def test_bom_before_a_header_row(tmp_path, capsys):
    path = tmp_path / "bom_header.csv"
    text = "a,b,kind,label\n" + "".join(f"{i},{i / 2},{'xy'[i % 2]},{i % 3}\n" for i in range(20))
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    out = tmp_path / "bom_header.zarr"
    rc, _, err = _ingest(capsys, path, out, "--header", "--label", "label",
                         "--categorical", "a,kind")  # fmt: skip
    assert rc == 0, err
    st = open_store(out)
    assert st.attrs["columns"] == ["a", "b", "kind", "label"]
    assert st.categories["a"][:2] == ["0", "1"]
    assert "b" in st.feature_names and "a=0" in st.feature_names


# --------------------------------------------------------------------------------------
# 2. A byte that is not UTF-8
# --------------------------------------------------------------------------------------


def _with_bad_byte(tmp_path, line: int = 49):
    lines = _rows()
    raw = [s.encode() for s in lines]
    raw[line - 1] = raw[line - 1].replace(b",", b",\xff", 1)  # field 2 of that line
    path = tmp_path / "latin.csv"
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path, lines


def test_non_utf8_byte_names_its_line(tmp_path, capsys):
    path, _ = _with_bad_byte(tmp_path)
    err = _error_line(capsys, path, tmp_path / "x.zarr", "--format", "htru2")
    assert "row 49: not valid UTF-8 text (byte 0xff in field 2)" in err
    assert "line 1" not in err


def test_non_utf8_byte_skipped_as_a_bad_row(tmp_path, capsys):
    path, lines = _with_bad_byte(tmp_path)
    out = tmp_path / "skip.zarr"
    report = _skipped(capsys, path, out, "--format", "htru2")
    assert report["bad_rows"]["count"] == 1 and report["bad_rows"]["rows"] == [49]
    assert report["rows"] == N - 1
    np.testing.assert_array_equal(open_store(out).features[:], _features(lines[:48] + lines[49:]))


def test_non_utf8_byte_in_text_columns(tmp_path, capsys):
    """In a label or a categorical value the row is bad too (not a class named by garbage)."""
    rows = [f"{i},{'ab'[i % 2]},{'ok' if i % 3 else 'bad'}".encode() for i in range(30)]
    rows[6] = b"6,\xe9,ok"  # categorical (its vocabulary pass must skip it as well)
    rows[11] = b"11,b,caf\xe9"  # label
    path = tmp_path / "text.csv"
    path.write_bytes(b"x,kind,label\n" + b"\n".join(rows) + b"\n")
    out = tmp_path / "text.zarr"
    options = ("--header", "--label", "label", "--categorical", "kind")
    err = _error_line(capsys, path, out, *options)
    assert "row 8: not valid UTF-8 text (byte 0xe9 in field 2)" in err
    assert "row 13: not valid UTF-8 text (byte 0xe9 in field 3)" in err
    report = _skipped(capsys, path, out, *options)
    assert report["bad_rows"]["rows"] == [8, 13] and report["rows"] == 28
    st = open_store(out)
    assert st.attrs["label_classes"] == ["bad", "ok"]
    assert st.categories["kind"] == ["a", "b", "<unknown>"]


def test_non_utf8_byte_in_the_header(tmp_path, capsys):
    path = tmp_path / "header.csv"
    path.write_bytes(b"x,k\xe9y\n1,2\n")
    err = _error_line(capsys, path, tmp_path / "h.zarr", "--header", "--format", "generic")
    assert "header (row 1)" in err and "byte 0xe9" in err


# --------------------------------------------------------------------------------------
# 3. A field beyond the csv module's size limit
# --------------------------------------------------------------------------------------


def _with_big_field(tmp_path, line: int = 10):
    lines = _rows()
    big = list(lines)
    big[line - 1] = "1" * BIG + "," + lines[line - 1].split(",", 1)[1]
    path = tmp_path / "big.csv"
    path.write_text("\n".join(big) + "\n")
    return path, lines


def test_big_field_reported_at_its_own_line(tmp_path, capsys):
    path, _ = _with_big_field(tmp_path)
    err = _error_line(capsys, path, tmp_path / "x.zarr", "--format", "htru2")
    assert "row 10: a field longer than" in err
    assert "row 11" not in err


def test_big_field_skipped_as_a_bad_row(tmp_path, capsys):
    path, lines = _with_big_field(tmp_path)
    out = tmp_path / "skip.zarr"
    report = _skipped(capsys, path, out, "--format", "htru2")
    assert report["bad_rows"]["count"] == 1 and report["bad_rows"]["rows"] == [10]
    assert report["rows"] == N - 1
    # reading resumed at the next line: every other row is intact, splits unmoved
    np.testing.assert_array_equal(open_store(out).features[:], _features(lines[:9] + lines[10:]))
    whole = tmp_path / "whole.csv"
    whole.write_text("\n".join(lines) + "\n")
    ingest_csv(whole, tmp_path / "whole.zarr", fmt="htru2")
    split = open_store(tmp_path / "whole.zarr").split[:]
    np.testing.assert_array_equal(open_store(out).split[:], np.delete(split, 9))


def test_big_field_in_the_header(tmp_path, capsys):
    path = tmp_path / "header.csv"
    path.write_text("x," + "y" * BIG + "\n1,2\n3,4\n")
    err = _error_line(capsys, path, tmp_path / "h.zarr", "--header", "--format", "generic")
    assert "header (row 1)" in err and "a field longer than" in err


# --------------------------------------------------------------------------------------
# 4. Numbers: ASCII decimal notation only
# --------------------------------------------------------------------------------------

NOT_ASCII_DECIMAL = ["1_000", "\u0661\u0662\u0663", "\uff11\uff12", "\u00a01.5", "1.5\u2003"]


def test_numbers_in_other_notations_are_bad_rows(tmp_path, capsys):
    lines = _rows()
    bad_lines = [3, 5, 7, 9, 11]
    for line, value in zip(bad_lines, NOT_ASCII_DECIMAL, strict=True):
        lines[line - 1] = value + "," + lines[line - 1].split(",", 1)[1]
    nan_line = 13
    lines[nan_line - 1] = "NaN," + lines[nan_line - 1].split(",", 1)[1]
    path = tmp_path / "digits.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "digits.zarr"
    err = _error_line(capsys, path, out, "--format", "htru2")
    for line, value in zip(bad_lines, NOT_ASCII_DECIMAL, strict=True):
        assert f"row {line}: unparsable number {value!r} in column profile_mean" in err
    assert f"row {nan_line}: non-finite value 'NaN' in column profile_mean" in err  # as before
    report = _skipped(capsys, path, out, "--format", "htru2")
    assert report["bad_rows"]["rows"] == [*bad_lines, nan_line]
    assert report["rows"] == N - len(bad_lines) - 1


def test_numbers_in_other_notations_as_targets(tmp_path, capsys):
    path = tmp_path / "targets.csv"
    path.write_text("x,y\n1,2\n2,1_5\n3,\u0664\n4,-0.5e+1\n 5 ,.25\n", encoding="utf-8")
    out = tmp_path / "targets.zarr"
    err = _error_line(capsys, path, out, "--header", "--target", "y")
    assert "row 3: unparsable number '1_5' in column y" in err
    assert "row 4: unparsable number '\u0664' in column y" in err
    report = _skipped(capsys, path, out, "--header", "--target", "y")
    assert report["bad_rows"]["rows"] == [3, 4]
    st = open_store(out)
    np.testing.assert_array_equal(st.features[:, 0], [1, 4, 5])
    np.testing.assert_array_equal(st.targets[:, 0], [2, -5, 0.25])


def test_number_pattern_agrees_with_float_on_ascii():
    """The batch check relies on it: for ASCII text without "_", float() succeeds exactly
    when the pattern matches."""

    def agrees(text):
        try:
            float(text)
        except ValueError:
            return _NUMBER.fullmatch(text) is None
        return _NUMBER.fullmatch(text) is not None

    tokens = "0.e+-n i"
    for n in range(1, 5):
        for t in itertools.product(tokens, repeat=n):
            assert agrees("".join(t)), "".join(t)
    rnd = random.Random(0)
    alphabet = "0123456789+-.eEnaifNIty \t\x0b\x0c\r\n\x1cx"
    for _ in range(20000):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 9)))
        assert agrees(text), repr(text)
    for text in ("nan", "-Infinity", "+inf", "1e5", "1.e5", ".5E-3", "5.", " 7 "):
        assert _NUMBER.fullmatch(text), text


@pytest.mark.parametrize("value", NOT_ASCII_DECIMAL)
def test_float_alone_would_accept(value):
    """What the check adds: these are numbers to float(), not to the ingest."""
    float(value)
    assert _NUMBER.fullmatch(value) is None
