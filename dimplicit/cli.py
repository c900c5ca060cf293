"""The ``dimplicit`` command line.

Each sub-command lives in its own module under :mod:`dimplicit.commands` and exposes
``add_parser(subparsers)``, which registers the command and sets ``func`` (``args -> int``).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

# Order here is the order in ``dimplicit --help``.
COMMANDS = [
    "demo",
    "ingest",
    "synth",
    "train",
    "score",
    "predict",
    "evaluate",
    "gradcheck",
    "bench",
    "certify",
]


class CLIError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


class _ShowDefaults:
    """Formatter mixin: every option's help ends with its default.

    ``(default: X)`` is appended unless the help already says its default; an option without
    a value (``None`` or ``""``) shows ``(default: none)``.  Flags without an argument, required
    options and positionals are left as they are.
    """

    def _get_help_string(self, action):
        text = super()._get_help_string(action) or ""
        if (
            not action.option_strings
            or action.required
            or action.nargs == 0
            or action.default is argparse.SUPPRESS
            or "default" in text.lower()
        ):
            return text
        # The help is %-formatted next (argparse's %(default)s): escape only what is added.
        return f"{text} (default: {_shown(action.default).replace('%', '%%')})"


def _shown(value) -> str:
    """A default as the user would type it."""
    if value is None or value == "":
        return "none"
    if isinstance(value, list | tuple):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_FORMATTERS: dict[type, type] = {}


def _with_defaults(formatter: type) -> type:
    """``formatter`` with :class:`_ShowDefaults` mixed in (one class per formatter)."""
    if issubclass(formatter, _ShowDefaults):
        return formatter
    if formatter not in _FORMATTERS:
        _FORMATTERS[formatter] = type(formatter.__name__, (_ShowDefaults, formatter), {})
    return _FORMATTERS[formatter]


def parsers(parser: argparse.ArgumentParser):
    """``(command path, parser)`` of ``parser`` and every sub-command below it, depth first."""
    stack = [((), parser)]
    while stack:
        path, p = stack.pop(0)
        yield path, p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(((*path, name), child) for name, child in action.choices.items())


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad flag reported as ONE line (not the whole usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from dimplicit import __version__

    parser = _Parser(
        prog="dimplicit",
        description="Train implicit neural networks on Dask over Zarr, predict and score "
        "large data sets out of core.",
    )
    parser.add_argument("--version", action="version", version=f"dimplicit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dimplicit.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dimplicit.commands.{name}":
                continue  # command not built yet
            raise
        module.add_parser(sub)
    # Every --help shows every option's default, whoever wrote the command.
    for _, p in parsers(parser):
        p.formatter_class = _with_defaults(p.formatter_class)
    return parser


def _flags_of(parser, command) -> dict[str, str]:
    """``{parameter name: --flag}`` of a sub-command, from its parser's actions."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {}
    for action in sub.choices[command]._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in flags:
            flags[action.dest] = longs[0]
    return flags


def cli_wording(message: str, flags: dict[str, str]) -> str:
    """Say a library message in the command line's words.

    Library errors name parameters (``resume=True``, ``lr=0.5``, ``checkpoint_dir``); the
    user typed flags, so ``resume=True`` becomes ``--resume``, ``lr=0.5`` ``--lr 0.5`` and
    ``checkpoint_dir`` ``--checkpoint-dir``, for the parameters this command has as flags.
    """

    def flag(m):
        name, value = m.group(1), m.group(2)
        if name not in flags:
            return m.group(0)
        if value is None:
            return flags[name]
        return flags[name] if value == "True" else f"{flags[name]} {value}"

    # name=value, then bare snake_case names (a plain word like "epochs" stays a word).
    message = re.sub(r"\b([a-z][a-z0-9_]*)=([^\s,;:()]+)", flag, message)
    return re.sub(r"\b([a-z][a-z0-9]*_[a-z0-9_]+)\b()(?!=)", lambda m: flags.get(m.group(1),
                  m.group(1)), message)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from dimplicit.backend import DeviceUnavailableError
    from dimplicit.data.store import OutputExistsError
    from dimplicit.distributed.checkpoint import DirectoryInUseError
    from dimplicit.interrupt import TrainingInterrupted
    from dimplicit.solvers import NonConvergenceError

    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    user_errors = (
        CLIError, FileNotFoundError, ValueError, OSError, DeviceUnavailableError,
        NonConvergenceError, DirectoryInUseError, MemoryError,
    )  # fmt: skip
    prefix = f"dimplicit {args.command}"

    def say(text):
        print(f"{prefix}: {cli_wording(text, _flags_of(parser, args.command))}", file=sys.stderr)

    # SIGTERM (timeout, SLURM at walltime) unwinds like Ctrl-C, so every temporary output is
    # removed on the way out; training turns both into a checkpoint (dimplicit.interrupt).
    previous = _terminate_like_interrupt()
    try:
        return int(args.func(args) or 0)
    except OutputExistsError as exc:
        say(f"error: {exc}; pass --overwrite to replace it")
        return 2
    except user_errors as exc:
        # Expected user errors: one clear line on stderr, no traceback.
        say(f"error: {exc}")
        return 2
    except TrainingInterrupted as exc:
        say(f"interrupted: {exc}")
        return exc.exit_status
    except KeyboardInterrupt:
        say("interrupted; nothing was written (temporary outputs removed)")
        return 130
    finally:
        _restore(previous)


def _setup_logging(args) -> None:
    """Library warnings (``logging``) go to stderr as one line each, prefixed by the command."""
    import logging

    logger = logging.getLogger("dimplicit")
    for old in [h for h in logger.handlers if getattr(h, "dimplicit_cli", False)]:
        logger.removeHandler(old)
    # sys.stderr looked up now, not at import: tests capture it per call.
    handler = logging.StreamHandler(sys.stderr)
    handler.dimplicit_cli = True
    handler.setFormatter(logging.Formatter(f"dimplicit {args.command}: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _terminate_like_interrupt():
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, signal.default_int_handler)


def _restore(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
