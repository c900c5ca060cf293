"""The ``dimplicit`` command line.

Each sub-command lives in its own module under :mod:`dimplicit.commands` and exposes
``add_parser(subparsers)``, which registers the command and sets ``func`` (``args -> int``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order here is the order in ``dimplicit --help``.
COMMANDS = [
    "demo",
    "ingest",
    "synth",
    "train",
    "score",
    "evaluate",
    "gradcheck",
    "bench",
]


class CLIError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dimplicit",
        description="Train implicit neural networks on Dask over Zarr, and score large logs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dimplicit.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dimplicit.commands.{name}":
                continue  # command not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dimplicit.backend import DeviceUnavailableError
    from dimplicit.solvers import NonConvergenceError

    parser = build_parser()
    args = parser.parse_args(argv)
    user_errors = (
        CLIError, FileNotFoundError, ValueError, OSError, DeviceUnavailableError,
        NonConvergenceError,
    )  # fmt: skip
    try:
        return int(args.func(args) or 0)
    except user_errors as exc:
        # Expected user errors: one clear line on stderr, no traceback.
        print(f"dimplicit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dimplicit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
