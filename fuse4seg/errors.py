"""Exceptions for bad input; the command line prints them as one line and exits non-zero."""


class Fuse4SegError(Exception):
    """An error the user can act on (bad data, bad option); never a bug in fuse4seg."""


class DataError(Fuse4SegError):
    """A data file or release directory is missing, corrupt or inconsistent; the message names it."""


class ConfigError(Fuse4SegError):
    """An option or configuration value is invalid; the message names the option."""
