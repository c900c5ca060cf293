"""One command-line vocabulary: the same flag for the same thing everywhere, defaults shown.

Walks every (sub-)command's parser from :func:`dimplicit.cli.build_parser`.  Known mismatches
in commands being rewritten elsewhere are ``xfail(strict=True)`` per flag, so that fixing one
turns its test red until the mark is removed.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass

import pytest

import dimplicit
from dimplicit.cli import build_parser, main, parsers
from dimplicit.commands._types import positive_int, seed
from dimplicit.data.sources import SOURCE_FORMATS

PARSER = build_parser()


@dataclass(frozen=True)
class Spec:
    """What a shared flag is, wherever it appears."""

    type: object = None
    metavar: str | None = None
    choices: tuple | None = None
    flag: bool = False  # takes no value (store_true/store_false)
    same_help: bool = False  # the help text too is the same everywhere


SHARED = {
    "--workers": Spec(positive_int, "W", same_help=True),
    "--threads-per-worker": Spec(positive_int, "T", same_help=True),
    "--blas-threads": Spec(positive_int, "B"),
    "--batch-size": Spec(positive_int, "N", same_help=True),
    "--block-rows": Spec(positive_int, "N"),
    "--rows": Spec(positive_int, "N"),
    "--chunk-rows": Spec(positive_int, "N"),
    "--epochs": Spec(positive_int, "N"),
    "--steps": Spec(positive_int, "N"),
    "--max-iter": Spec(positive_int, "N"),
    "--hidden": Spec(positive_int, "N"),
    "--seed": Spec(seed, "S"),
    "--data": Spec(None, "PATH"),
    "--out": Spec(None, "PATH"),
    "--model": Spec(None, "PATH"),
    "--reference": Spec(None, "STORE"),
    "--plot": Spec(None, "DIR"),
    "--format": Spec(None, None, tuple(SOURCE_FORMATS)),
    "--split": Spec(None, None, ("train", "validation", "test")),
    "--method": Spec(None, None, same_help=True),
    "--arch": Spec(None, None),
    "--tol": Spec(float, None),
    "--solver": Spec(None, None, ("picard", "anderson", "auto"), same_help=True),
    "--dtype": Spec(None, None, ("float32", "float64")),
    "--device": Spec(None, None, ("cpu", "gpu")),
    "--quiet": Spec(flag=True, same_help=True),
    "--overwrite": Spec(flag=True),
}

# Known mismatches in commands being rewritten elsewhere: none at present.
KNOWN_VOCABULARY: dict = {}
KNOWN_DEFAULTS: dict = {}
#: Commands that show progress on stderr, hence take --quiet.
PROGRESS_COMMANDS = ("train", "score", "predict", "demo", "ingest", "synth traffic")
KNOWN_QUIET: dict = {}


def options():
    """``(command, flag, action, parser)`` of every visible long option of every command."""
    found = []
    for path, parser in parsers(PARSER):
        for action in parser._actions:
            if not path or action.help == argparse.SUPPRESS:
                continue
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    found.append((" ".join(path), flag, action, parser))
    return found


OPTIONS = options()
COMMANDS = {cmd: parser for cmd, _, _, parser in OPTIONS}


def marked(items, known):
    """pytest params, the known mismatches marked xfail(strict=True) with their reason."""
    params = []
    for item in items:
        key = item if len(item) > 1 else item[0]
        marks = [pytest.mark.xfail(strict=True, reason=known[key])] if key in known else []
        params.append(pytest.param(*item, id=":".join(item), marks=marks))
    return params


def shown_help(parser, action) -> str:
    """The help of one option as ``--help`` prints it, on one line."""
    return " ".join(parser._get_formatter()._expand_help(action).split())


SHARED_USES = [(cmd, flag) for cmd, flag, _, _ in OPTIONS if flag in SHARED]


def test_the_walk_sees_every_command():
    expected = {"train", "score", "predict", "evaluate", "demo", "gradcheck", "ingest",
                "synth traffic", "bench core", "bench distributed", "bench score"}  # fmt: skip
    assert expected <= set(COMMANDS)
    assert {"--workers", "--batch-size", "--seed", "--data", "--out"} <= {f for _, f in SHARED_USES}


@pytest.mark.parametrize(("cmd", "flag"), marked(SHARED_USES, KNOWN_VOCABULARY))
def test_a_shared_flag_means_the_same_everywhere(cmd, flag):
    spec = SHARED[flag]
    action = next(a for c, f, a, _ in OPTIONS if (c, f) == (cmd, flag))
    if spec.flag:
        assert action.nargs == 0, f"{cmd} {flag} should take no value"
    else:
        assert action.nargs != 0, f"{cmd} {flag} should take a value"
        assert action.type is spec.type, f"{cmd} {flag}: type {action.type}"
        assert action.metavar == spec.metavar, f"{cmd} {flag}: metavar {action.metavar}"
        if spec.choices is not None:
            assert tuple(action.choices or ()) == spec.choices, f"{cmd} {flag}: {action.choices}"
    if spec.same_help:
        helps = Counter(a.help for c, f, a, _ in OPTIONS if f == flag)
        assert action.help == helps.most_common(1)[0][0], f"{cmd} {flag}: {action.help!r}"


DEFAULT_USES = [
    (cmd, flag) for cmd, flag, a, _ in OPTIONS
    if a.nargs != 0 and not a.required and flag == a.option_strings[-1]
]  # fmt: skip


@pytest.mark.parametrize(("cmd", "flag"), marked(DEFAULT_USES, KNOWN_DEFAULTS))
def test_every_option_shows_its_default(cmd, flag):
    action, parser = next((a, p) for c, f, a, p in OPTIONS if (c, f) == (cmd, flag))
    text = shown_help(parser, action)
    assert re.search(r"\bdefault: ", text), f"{cmd} {flag}: {text!r}"
    assert not re.search(r"\b(True|False|None)\b", text), f"Python words: {text!r}"


@pytest.mark.parametrize("cmd", marked([(c,) for c in PROGRESS_COMMANDS], KNOWN_QUIET))
def test_commands_with_progress_take_quiet(cmd):
    assert any(f == "--quiet" for c, f, _, _ in OPTIONS if c == cmd)


def test_train_help_shows_its_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs N passes over the training rows (default: 1)" in text
    assert "--batch-size N rows per training step (the global batch) (default: 8192)" in text
    assert "(mse reconstruction of the features) (default: classify)" in text
    assert "--quiet" in text and "--no-progress" not in text  # the old spelling is hidden


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"dimplicit {dimplicit.__version__}\n"


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["bench", "core", "--batch", "8"], "batch_size", 8),
        (["bench", "core", "--batch-size", "8"], "batch_size", 8),
        (["bench", "core", "--threads", "2"], "blas_threads", 2),
        (["bench", "core", "--blas-threads", "2"], "blas_threads", 2),
        (["bench", "distributed", "--workers", "1,2,4"], "worker_counts", [1, 2, 4]),
        (["bench", "distributed", "--worker-counts", "3"], "worker_counts", [3]),
        (["bench", "distributed"], "worker_counts", [1, 2]),
        (["bench", "score", "--workers", "2"], "workers", 2),
        (["train", "--data", "x", "--no-progress"], "progress", False),
        (["train", "--data", "x", "--quiet"], "progress", False),
        (["train", "--data", "x"], "progress", True),
        (["evaluate", "--scores", "s.zarr"], "predictions", "s.zarr"),
        (["demo", "--workers", "2"], "workers", 2),
    ],
)
def test_old_spellings_still_work(argv, dest, value):
    assert getattr(build_parser().parse_args(argv), dest) == value


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "distributed", "--worker-counts", "1,0"],
        ["bench", "core", "--batch-size", "0"],
        ["train", "--data", "x", "--seed", "-1"],
        ["demo", "--workers", "two"],
    ],
)
def test_bad_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_defaults_formatter_escapes_and_formats():
    from dimplicit.cli import _shown

    assert _shown(None) == "none" and _shown("") == "none"
    assert _shown((0.8, 0.1, 0.1)) == "0.8,0.1,0.1" and _shown(1e-4) == "0.0001"
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--rate", default="5%", help="a rate")
    p.add_argument("--n", type=int, default=3, help="n (%(default)s by argparse)")
    from dimplicit.cli import _with_defaults

    p.formatter_class = _with_defaults(p.formatter_class)
    text = " ".join(p.format_help().split())
    assert "a rate (default: 5%)" in text and "n (3 by argparse)" in text
