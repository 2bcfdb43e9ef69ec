"""Paths and files a user names, checked before anything is opened or made: a path within the file system's
limits (NAME_MAX, PATH_MAX, no NUL byte), a file read with a size bound (regular files only: never a device or
a FIFO), texts without control characters."""

from __future__ import annotations

import os
from pathlib import Path

from fuse4seg.errors import ConfigError
from fuse4seg.io import one_line

#: Fallbacks where os.pathconf cannot tell (Linux's usual limits).
_NAME_MAX, _PATH_MAX = 255, 4096


def _limit(path: str, name: str, fallback: int) -> int:
    """os.pathconf of the nearest existing folder at or above ``path`` (``name``: PC_NAME_MAX or PC_PATH_MAX)."""
    folder = os.path.abspath(path) if len(path) < _PATH_MAX else os.getcwd()
    while True:
        try:
            if os.path.isdir(folder):
                return int(os.pathconf(folder, name))
        except (OSError, ValueError):
            return fallback
        parent = os.path.dirname(folder)
        if parent == folder:
            return fallback
        folder = parent


def path_problem(path: str | os.PathLike) -> str | None:
    """What makes ``path`` unusable as a file name on this system, or None: a NUL byte, a name (between slashes)
    longer than the file system's ``PC_NAME_MAX`` bytes, or a path of ``PC_PATH_MAX`` bytes or more."""
    text = os.fspath(path)
    raw = os.fsencode(text)
    shown = text if len(text) <= 60 else f"{text[:40]}...{text[-12:]}"
    if b"\0" in raw:
        return f"{shown!r} contains a NUL byte, which no file name can hold"
    path_max = _limit(text, "PC_PATH_MAX", _PATH_MAX) if len(raw) >= 255 else _PATH_MAX
    if len(raw) >= path_max:
        return f"{shown!r} is {len(raw)} bytes long, over the file system's path limit of {path_max - 1} bytes"
    longest = len(max(raw.split(b"/"), key=len))
    name_max = _limit(text, "PC_NAME_MAX", _NAME_MAX) if longest > 14 else _NAME_MAX  # 14: POSIX's least NAME_MAX
    if longest > name_max:
        return f"{shown!r} holds a name of {longest} bytes, over the file system's limit of {name_max} bytes per name"
    return None


def check_path(path: str | os.PathLike, option: str | None = None) -> Path:
    """``path`` as a Path, after :func:`path_problem`; ConfigError naming ``option`` otherwise. Every path a user
    gives (and every name fuse4seg derives from user data) goes through this before it is opened or made."""
    problem = path_problem(path)
    if problem:
        raise ConfigError(problem, option=option)
    return Path(path)


def read_user_file(path: str | os.PathLike, max_bytes: int, option: str | None = None, what: str = "file") -> bytes:
    """The bytes of a file a user names, at most ``max_bytes``; ConfigError naming ``option`` for a bad path
    (:func:`check_path`), a missing file, anything that is not a regular file (a device such as /dev/zero, a
    FIFO, a socket, a directory: refused without reading, never waiting on a writer) or a file over the limit
    (checked from its size before reading, and again while reading, should it grow)."""
    import stat

    check_path(path, option)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", option=option) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or one_line(exc)}", option=option) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket"
            raise ConfigError(f"{path} is {kind}, not a regular {what}", option=option)
        if info.st_size > max_bytes:
            raise ConfigError(f"{path} is {info.st_size} bytes, over the limit of {max_bytes} bytes for a {what}",
                              option=option)
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or one_line(exc)}", option=option) from None
    if len(data) > max_bytes:
        raise ConfigError(f"{path} grew over the limit of {max_bytes} bytes for a {what} while being read",
                          option=option)
    return data


def text_problem(text: str) -> str | None:
    """What makes ``text`` unfit as a user text (a report, a description), or None: a NUL or another control
    character (Unicode category Cc) other than newline and tab."""
    import unicodedata

    for i, char in enumerate(text):
        if char not in "\n\t" and unicodedata.category(char) == "Cc":
            return f"holds the control character U+{ord(char):04X} at character {i + 1}"
    return None
