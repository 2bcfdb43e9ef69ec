"""How a Parquet export changes a package as one step that a ``kill -9`` cannot leave half done.

An export changes three things together: ``parquet/``, ``README.md`` and ``croissant.json`` (which hashes the
other two). Everything new is first written into a staging folder ``DIR/.parquet.<random>.partial`` (marker
kind ``partial``): the shards, and the new card and croissant.json as ``.README.md`` and ``.croissant.json``.
When all of it is written the marker becomes kind ``parquet``: that rename is the commit. :func:`apply_staged`
then moves the old ``parquet/`` aside (``.parquet.<random>.old``), renames the card, croissant.json and the
staging folder into place and deletes the old shards; each step can be repeated, so a later command finishes
a committed export whatever moment a kill stopped it. :func:`recover` (run by ``export`` and ``verify``, under
the package's lock) finishes a committed export and removes what an uncommitted one left, including the
temporaries of earlier versions (``.README.md.*.partial``, ``.croissant.json.*.partial``, ``.parquet.lock``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fuse4seg.data.package.schema import CARD_NAME, CROISSANT_NAME, PARQUET_DIR
from fuse4seg.io import MARKER, PARTIAL, marker_kind, output_lock, write_marker

#: Marker kind of the Parquet folder (and of a staging folder whose export is committed).
PARQUET_KIND = "parquet"
#: Files of the package that an export replaces, staged inside the staging folder as ``.NAME``.
REPLACED = (CARD_NAME, CROISSANT_NAME)
_RANDOM = r"[A-Za-z0-9_]{8}"
#: Names (directly in the package) of an export's temporaries, this version's and earlier ones'.
_STAGE = re.compile(rf"\.{re.escape(PARQUET_DIR)}\.{_RANDOM}\.partial")
_DEBRIS = re.compile(rf"\.{re.escape(PARQUET_DIR)}\.{_RANDOM}\.(partial|old)|\.{re.escape(PARQUET_DIR)}\.lock|"
                     rf"\.({'|'.join(re.escape(n) for n in REPLACED)})\.{_RANDOM}\.partial")


def is_debris(name: str) -> bool:
    """Whether ``name`` (a file or folder directly in a package) is named as an export's temporary is."""
    return _DEBRIS.fullmatch(name) is not None


def debris(directory: Path) -> list[Path]:
    """What interrupted exports left directly in the package ``directory`` (by name; :func:`recover` checks
    each is fuse4seg's before removing it)."""
    try:
        return sorted(p for p in directory.iterdir() if is_debris(p.name))
    except OSError:
        return []


@contextlib.contextmanager
def staging(directory: Path) -> Iterator[Path]:
    """A new staging folder in ``directory`` (marker kind ``partial``), removed if the block fails; the block
    commits it with :func:`commit`."""
    stage = Path(tempfile.mkdtemp(prefix=f".{PARQUET_DIR}.", suffix=".partial", dir=directory))
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(stage, 0o777 & ~mask)  # mkdtemp makes a private (0700) directory
        write_marker(stage, PARTIAL)
        yield stage
    except BaseException:
        if marker_kind(stage) != PARQUET_KIND:  # committed: recover() finishes it
            shutil.rmtree(stage, ignore_errors=True)
        raise


def staged(stage: Path, name: str) -> Path:
    """Where the new ``name`` (README.md or croissant.json) is written inside ``stage``."""
    return stage / f".{name}"


def commit(stage: Path) -> None:
    """Mark a fully written staging folder as committed (an atomic rename of its marker)."""
    write_marker(stage, PARQUET_KIND)


def apply_staged(directory: Path, stage: Path) -> None:
    """Move a committed ``stage`` into place (see the module doc); every step can be repeated after a kill."""
    final = directory / PARQUET_DIR
    if final.exists() or final.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{PARQUET_DIR}.", suffix=".old", dir=directory))
        write_marker(old, PARTIAL)
        os.replace(final, old / "x")
    for name in REPLACED:
        if staged(stage, name).is_file():
            os.replace(staged(stage, name), directory / name)
    os.replace(stage, final)
    _remove_debris(directory)


def recover(directory: Path, locked: bool = False) -> None:
    """Finish a committed export of ``directory`` and remove what uncommitted ones left (under the package's
    :func:`output_lock`, taken here unless ``locked``); nothing to do without debris."""
    if not debris(directory):
        return
    with contextlib.nullcontext() if locked else output_lock(directory):
        for stage in debris(directory):
            if _STAGE.fullmatch(stage.name) and not stage.is_symlink() and stage.is_dir() \
                    and marker_kind(stage) == PARQUET_KIND:
                apply_staged(directory, stage)
                break  # one export runs at a time: at most one is committed
        _remove_debris(directory)


def _remove_debris(directory: Path) -> None:
    """Delete the temporaries of interrupted exports that are fuse4seg's: marked folders (or empty ones, killed
    before their marker), and files named as its temporary files are."""
    for path in debris(directory):
        if path.is_symlink():
            continue
        if path.is_dir():
            left = {p.name for p in path.iterdir()}
            if marker_kind(path) is not None or left <= {MARKER, f"{MARKER}.partial"}:
                shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
