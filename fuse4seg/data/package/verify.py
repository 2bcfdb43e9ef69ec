"""``verify``: check a built BraTS-Fuse package directory: every file's hash and size against croissant.json,
the HDF5 schema, value ranges, patient-level splits, the volumes' cases and the Parquet shards.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fuse4seg.data.package.h5format import has_text, has_volumes, open_validated, read_spacing
from fuse4seg.data.package.h5primitives import reading_data
from fuse4seg.data.package.h5volumes import scan_volumes
from fuse4seg.data.package.records import check_parquet
from fuse4seg.data.package.schema import (
    CROISSANT_NAME,
    H5_NAME,
    MAX_DESCRIPTION_BYTES,
    PARQUET_DIR,
    SPLITS,
    VOLUMES_GROUP,
)
from fuse4seg.data.package.staging import recover as recover_export
from fuse4seg.errors import DataError
from fuse4seg.io import MARKER, one_line, sha256_file

#: Bytes of image data ``verify`` reads at a time: memory stays bounded whatever the slice size (a
#: 4096 x 4096 slice is 256 MiB of source alone, so the block shrinks to one slice there).
SCAN_BLOCK_BYTES = 64 * 1024**2
#: Strings ``verify`` decodes at a time: SCAN_BLOCK_BYTES of the longest declared strings.
STRING_BLOCK = SCAN_BLOCK_BYTES // MAX_DESCRIPTION_BYTES

#: Largest croissant.json read (bytes, checked before reading): one entry per file, a few kB for any package
#: this version writes (Parquet shards included); a crafted multi-GB file is refused rather than parsed.
MAX_CROISSANT_BYTES: int = 64 * 2**20

def _short(value: object) -> str:
    """A bounded one-line rendering of a value read from a package file, for a message (reprlib caps depth
    and length, so a huge or deeply nested value neither floods the terminal nor recurses)."""
    return one_line(reprlib.repr(value))


def _package_entries(directory: Path) -> list[str]:
    """Relative paths of the files under ``directory`` (and of its empty folders, with a trailing /), fuse4seg's
    output markers aside; links are entries, never followed."""
    entries = []
    for path in directory.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                entries.append(path.relative_to(directory).as_posix() + "/")
        elif path.name != MARKER:
            entries.append(path.relative_to(directory).as_posix())
    return entries


def _in_parquet(name: str) -> bool:
    """Whether a package path lies in the Parquet folder or is an export's temporary sibling or lock of it."""
    return name.startswith((f"{PARQUET_DIR}/", f".{PARQUET_DIR}."))


def _check_files(directory: Path, parquet: bool = True) -> list[str]:
    """Re-hash every file listed in croissant.json; DataError on a missing, changed or unlisted file (with
    ``parquet`` False, the Parquet folder and its entries are left out: an export is about to replace them)."""
    path = directory / CROISSANT_NAME
    if not path.is_file():
        raise DataError(f"{path}: missing (not a BraTS-Fuse package directory?)")
    if path.stat().st_size > MAX_CROISSANT_BYTES:
        raise DataError(f"{path}: {path.stat().st_size} bytes, over the limit of {MAX_CROISSANT_BYTES} for "
                        "croissant.json (not a package this version wrote)")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSON syntax and non-UTF-8 bytes (UnicodeDecodeError) alike
        raise DataError(f"{path}: not valid Croissant JSON ({one_line(exc)})") from None
    except RecursionError:  # the decoder recurses per nesting level; a crafted file can nest 10**5 deep
        raise DataError(f"{path}: not valid Croissant JSON (nested too deeply)") from None
    distribution = metadata.get("distribution") if isinstance(metadata, dict) else None
    if not isinstance(distribution, list):
        raise DataError(f"{path}: not valid Croissant JSON (expected an object with a \"distribution\" list)")
    for i, entry in enumerate(distribution):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: distribution[{i}] is {type(entry).__name__} {_short(entry)}, not an object")
    objects = [d for d in distribution if d.get("@type") == "cr:FileObject"
               and (parquet or not _in_parquet(str(d.get("contentUrl", ""))))]
    listed = []
    for entry in objects:
        name = entry.get("contentUrl", "")
        if not isinstance(name, str) or "\0" in name:
            raise DataError(f"{path}: file entry contentUrl {_short(name)} is not a file name")
        file = directory / name
        if not name or Path(name).is_absolute() or ".." in Path(name).parts or not Path(name).name:
            raise DataError(f"{path}: file entry {name!r} is not a relative path inside the package")
        if file.is_symlink() or not file.is_file() and (file.exists() or file.parent.is_symlink()):
            raise DataError(f"{file}: listed in croissant.json but not a regular file (a link or a folder); a "
                            "package's files must be regular files inside it")
        if not file.is_file():
            raise DataError(f"{file}: listed in croissant.json but missing")
        if directory.resolve() not in file.resolve().parents:
            raise DataError(f"{file}: listed in croissant.json but lies outside the package (through a linked "
                            "folder); a package's files must be regular files inside it")
        size = f"{file.stat().st_size} B"
        if entry.get("contentSize") != size:
            raise DataError(f"{file}: size {size} differs from croissant.json ({_short(entry.get('contentSize'))})")
        if entry.get("sha256") != sha256_file(file):
            raise DataError(f"{file}: sha256 differs from croissant.json (file modified or corrupt)")
        listed.append(name)
    unlisted = sorted(name for name in _package_entries(directory) if name not in {*listed, CROISSANT_NAME}
                      and (parquet or not _in_parquet(name)))
    if unlisted:
        raise DataError(f"{directory}: file(s) not listed in croissant.json: {', '.join(unlisted)}")
    if H5_NAME not in listed:
        raise DataError(f"{path}: does not list {H5_NAME}")
    return listed


def _check_values(h5: object, path: Path, split: str) -> set[str]:
    """Scan one split in blocks of at most SCAN_BLOCK_BYTES per dataset: sources/fused finite in [0, 1],
    labels in {0..3}, spacing finite and > 0, case ids and texts UTF-8; returns case ids. The validated header bounds the work
    (MAX_SLICES, MAX_SLICE_SIDE, every chunk stored)."""
    group = h5[split]
    n = group["source"].shape[0]
    block = max(1, SCAN_BLOCK_BYTES // (int(np.prod(group["source"].shape[1:])) * 4))  # source: the largest
    for start in range(0, n, block):
        stop = min(n, start + block)
        for name in ("source", "fused"):
            with reading_data(path, f"/{split}/{name}[{start}:{stop}]"):
                values = group[name][start:stop]
            if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
                raise DataError(f"{path}: /{split}/{name}[{start}:{stop}] has values outside [0, 1] or NaN/Inf")
        with reading_data(path, f"/{split}/label[{start}:{stop}]"):
            labels = group["label"][start:stop]
        if labels.max(initial=0) > 3:
            raise DataError(f"{path}: /{split}/label[{start}:{stop}] has label {int(labels.max())} not in {{0,1,2,3}}")
    with reading_data(path, f"/{split}/slice_index"):
        slice_index = group["slice_index"][:]
    if n and slice_index.min() < 0:
        raise DataError(f"{path}: /{split}/slice_index has negative values")
    read_spacing(h5, split, path)  # finite and > 0
    if "text" in group:  # present exactly when announced (validator); each block must decode
        for _block in _string_blocks(group, "text", path, split):
            pass
    return {value for block in _string_blocks(group, "case_id", path, split) for value in block}


def _string_blocks(group: object, name: str, path: Path, split: str) -> Iterator[list[str]]:
    """The UTF-8 strings of ``/<split>/<name>`` in blocks of STRING_BLOCK (each string's length is bounded by
    the validator, so a block is at most STRING_BLOCK x MAX_DESCRIPTION_BYTES); DataError naming the
    dataset and block of a string that is not UTF-8."""
    dataset = group[name]
    for start in range(0, dataset.shape[0], STRING_BLOCK):
        stop = min(dataset.shape[0], start + STRING_BLOCK)
        with reading_data(path, f"/{split}/{name}[{start}:{stop}]"):
            raw = dataset[start:stop]
        try:
            yield [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw]
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: /{split}/{name} holds a string that is not UTF-8 (among [{start}:{stop}]: "
                            f"{one_line(exc)})") from None


def verify(directory: str | Path, parquet: bool = True, recover: bool = True) -> dict:
    """Check a package: file hashes and sizes against croissant.json, the HDF5 schema (dtypes, shapes,
    attributes), value ranges, that no case is in two splits, with volumes, that each split's volumes
    are exactly its slices' cases, and with Parquet shards, their schema and row counts
    (:func:`fuse4seg.data.package.records.check_parquet`; ``parquet`` False leaves the Parquet folder out). First
    (``recover``) an export a kill interrupted is finished if it was committed and its temporaries removed
    otherwise (:func:`fuse4seg.data.package.staging.recover`, under the package's lock). DataError on
    the first problem; returns {"files": [...], "splits": {split: {"cases", "slices"}}, "volumes": {split: cases}
    or None, "parquet": {split: records} or None} when everything holds."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such package directory")
    if recover:
        recover_export(directory)
    files = _check_files(directory, parquet)
    path = directory / H5_NAME
    h5, counts = open_validated(path)  # also checks the root attributes' types and values
    with h5:  # a corrupt chunk is a DataError naming it (the hashes only vouch for what croissant.json says)
        text = has_text(h5)
        cases = {split: _check_values(h5, path, split) for split in SPLITS}
        volumes = {split: scan_volumes(h5, path, split, SCAN_BLOCK_BYTES) for split in SPLITS} \
            if has_volumes(h5) else None
    for split, ids in (volumes or {}).items():
        if set(ids) != cases[split]:
            odd = min(set(ids) ^ cases[split])
            raise DataError(f"{path}: /{VOLUMES_GROUP}/{split} and /{split} hold different cases (first: {_short(odd)}); "
                            "the volumes must be the split's cases")
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1:]:
            shared = sorted(cases[first] & cases[second])
            if shared:
                raise DataError(f"{path}: case {shared[0]} is in both {first} and {second} "
                                f"({len(shared)} shared case(s)); splits must be by patient")
    shards = [name for name in files if _in_parquet(name)]
    records = None
    if shards:
        records = check_parquet(directory, shards, counts, text)
    return {"files": files, "splits": {s: {"cases": len(cases[s]), "slices": counts[s]} for s in SPLITS},
            "volumes": None if volumes is None else {s: len(volumes[s]) for s in SPLITS}, "parquet": records}
