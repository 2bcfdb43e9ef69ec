"""Exceptions for bad input; the command line prints them as one line and exits non-zero.

Library errors speak of parameters: ``ConfigError("must be >= 1, got 0", option="inner_steps")``
reads ``inner_steps: must be >= 1, got 0`` to a Python caller; the command line shows the same
error under the flag that sets that parameter (``--inner-steps: ...``, see :func:`flag_for`).
"""

from __future__ import annotations


class Fuse4SegError(Exception):
    """An error the user can act on (bad data, bad option); never a bug in fuse4seg.

    ``option`` (optional) is the parameter the error is about, by its Python name; ``message``
    is the rest of the text.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        """``message``: what is wrong; ``option``: the parameter name it concerns, if one."""
        self.message = message
        self.option = option
        super().__init__(f"{option}: {message}" if option else message)

    def __reduce__(self) -> tuple:
        """Pickle with both fields (errors cross process pools when building in parallel)."""
        return (type(self), (self.message, self.option))


class DataError(Fuse4SegError):
    """A data file or release directory is missing, corrupt or inconsistent; the message names it."""


class ConfigError(Fuse4SegError):
    """An option or configuration value is invalid; ``option`` (or the message) names it."""


def flag_for(option: str) -> str:
    """The command-line flag of a parameter name: ``inner_steps`` -> ``--inner-steps``."""
    return "--" + option.replace("_", "-")


def cli_message(exc: Fuse4SegError, flags: dict[str, str] | None = None) -> str:
    """One line for the terminal: the parameter shown as its flag (``flags`` overrides the default rule)."""
    if not exc.option:
        return str(exc)
    flag = (flags or {}).get(exc.option) or flag_for(exc.option)
    return f"{flag}: {exc.message}"
