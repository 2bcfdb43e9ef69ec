"""The Parquet record layout of a BraTS-Fuse package, derived from the HDF5 layout of
:mod:`fuse4seg.data.package.schema`: its columns (:func:`record_columns`), their Arrow schema, and the check of
stored shards (:func:`check_parquet`, run by ``verify``). :mod:`fuse4seg.data.package.export` writes the shards.

A record is one slice of ``/<split>``: the column ``index`` (its position N), then the split's per-slice
datasets, then its images (``source`` as one column per modality, the single channel of ``fused`` dropped),
then the optional datasets the file announces (``text``); names, dtypes, shapes and Croissant types are the
datasets' own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fuse4seg.data.package.schema import (
    H5_NAME,
    PARQUET_DIR,
    SPLITS,
    TEXT_ATTRIBUTE,
    UTF8,
    DatasetSpec,
    shape_text,
    split_datasets,
)
from fuse4seg.errors import DataError
from fuse4seg.io import one_line

if TYPE_CHECKING:
    import pyarrow as pa

#: Shard file names: SPLIT-NNNNN-of-MMMMM.parquet (the layout dataset hubs recognise).
SHARD_PATTERN = re.compile(r"(?P<split>[a-z]+)-(?P<i>\d{5})-of-(?P<m>\d{5})\.parquet")
#: The (H, W) plane of one image column.
PLANE: tuple[str, ...] = ("H", "W")
#: Record wording where a column's description is shorter than its dataset's (the card lists one per column).
RECORD_WORDING: dict[str, str] = {
    "spacing": "(3,) float32 mm: dy, dx, dz, the pixel size along H and W and the slice thickness",
    "text": "a description of the slice (generated, or a supplied report)",
}


@dataclass(frozen=True)
class Column:
    """One column of a Parquet record: ``kind`` is int64, int32, string, spacing ((3,) float32), image ((H, W)
    float32) or label ((H, W) uint8); ``croissant`` its Croissant dataType; ``repeated``: a list of values."""

    name: str
    kind: str
    description: str
    croissant: str
    repeated: bool = False


def record_columns(text: bool) -> tuple[Column, ...]:
    """The columns of a Parquet record of a package (``text``: it holds slice descriptions), in file order."""
    columns = [Column("index", "int64", f"position N of the slice in /<split> of {H5_NAME}", "sc:Integer")]
    # Per-slice values first, images next, announced datasets last (the order of the first shards written).
    declared = sorted(split_datasets({TEXT_ATTRIBUTE: int(text)}), key=lambda d: (bool(d.announced_by), d.compressed))
    for spec in declared:
        columns += _dataset_columns(spec)
    return tuple(columns)


def _dataset_columns(spec: DatasetSpec) -> list[Column]:
    """The record columns of one split dataset: one per modality of a multi-channel image, else one."""
    record = spec.shape[1:]  # without N
    if spec.dtype == UTF8 or not record:
        kind = "string" if spec.dtype == UTF8 else spec.dtype
        return [Column(spec.name, kind, RECORD_WORDING.get(spec.name, spec.description), spec.croissant)]
    if len(record) == 1:
        return [Column(spec.name, "spacing", RECORD_WORDING[spec.name], spec.croissant, True)]
    kind = "label" if spec.dtype == "uint8" else "image"
    plane = f"{shape_text(PLANE)} {spec.type_text()}"
    channels = dict(spec.attrs).get("modalities")
    if channels is None:  # one channel (fused) or none (label): a single plane
        return [Column(spec.name, kind, f"{plane}: {spec.description}", spec.croissant, True)]
    return [Column(m, kind, f"{plane}: the {m} source, normalised in the brain mask (rows of W values)",
                   spec.croissant, True) for m in channels]


def arrow_schema(columns: tuple[Column, ...], height: int, width: int) -> pa.Schema:
    """The Arrow schema of the records: images as fixed-size lists of ``height`` rows of ``width`` values."""
    import pyarrow as pa

    def grid(value: pa.DataType) -> pa.DataType:
        """(H, W) nested fixed-size lists of ``value``."""
        return pa.list_(pa.list_(value, width), height)

    types = {"int64": pa.int64(), "int32": pa.int32(), "string": pa.string(), "spacing": pa.list_(pa.float32(), 3),
             "image": grid(pa.float32()), "label": grid(pa.uint8())}
    return pa.schema([pa.field(c.name, types[c.kind]) for c in columns])


def check_parquet(directory: Path, names: list[str], counts: dict[str, int], text: bool) -> dict[str, int]:
    """Check the listed Parquet shards (relative paths) of a package whose HDF5 file has ``counts`` (per split,
    "height", "width"): every split's shards 0..M-1 present, the record schema, and row counts equal to the
    HDF5 file's; DataError naming the file on the first problem. Returns {split: rows}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected = arrow_schema(record_columns(text), counts["height"], counts["width"])
    shards: dict[str, dict[int, tuple[int, str]]] = {}
    for name in names:
        match = SHARD_PATTERN.fullmatch(name.removeprefix(f"{PARQUET_DIR}/"))
        if not name.startswith(f"{PARQUET_DIR}/") or match is None or match["split"] not in SPLITS:
            raise DataError(f"{directory / name}: not a shard name {PARQUET_DIR}/<split>-NNNNN-of-MMMMM.parquet")
        shards.setdefault(match["split"], {})[int(match["i"])] = (int(match["m"]), name)
    rows = {}
    for split in SPLITS:
        found = shards.get(split, {})
        totals = {m for m, _ in found.values()}
        if not found or len(totals) != 1 or sorted(found) != list(range(totals.pop())):
            raise DataError(f"{directory / PARQUET_DIR}: the {split} shards listed in croissant.json are not "
                            f"{split}-00000-of-M .. {split}-(M-1)-of-M")
        rows[split] = 0
        for _, name in found.values():
            try:
                meta = pq.read_metadata(directory / name)
                schema = meta.schema.to_arrow_schema().remove_metadata()
            except (pa.ArrowException, OSError) as exc:
                raise DataError(f"{directory / name}: not a readable Parquet file ({one_line(exc)})") from None
            if not schema.equals(expected):
                raise DataError(f"{directory / name}: columns differ from the record schema ({one_line(schema)})")
            rows[split] += meta.num_rows
        if rows[split] != counts[split]:
            raise DataError(f"{directory / PARQUET_DIR}: {rows[split]} {split} records, but {H5_NAME} has "
                            f"{counts[split]} {split} slices")
    return rows
