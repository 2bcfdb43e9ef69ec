"""File helpers: atomic writes (outputs appear complete under their final name or not at all), the
--overwrite rule for result files, file hashes, and one-line error text."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fuse4seg.errors import ConfigError, Fuse4SegError


def _make_parent(path: Path) -> tuple[Path, list[Path]]:
    """Create ``path``'s parent if needed and check it is writable; returns it and the folders created."""
    parent = path.resolve().parent
    created = [p for p in (parent, *parent.parents) if not p.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_empty(created)
        raise Fuse4SegError(f"cannot create output directory {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise Fuse4SegError(f"output directory {parent} is not writable")
    return parent, created


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders a failed write created (deepest first), as long as they are empty."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return


def _umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that is renamed to ``final`` only if the block succeeds.

    An existing ``final`` is refused unless ``overwrite``; then it is replaced only after success.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise Fuse4SegError(f"{final} already exists (pass --overwrite to replace it)")
    parent, created = _make_parent(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=parent))
    # mkdtemp makes a private (0700) directory; the output should get the usual umask permissions.
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=parent))
            os.replace(final, old / "x")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling file path that is renamed to ``final`` only if the block succeeds."""
    final = Path(final)
    parent, created = _make_parent(final)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes a private (0600) file
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        _remove_empty(created)
        raise


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (read ``block`` bytes at a time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def one_line(exc: object) -> str:
    """An exception's (or any object's) text on one line (HDF5 and decoder messages may hold newlines)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def check_replaceable(out: Path, overwrite: bool, keys: set[str], companions: tuple[Path, ...] = (),
                      option: str = "out") -> None:
    """Refuse an existing JSON ``out`` (or a companion file) without ``overwrite``, and with it any ``out``
    that is not a JSON object holding ``keys`` (a file fuse4seg wrote): --overwrite replaces only our own."""
    existing = [p for p in (out, *companions) if p.exists()]
    if not existing:
        return
    if not overwrite:
        raise ConfigError(f"{existing[0]} already exists (pass --overwrite to replace it)", option=option)
    try:
        previous = json.loads(out.read_text(encoding="utf-8"))
        ours = isinstance(previous, dict) and keys <= set(previous)
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise ConfigError(f"{out} was not written by fuse4seg; refusing to overwrite it", option=option)
