"""Errors of :mod:`dimplicit.distributed` whose messages name the caller's parameters.

The same mistake reaches :func:`~dimplicit.distributed.connect.connect` from Python, where the
user wrote ``scheduler_file=...``, and from the command line, where they wrote
``--scheduler-file``. The library speaks of parameters; the error keeps its template and the
parameter names so that the command line can re-render the message with its flags
(:meth:`ParameterMessage.message`) instead of the library knowing about flags.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["OptionError", "ParameterMessage", "SchedulerConnectionError"]


class ParameterMessage:
    """Mix-in for exceptions whose message names parameters.

    Parameters
    ----------
    template : str
        :meth:`str.format` template: ``{0}``, ``{1}``, ... stand for the names in
        ``parameters``; named fields for ``values``. Values are substituted, never parsed, so
        user text (paths, addresses) in them is safe.
    *parameters : str
        Parameter names, in the order of the positional fields.
    **values
        Other fields of the template.
    """

    def __init__(self, template: str, *parameters: str, **values: Any) -> None:
        self.template = template
        self.parameters = parameters
        self.values = values
        super().__init__(self.message())

    def message(self, name: Callable[[str], str] = str) -> str:
        """The message with each parameter written as ``name(parameter)``."""
        return self.template.format(*map(name, self.parameters), **self.values)

    def __reduce__(self) -> tuple[Any, ...]:
        # The default pickling would call cls(message) and lose the template.
        return (_rebuild, (type(self), self.template, self.parameters, self.values))


def _rebuild(cls: type, template: str, parameters: tuple[str, ...], values: dict) -> Any:
    return cls(template, *parameters, **values)


class OptionError(ParameterMessage, ValueError):
    """Invalid or mutually exclusive options, detected before anything is started."""


class SchedulerConnectionError(ParameterMessage, ConnectionError):
    """A scheduler could not be reached, refused us, or is not a Dask scheduler at all."""
