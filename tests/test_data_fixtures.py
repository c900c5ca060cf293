"""The shipped data slices and the suite's data lookup (``slice_data`` / ``full_data``)."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import conftest
import pytest

DATA = Path(__file__).resolve().parent / "data"
ROW = re.compile(
    r"^\| `(?P<file>[^`]+)` \| (?P<rows>[\d,]+) \| (?P<bytes>[\d,]+) \| `(?P<sha>[0-9a-f]{64})` \|$"
)


def _listed() -> dict[str, dict]:
    """The slice table of tests/data/README.md: file -> rows, bytes, sha256."""
    out = {}
    for line in (DATA / "README.md").read_text(encoding="utf-8").splitlines():
        m = ROW.match(line)
        if m:
            out[m["file"]] = {
                "rows": int(m["rows"].replace(",", "")),
                "bytes": int(m["bytes"].replace(",", "")),
                "sha256": m["sha"],
            }
    return out


def _make_slices():
    spec = importlib.util.spec_from_file_location("make_slices", DATA / "make_slices.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_checksums_match_the_slices():
    listed = _listed()
    shipped = sorted(
        str(p.relative_to(DATA)) for p in DATA.rglob("*") if p.suffix in (".txt", ".csv")
    )
    assert sorted(listed) == shipped, "every data file in tests/data is listed in its README"
    for name, want in listed.items():
        data = (DATA / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == want["sha256"], name
        assert len(data) == want["bytes"], name
        assert len(data) < 1_000_000, name
        with open(DATA / name, newline="") as f:
            assert sum(1 for row in csv.reader(f) if row) == want["rows"], name


def test_slice_fixture_points_at_the_shipped_slices(slice_data):
    assert slice_data == DATA
    assert set(_make_slices().SLICES) == set(_listed())
    for name in _listed():
        assert (slice_data / name).is_file()


def test_slices_regenerate_exactly_from_the_full_files(full_data):
    built = _make_slices().build(full_data)
    for name, data in built.items():
        assert data == (DATA / name).read_bytes(), name


def _assert_names_both_places(message: str):
    assert "DIMPLICIT_SHARED_DATA" in message and "../shared/data" in message, message


def test_full_data_lookup_skips_when_shared_data_is_absent(monkeypatch, tmp_path):
    """A fresh clone: no DIMPLICIT_SHARED_DATA and no ../shared beside the repository."""
    monkeypatch.delenv(conftest.FULL_DATA_ENV, raising=False)
    monkeypatch.setattr(conftest, "DEFAULT_FULL_DATA", tmp_path / "no" / "shared" / "data")
    with pytest.raises(pytest.skip.Exception) as exc:
        conftest.find_full_data()
    _assert_names_both_places(str(exc.value))
    # The variable pointing at a folder without the files skips the same way.
    monkeypatch.setenv(conftest.FULL_DATA_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(pytest.skip.Exception) as exc:
        conftest.find_full_data()
    _assert_names_both_places(str(exc.value))
    assert str(tmp_path / "elsewhere") in str(exc.value)


def test_full_data_lookup_prefers_the_environment_variable(monkeypatch, tmp_path):
    for name in conftest.FULL_DATA_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    monkeypatch.setenv(conftest.FULL_DATA_ENV, str(tmp_path))
    monkeypatch.setattr(conftest, "DEFAULT_FULL_DATA", tmp_path / "no" / "shared" / "data")
    assert conftest.find_full_data() == tmp_path


def test_a_fresh_clone_skips_full_data_tests_instead_of_erroring(tmp_path):
    """Run pytest on a copy of the suite's conftest and data with no ``../shared`` beside it."""
    clone = tmp_path / "clone"
    shutil.copy(Path(conftest.__file__), _mkdir(clone / "tests") / "conftest.py")
    shutil.copytree(DATA, clone / "tests" / "data")
    (clone / "tests" / "test_lookup.py").write_text(
        "def test_needs_full_data(full_data):\n"
        "    raise AssertionError('must be skipped')\n\n\n"
        "def test_needs_a_slice(slice_data):\n"
        "    assert (slice_data / 'htru2' / 'HTRU_2_slice.csv').is_file()\n"
    )
    assert not (clone.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k != conftest.FULL_DATA_ENV}
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         f"--junitxml={report}", "tests/test_lookup.py"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = {c.get("name"): c for c in ET.parse(report).getroot().iter("testcase")}
    assert cases["test_needs_a_slice"].find("*") is None  # passed
    skipped = cases["test_needs_full_data"].find("skipped")
    assert skipped is not None, proc.stdout
    _assert_names_both_places(skipped.get("message", ""))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path
