"""File helpers: atomic writes (outputs appear complete under their final name or not at all), the
--overwrite rule for result files, file hashes, and one-line error text."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from fuse4seg.errors import ConfigError, Fuse4SegError, flag_for


def make_parent(path: Path) -> tuple[Path, list[Path]]:
    """Create ``path``'s parent if needed and check it is writable; returns it and the folders created."""
    parent = path.resolve().parent
    created = [p for p in (parent, *parent.parents) if not p.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_empty(created)
        raise Fuse4SegError(f"cannot create output directory {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise Fuse4SegError(f"output directory {parent} is not writable")
    return parent, created


def remove_empty(created: list[Path]) -> None:
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


#: Marker file in every output directory fuse4seg makes: {"kind": KIND}. --overwrite replaces only a
#: directory whose marker names the same kind; temporaries carry kind PARTIAL until they are renamed.
MARKER = ".fuse4seg"
PARTIAL = "partial"
#: errno values that mean the output could not be written (disk full, quota, file-size limit).
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: A marker is a few bytes; a bigger file under that name is not ours (and is not read).
_MARKER_MAX_BYTES = 4096
#: Temporary names of atomic_dir / atomic_path: .NAME.<mkdtemp/mkstemp random part>.partial or .old.
_RANDOM_PART = r"[A-Za-z0-9_]{8}"


def write_marker(directory: Path, kind: str) -> None:
    """Mark ``directory`` as a fuse4seg output of ``kind`` (package, release, run, fuse, eval, demo); the marker
    is replaced whole (written to ``.fuse4seg.partial`` and renamed), so a kill -9 never leaves half of one."""
    tmp = directory / f"{MARKER}.partial"
    tmp.write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MARKER)


def marker_kind(directory: Path) -> str | None:
    """The kind in ``directory``'s fuse4seg marker, or None when it has none (or an unreadable one)."""
    path = directory / MARKER
    try:
        if not path.is_file() or path.stat().st_size > _MARKER_MAX_BYTES:
            return None
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def made_by_fuse4seg(directory: Path, kind: str, legacy: Callable[[Path], bool] | None = None) -> bool:
    """Whether ``directory`` is a fuse4seg output of ``kind``: its marker says so, or (outputs written before
    markers existed) ``legacy`` recognises it."""
    return marker_kind(directory) == kind or (legacy is not None and marker_kind(directory) is None
                                              and legacy(directory))


def check_separate(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], option: str = "out") -> None:
    """ConfigError unless ``out`` and every input path are disjoint (after resolving symlinks and '..'): not
    the same, ``out`` not above an input (replacing it would delete the input) and not inside one."""
    out_path = Path(out).resolve()
    for name, given in inputs.items():
        if given is None:
            continue
        source = Path(given).resolve()
        if out_path == source or out_path in source.parents or source in out_path.parents:
            where = "is inside" if source in out_path.parents else ("is" if out_path == source else "contains")
            raise ConfigError(f"{out} {where} the {flag_for(name)} input {given} (writing there, or --overwrite, "
                              f"could destroy it); choose an output outside it", option=option)


@contextlib.contextmanager
def output_lock(final: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive right to write ``final`` (lock file PARENT/.NAME.lock, fcntl.flock); a second
    writer is refused at once with a one-line error. The parent must exist."""
    import fcntl

    final = Path(final)
    lock = final.resolve().parent / f".{final.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Fuse4SegError(f"another fuse4seg process is writing {final} (lock {lock}); wait for it to "
                                "finish or choose another output") from None
        try:  # the holder before us may have removed the file after we opened it: lock the current one
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def sweep_stale(final: str | os.PathLike) -> list[Path]:
    """Remove what interrupted writes of ``final`` left (``.NAME.<random>.partial`` / ``.old`` siblings that
    fuse4seg made: directories carrying a marker, files named as atomic_path names them); call it holding
    :func:`output_lock`, so none of them belongs to a running writer. Returns what was removed."""
    final = Path(final)
    parent = final.resolve().parent
    pattern = re.compile(re.escape(f".{final.name}.") + _RANDOM_PART + r"\.(partial|old)")
    removed = []
    for path in parent.iterdir() if parent.is_dir() else ():
        if not pattern.fullmatch(path.name) or path.is_symlink():
            continue
        if path.is_dir() and marker_kind(path) is not None:
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.name.endswith(".partial"):
            path.unlink(missing_ok=True)
        else:
            continue
        removed.append(path)
    return removed


def _write_failed(final: Path, exc: OSError) -> Fuse4SegError:
    """The one-line error for a write that ran out of space (or hit a size limit), naming the file if known."""
    where = f" ({os.fsdecode(exc.filename)})" if exc.filename is not None else ""
    return Fuse4SegError(f"cannot write {final}: {exc.strerror or one_line(exc)}{where}")


#: How libraries that drop errno (pyarrow, torch's zip writer, TensorBoard) word a failed write.
_NO_SPACE_TEXT = re.compile(r"no space left|file too large|quota exceeded|\[errno (28|27|122)\]|"
                            r"unexpected pos|file write failed", re.IGNORECASE)


def out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` says a write failed for lack of space: ENOSPC, a quota or the file-size limit (errno, or
    the words of a library that reports it as text)."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return True
    return isinstance(exc, (OSError, RuntimeError)) and _NO_SPACE_TEXT.search(str(exc)) is not None


@contextlib.contextmanager
def full_disk_is_one_line(final: str | os.PathLike) -> Iterator[None]:
    """Inside the block, a write of ``final`` that runs out of space is :func:`write_failure`'s one-line error."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        error = write_failure(final, exc)
        if error is None:
            raise
        raise error from None


def write_failure(final: str | os.PathLike, exc: BaseException) -> Fuse4SegError | None:
    """The one-line error for a write of ``final`` that ran out of space (see :func:`out_of_space`): it says
    the disk is full and names ``final``; None for any other failure."""
    if not out_of_space(exc):
        return None
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)
    return Fuse4SegError(f"cannot write {final}: the disk is full (no space left, or a quota or file-size limit "
                         f"reached): {detail}")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, kind: str, overwrite: bool = False,
               legacy: Callable[[Path], bool] | None = None, option: str | None = "out") -> Iterator[Path]:
    """Yield a temporary sibling directory that becomes ``final`` (marked as ``kind``) only if the block succeeds.

    Holds :func:`output_lock` and first sweeps what interrupted writes left (:func:`sweep_stale`); the
    rest is :func:`staged_dir`.
    """
    final = Path(final)
    check_replace_dir(final, kind, overwrite, legacy, option)  # before creating any parent folder
    _, created = make_parent(final)
    try:
        with output_lock(final):
            sweep_stale(final)
            with staged_dir(final, kind, overwrite, legacy, option=option) as tmp:
                yield tmp
    except BaseException:
        remove_empty(created)  # after the lock file is gone
        raise


def check_replace_dir(final: Path, kind: str, overwrite: bool, legacy: Callable[[Path], bool] | None = None,
                      option: str | None = "out") -> None:
    """ConfigError (about ``option``) unless ``final`` is absent, or ``overwrite`` is given and it is an empty
    directory or a fuse4seg output of ``kind`` (:func:`made_by_fuse4seg`): --overwrite replaces nothing else."""
    if not (final.exists() or final.is_symlink()):
        return
    if not overwrite:
        raise ConfigError(f"{final} already exists (pass --overwrite to replace it)", option=option)
    if final.is_symlink() or not final.is_dir():
        raise ConfigError(f"{final} exists and is not a directory; refusing to replace it", option=option)
    if any(final.iterdir()) and not made_by_fuse4seg(final, kind, legacy):
        raise ConfigError(f"{final} is not a fuse4seg {kind} (no {MARKER} marker of that kind); refusing to "
                          "replace it: choose another output or remove it yourself", option=option)


@contextlib.contextmanager
def staged_dir(final: Path, kind: str, overwrite: bool = False, legacy: Callable[[Path], bool] | None = None,
               created: Sequence[Path] = (), option: str | None = "out") -> Iterator[Path]:
    """:func:`atomic_dir` for a caller that already holds ``final``'s :func:`output_lock`.

    An existing ``final`` must pass :func:`check_replace_dir`; it is swapped for the new one only after
    success, so a failure keeps it. A full disk is a one-line error; ``created``: parent folders to
    remove again on failure; ``option``: the parameter that named ``final`` (None: none did), for errors.
    """
    final = Path(final)
    check_replace_dir(final, kind, overwrite, legacy, option)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.resolve().parent))
    try:
        # mkdtemp makes a private (0700) directory; the output should get the usual umask permissions.
        os.chmod(tmp, 0o777 & ~_umask())
        write_marker(tmp, PARTIAL)
        yield tmp
        write_marker(tmp, kind)
        replace_dir(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(list(created))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            raise _write_failed(final, exc) from None
        raise


def replace_dir(new: Path, final: Path) -> None:
    """Put directory ``new`` at ``final`` (a sibling), swapping out and then deleting an existing ``final``."""
    if not final.exists():
        os.replace(new, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.resolve().parent))
    write_marker(old, PARTIAL)  # so a sweep recognises it if we die between the two renames
    os.replace(final, old / "x")
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling file path that is renamed to ``final`` only if the block succeeds (a full
    disk is a one-line error)."""
    with atomic_paths(final) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*finals: str | os.PathLike) -> Iterator[tuple[Path, ...]]:
    """Yield temporary sibling paths of several files; all are renamed to their ``finals`` only after every
    one is written, so a failure (a full disk) leaves the previous set intact."""
    finals_ = [Path(f) for f in finals]
    made: list[tuple[Path, Path, list[Path]]] = []
    try:
        for final in finals_:
            parent, created = make_parent(final)
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=parent)
            os.close(fd)
            os.chmod(name, 0o666 & ~_umask())  # mkstemp makes a private (0600) file
            made.append((Path(name), final, created))
        yield tuple(tmp for tmp, _, _ in made)
        for tmp, final, _ in made:
            os.replace(tmp, final)
    except BaseException as exc:
        for tmp, _, created in made:
            tmp.unlink(missing_ok=True)
            remove_empty(created)
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            raise _write_failed(finals_[0] if len(finals_) == 1 else finals_[0].parent, exc) from None
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


def check_replaceable(out: Path, overwrite: bool, keys: set[str],
                      companions: Sequence[Path | tuple[Path, str]] = (), option: str = "out") -> None:
    """Refuse an existing JSON ``out`` (or a companion file) without ``overwrite``, and with it any ``out``
    that is not a JSON object holding ``keys`` (a file fuse4seg wrote): --overwrite replaces only our own.
    A companion given as (path, first line) is replaced only when it begins with the line fuse4seg writes
    there; one given as a bare path is never replaced by --overwrite when it exists."""
    pairs = [(Path(c), None) if isinstance(c, (str, os.PathLike)) else (Path(c[0]), c[1]) for c in companions]
    existing = [p for p in (out, *(c for c, _ in pairs)) if p.exists() or p.is_symlink()]
    if not existing:
        return
    if not overwrite:
        raise ConfigError(f"{existing[0]} already exists (pass --overwrite to replace it)", option=option)
    if out in existing:
        try:
            previous = json.loads(out.read_text(encoding="utf-8")) if out.is_file() and not out.is_symlink() \
                else None
            ours = isinstance(previous, dict) and keys <= set(previous)
        except (OSError, ValueError, RecursionError):
            ours = False
        if not ours:
            raise ConfigError(f"{out} was not written by fuse4seg; refusing to overwrite it", option=option)
    for companion, first_line in pairs:
        if companion in existing and not _begins_with(companion, first_line):
            raise ConfigError(f"{companion} (written beside {out.name}) was not written by fuse4seg; refusing to "
                              "overwrite it: move it away or choose another output", option=option)


def _begins_with(path: Path, first_line: str | None) -> bool:
    """Whether the regular file ``path`` begins with ``first_line`` and a newline (False for None)."""
    if first_line is None or path.is_symlink() or not path.is_file():
        return False
    expected = (first_line + "\n").encode("utf-8")
    try:
        with open(path, "rb") as handle:
            return handle.read(len(expected)) == expected
    except OSError:
        return False


@contextlib.contextmanager
def file_output(out: str | os.PathLike, *companions: str | os.PathLike) -> Iterator[None]:
    """Hold the right to write the file ``out`` (and its ``companions``, written beside it) for the whole
    command: create its parent, take :func:`output_lock` (a second writer gets a one-line error at once) and
    sweep what interrupted writes of them left. A failure removes the parent folders this created."""
    out = Path(out)
    _, created = make_parent(out)
    try:
        with output_lock(out):
            for final in (out, *companions):
                sweep_stale(final)
            yield
    except BaseException:
        remove_empty(created)
        raise


#: First characters that make a spreadsheet read a text cell as a formula (or strip it): OWASP's list.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell that no spreadsheet executes: text beginning with =, +, -, @, tab or CR gets a leading
    ``'``; numbers (and other text) are returned as they are."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value
