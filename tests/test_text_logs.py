"""Text inputs beyond plain CSV: separators, comments, Zeek logs, and format detection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dimplicit.cli import main
from dimplicit.data.ingest import detect_csv_format, ingest_csv, separator
from dimplicit.data.sources import detect_format, ingest
from dimplicit.data.store import open_store

ZEEK = "\n".join([
    "#separator \\x09",
    "#set_separator\t,",
    "#empty_field\t(empty)",
    "#unset_field\t-",
    "#path\tconn",
    "#fields\tts\tuid\tproto\tduration\torig_bytes\tlabel",
    "#types\ttime\tstring\tenum\tinterval\tcount\tstring",
    "1.5\tC1\ttcp\t0.5\t100\tbenign",
    "2.5\tC2\tudp\t-\t20\tbenign",
    "3.5\tC3\ttcp\t1.25\t300\tmalicious",
    "4.5\tC\"4\ttcp\t2\t7\tbenign",
    "#close\t2024-01-01-00-00-00",
]) + "\n"  # fmt: skip


def test_separator_names():
    assert separator("tab") == separator("\\t") == separator("\t") == "\t"
    assert separator(";") == ";" and separator("comma") == ","
    for bad in ("", "ab", "\n"):
        with pytest.raises(ValueError, match="one character"):
            separator(bad)


def test_zeek_log_detected_and_ingested(tmp_path):
    src = tmp_path / "conn.log"
    src.write_text(ZEEK)
    found = detect_csv_format(src)
    assert (found.fmt, found.sep, found.comment) == ("generic", "\t", "#")
    rep = ingest_csv(src, tmp_path / "z.zarr", label="label", categorical="proto", ignore="uid",
                     normal="benign", on_bad_rows="skip", splits=(1, 0, 0))  # fmt: skip
    st = open_store(tmp_path / "z.zarr")
    # the #fields line names the columns; comment lines are not rows, nor blank lines
    assert st.attrs["columns"] == ["ts", "uid", "proto", "duration", "orig_bytes", "label"]
    assert st.feature_names == ["ts", "proto=tcp", "proto=udp", "proto=<unknown>",
                                "duration", "orig_bytes"]  # fmt: skip
    assert rep["comment_lines"] == 8 and rep["blank_lines"] == 0
    # row numbers are line numbers: the unset '-' on line 9 is a bad row
    assert rep["bad_rows"]["rows"] == [9]
    assert rep["bad_rows"]["examples"][0]["reason"] == "unparsable number '-' in column duration"
    np.testing.assert_array_equal(st.features[:, 0], [1.5, 3.5, 4.5])  # a quote is data in TSV
    assert st.label_classes == ["benign", "malicious"]
    assert rep["format_detected"] == "Zeek log (#separator line)"
    assert st.attrs["separator"] == "\t" and st.attrs["comment"] == "#"


def test_sep_and_comment_options(tmp_path):
    src = tmp_path / "flows.txt"
    src.write_text("# exported by nfdump\nsrc_port;bytes;packets\n# a note\n80;100;2\n\n"
                   "443;2000;10\n53;60;1\n")  # fmt: skip
    rep = ingest_csv(src, tmp_path / "f.zarr", fmt="generic", header=True, sep=";",
                     comment="#", splits=(1, 0, 0))  # fmt: skip
    st = open_store(tmp_path / "f.zarr")
    assert st.feature_names == ["src_port", "bytes", "packets"]
    np.testing.assert_array_equal(st.features[:], [[80, 100, 2], [443, 2000, 10], [53, 60, 1]])
    assert rep["comment_lines"] == 1 and rep["blank_lines"] == 1  # the note after the header

    tsv = tmp_path / "flows.tsv"
    tsv.write_text("a\tb\n1\t2\n3\t4\n")
    rep = ingest(tsv, tmp_path / "t.zarr", header=True)
    assert rep["format"] == "generic" and ".tsv file: tab-separated" in rep["format_detected"]
    np.testing.assert_array_equal(open_store(tmp_path / "t.zarr").features[:], [[1, 2], [3, 4]])


def test_detection(slice_data, tmp_path):
    kdd = slice_data / "nsl-kdd" / "KDDTrain+_slice.txt"
    htru = slice_data / "htru2" / "HTRU_2_slice.csv"
    assert detect_format(kdd).fmt == "nsl-kdd"
    assert detect_format(htru).fmt == "htru2"
    gen = tmp_path / "g.csv"
    gen.write_text("1,2,3\n4,5,6\n")
    assert detect_format(gen).fmt == "generic"
    hdr = tmp_path / "h.csv"
    hdr.write_text(",".join(f"c{i}" for i in range(9)) + "\n" + "1,2,3,4,5,6,7,8,1\n")
    assert detect_format(hdr).fmt == "generic"
    assert detect_format(hdr, header=True).fmt == "htru2"
    z = tmp_path / "store.zarr"
    z.mkdir()
    (z / "zarr.json").write_text("{}")
    with pytest.raises(ValueError, match="zarr_features"):
        detect_format(z)
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "nothing.csv")


def test_cli_reports_the_detected_format(slice_data, tmp_path, capsys):
    htru = slice_data / "htru2" / "HTRU_2_slice.csv"
    assert main(["ingest", str(htru), "--out", str(tmp_path / "h.zarr")]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["format"] == "htru2" and "HTRU2" in report["format_detected"]
    assert "dimplicit ingest: format htru2, detected:" in captured.err
    assert open_store(tmp_path / "h.zarr").attrs["format"] == "htru2"
    # --format given: nothing is detected
    assert main(["ingest", str(htru), "--format", "generic", "--label", "8",
                 "--out", str(tmp_path / "g.zarr")]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "format_detected" not in json.loads(captured.out) and "detected" not in captured.err
    src = tmp_path / "z.log"
    src.write_text(ZEEK)
    assert main(["ingest", str(src), "--out", str(tmp_path / "z.zarr"), "--sep", "\\t",
                 "--comment", "#", "--ignore", "uid", "--categorical", "proto",
                 "--label", "label", "--on-bad-rows", "skip"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["rows"] == 3
