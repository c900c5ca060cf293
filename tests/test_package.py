"""The package as a whole: every module imports, the public names resolve, the library
does not print (the CLI does)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import dimplicit

MODULES = [
    m.name
    for m in pkgutil.walk_packages(dimplicit.__path__, "dimplicit.")
    if not m.name.endswith("__main__")
]


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)


def test_the_public_names_resolve():
    for name in dimplicit.__all__:
        assert getattr(dimplicit, name) is not None, name
    with pytest.raises(AttributeError):
        dimplicit.no_such_name  # noqa: B018


def test_library_code_does_not_print():
    """Only the command line prints; the library logs or returns values."""
    root = Path(dimplicit.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("commands/") or rel in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []
