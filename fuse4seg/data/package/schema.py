"""The BraTS-Fuse HDF5 schema (``brats_fuse.h5``, format version 2), declared once as data.

Everything that writes, checks or describes the file reads this declaration: the writer
(:func:`fuse4seg.data.package.h5format.create_split_group`), the validator
(:func:`fuse4seg.data.package.h5format.validate_schema`, used by every reader and by ``verify``), the
record-set fields of ``croissant.json``, the file list of the dataset card and the Parquet record columns
(:mod:`fuse4seg.data.package.records`). Change the file format here (and bump :data:`FORMAT_VERSION`), not in those places.

Shapes are symbolic: ``N`` is the number of slices of one split, ``H`` x ``W`` the slice size
(one per file: every split has the same). Every split group (``/train``, ``/val``, ``/test``)
holds every dataset of :data:`DATASETS`; the root holds every attribute of :data:`ROOT_ATTRIBUTES`
(``volumes`` and ``text`` may be absent: files written before them read as 0). A dataset declared with
``announced_by`` is optional: present exactly when that root attribute is 1 (:func:`split_datasets`).

The volumetric layout (``build-benchmark --volumes``; optional, announced by the root attribute
``volumes`` = 1) is ``/volumes/<split>/<case_id>``: one group per case of the split (exactly the
cases of the slice split), holding every dataset of :data:`VOLUME_DATASETS` and every attribute of
:data:`VOLUME_ATTRIBUTES`. There ``D`` x ``H`` x ``W`` is the case's brain box (z, x, y extents: the
slices' in-plane axis order, depth first), and the lower-case chunk symbols ``d``, ``h``, ``w`` are
min(:data:`VOLUME_CHUNK`, ``D``/``H``/``W``) (:func:`resolve`).

Format history: version 2 made ``spacing`` and ``slice_size`` required (version 1 files written
before they existed are refused with a request to rebuild; none exist outside this repository).
The optional volumes layout and its root attribute ``volumes`` were added within version 2: an
older format-2 file (no attribute, no ``/volumes``) is still valid and reads as ``volumes`` = 0; an
older fuse4seg refuses a file with ``/volumes`` as an unexpected object, and reads one without it.
The per-slice descriptions ``text`` (root attribute ``text`` = 1) were added the same way: a format-2
file without them is still valid (no texts); an older fuse4seg refuses ``/<split>/text`` as unexpected.
"""

from __future__ import annotations

from dataclasses import dataclass

from fuse4seg.conventions import MODALITIES
from fuse4seg.data.release.nifti import MAX_VOLUME_VOXELS as _NIFTI_MAX_VOXELS

FORMAT_VERSION = 2
H5_NAME = "brats_fuse.h5"
#: The other files of a package beside H5_NAME: dataset card, citation, Croissant metadata (written last, with
#: the hashes of the others), and the folder of the optional Parquet shards.
CARD_NAME, CITATION_NAME, CROISSANT_NAME = "README.md", "CITATION.cff", "croissant.json"
PARQUET_DIR = "parquet"
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: gzip level 1, no shuffle filter: measured in benchmarks/build.py (see h5format's module doc).
COMPRESSION: dict[str, object] = {"compression": "gzip", "compression_opts": 1}
#: The dtype name that stands for variable-length UTF-8 strings (h5py.string_dtype("utf-8")).
UTF8 = "utf-8"

# Limits on the sizes a file declares, checked against its header before anything is read, allocated
# or scanned: a crafted header (10**9 slices costs nothing on disk) is refused at once instead of
# costing gigabytes of memory or hours of scanning. No real build comes near them.
#: Slices per split: a build from every case of the largest BraTS release (about 2000 cases x 155
#: axial slices) has about 310,000, and 10,000,000 is 30x that. It bounds what readers load whole per
#: slice (slice_index and spacing: about 0.3 GB at the limit; case ids, each at most MAX_TEXT_BYTES,
#: only as many as the file really stores, since every declared chunk must be stored).
MAX_SLICES = 10_000_000
#: Pixels along H and along W, and the largest ``--size`` build-benchmark accepts (BraTS volumes are
#: 240 x 240), so the validator never refuses a file the builder may write: 4096 x 4096 float32 slices are
#: 320 MiB per 5 planes, already past any GPU batch.
MAX_SLICE_SIDE = 4096
#: Bytes of one stored string (a case id): case ids are release folder names, at most 255 characters
#: (NAME_MAX), so at most 765 bytes of UTF-8; HDF5 allocates a string's declared length before reading
#: it, and a crafted 4-byte length would otherwise cost 4 GiB.
MAX_TEXT_BYTES = 1024
#: Bytes of one slice description (``text``): generated texts are under 700 bytes; 4096 leaves room for
#: user-supplied reports (``--reports``), which the build refuses beyond it.
MAX_DESCRIPTION_BYTES = 4096
#: The root attribute that announces the optional per-slice ``text`` dataset (1: every split group holds it).
TEXT_ATTRIBUTE = "text"

#: The group of the optional volumetric layout (``build-benchmark --volumes``).
VOLUMES_GROUP = "volumes"
#: Side of the cubic chunks of the volume datasets (clipped to the volume): a random 32^3..96^3 patch
#: reads 1-27 chunks per modality of 128 KiB (float32) each, and whole volumes read at full gzip speed.
VOLUME_CHUNK = 32
#: Voxels D * H * W of one stored volume, and X * Y * Z of its original volume: the largest volume a release
#: may hold (NIfTI reading's limit, 512^3; a BraTS brain box is about 140 x 170 x 140 = 3.3M). At the limit
#: a case's source is 2 GiB of float32; verify reads it in blocks of planes, readers by patch.
MAX_VOLUME_VOXELS = _NIFTI_MAX_VOXELS
#: Cases per split in /volumes: 40x the largest BraTS release (about 2,600 cases); bounds the
#: per-case header checks of the validator (a few milliseconds each).
MAX_VOLUME_CASES = 100_000


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of every split group: what the writer creates and the validator expects."""

    name: str
    shape: tuple[int | str, ...]  # symbolic: "N" slices of the split, "H" x "W" pixels, or a fixed size
    dtype: str  # NumPy dtype name, or UTF8 for variable-length UTF-8 strings
    values: str  # the value range as text ("in [0, 1]", ">= 0"); the checks live in verify and the Dataset
    chunks: tuple[int | str, ...]  # symbolic chunk shape
    compressed: bool  # stored with COMPRESSION (chunks compressed by the builder's workers) or raw
    description: str
    croissant: str  # Croissant dataType of the field
    unit: str = ""  # physical unit of the values, if any
    attrs: tuple[tuple[str, tuple[str, ...]], ...] = ()  # dataset attributes: (name, UTF-8 string values)
    max_bytes: int = MAX_TEXT_BYTES  # strings only: the longest stored string, checked before reading it
    announced_by: str = ""  # optional dataset: the root attribute that is 1 when it is present ("" = required)

    def type_text(self) -> str:
        """dtype, unit and value range in words: 'float32 in [0, 1]', 'float32 in mm (> 0)'."""
        dtype = "UTF-8 string" if self.dtype == UTF8 else self.dtype
        return " ".join(p for p in (dtype, f"in {self.unit}" if self.unit else "", self.values) if p)

    def record_description(self) -> str:
        """One record's field (a slice's shape without N; a volume's whole shape) in words, for croissant.json."""
        record = self.shape[1:] if self.shape[:1] == ("N",) else self.shape
        shape = shape_text(record) + " " if record else ""
        return f"{shape}{self.type_text()}: {self.description}"


@dataclass(frozen=True)
class AttributeSpec:
    """One root attribute: ``kind`` "integer" (one integer in [``minimum``, ``maximum``]), "text" (one UTF-8
    string) or "modalities" (a 1-D array of modality names); ``required`` False: absent reads as ``minimum``."""

    name: str
    kind: str
    description: str
    minimum: int | None = None
    maximum: int | None = None
    required: bool = True


@dataclass(frozen=True)
class ArrayAttributeSpec:
    """One attribute of every volume case group: a small fixed-shape numeric array."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # NumPy dtype name
    description: str
    unit: str = ""

    def type_text(self) -> str:
        """Shape, dtype and unit in words: '(3,) float64 in mm'."""
        return " ".join(p for p in (shape_text(self.shape), self.dtype, f"in {self.unit}" if self.unit else "") if p)


DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec("source", ("N", 4, "H", "W"), "float32", "in [0, 1]", (1, 4, "H", "W"), True,
                f"{', '.join(MODALITIES)}, each normalised in the brain mask", "sc:Float",
                attrs=(("modalities", MODALITIES),)),
    DatasetSpec("fused", ("N", 1, "H", "W"), "float32", "in [0, 1]", (1, 1, "H", "W"), True,
                "the fused image of the fusion inputs", "sc:Float"),
    DatasetSpec("label", ("N", "H", "W"), "uint8", "in {0, 1, 2, 3}", (1, "H", "W"), True,
                "canonical tumour labels (0 background, 1 NCR, 2 ED, 3 ET)", "sc:Integer"),
    DatasetSpec("case_id", ("N",), UTF8, "", (256,), False,
                "patient / case identifier of the source release", "sc:Text"),
    DatasetSpec("slice_index", ("N",), "int32", ">= 0", (256,), False,
                "axial index z of the slice in the case's volume", "sc:Integer"),
    DatasetSpec("spacing", ("N", 3), "float32", "(> 0)", (256, 3), False,
                "dy, dx, dz = the pixel size along H and W after the crop/resize and the volume's slice "
                "thickness (consecutive slice_index values are dz apart), for distances such as HD95 in mm",
                "sc:Float", unit="mm"),
    DatasetSpec("text", ("N",), UTF8, f"(at most {MAX_DESCRIPTION_BYTES} bytes)", (256,), False,
                "a description of the slice (regions, areas in mm², location, relation, conspicuous modality; "
                "generated from the label map and sources, or a report supplied with --reports)", "sc:Text",
                max_bytes=MAX_DESCRIPTION_BYTES, announced_by=TEXT_ATTRIBUTE),
)

ROOT_ATTRIBUTES: tuple[AttributeSpec, ...] = (
    AttributeSpec("format_version", "integer", "the schema version of the file"),
    AttributeSpec("fusion_inputs", "modalities", "the modalities fused into `fused`, in order"),
    AttributeSpec("fusion_method", "text", "the fusion rule, or the trained fusion network, that made `fused`"),
    AttributeSpec("source_dataset", "text", "the release the slices come from"),
    AttributeSpec("label_scheme", "text", "the label values and the release scheme they were mapped from"),
    AttributeSpec("builder_version", "text", "the fuse4seg version that wrote the file"),
    AttributeSpec("created", "text", "ISO-8601 UTC build time (SOURCE_DATE_EPOCH when set)"),
    AttributeSpec("slice_size", "integer", "the `--size` crop-and-resize rule in pixels, 0 when slices keep the "
                  "volume size; `fuse4seg fuse` applies the same rule to new cases", minimum=0),
    AttributeSpec("volumes", "integer", "1 when the file holds the volumetric layout `/volumes` (`--volumes`), "
                  "else 0", minimum=0, maximum=1, required=False),
    AttributeSpec(TEXT_ATTRIBUTE, "integer", "1 when every split group holds the slice descriptions `text`, else 0",
                  minimum=0, maximum=1, required=False),
)

#: The datasets of every /volumes/<split>/<case_id> group. ``fused`` applies the build's rule to each
#: axial plane of the cropped sources (the rules are 2-D; mean and max are voxelwise anyway).
VOLUME_DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec("source", (4, "D", "H", "W"), "float32", "in [0, 1]", (1, "d", "h", "w"), True,
                f"{', '.join(MODALITIES)}, each normalised in the brain mask (as the slices), cropped to the "
                "brain box, native voxel grid", "sc:Float", attrs=(("modalities", MODALITIES),)),
    DatasetSpec("fused", (1, "D", "H", "W"), "float32", "in [0, 1]", (1, "d", "h", "w"), True,
                "the fusion rule applied to each axial plane of the fusion inputs", "sc:Float"),
    DatasetSpec("label", ("D", "H", "W"), "uint8", "in {0, 1, 2, 3}", ("d", "h", "w"), True,
                "canonical tumour labels (0 background, 1 NCR, 2 ED, 3 ET)", "sc:Integer"),
)

#: The attributes of every /volumes/<split>/<case_id> group: where the crop sits in the release volume.
VOLUME_ATTRIBUTES: tuple[ArrayAttributeSpec, ...] = (
    ArrayAttributeSpec("box", (3, 2), "int64", "[[x0, x1], [y0, y1], [z0, z1]], half-open voxel ranges of the "
                       "crop in the original volume: source[:, d, h, w] = volume[:, x0 + h, y0 + w, z0 + d]"),
    ArrayAttributeSpec("shape", (3,), "int64", "(X, Y, Z) voxels of the original volume"),
    ArrayAttributeSpec("affine", (4, 4), "float64", "the original volume's NIfTI affine, voxel (x, y, z) to "
                       "world mm (the crop's is this times a translation by (x0, y0, z0))"),
    ArrayAttributeSpec("spacing", (3,), "float64", "voxel size along x, y, z (H, W, D)", unit="mm"),
)


def shape_text(shape: tuple[int | str, ...]) -> str:
    """A (symbolic) shape as Python prints a tuple: ("N", 4) -> '(N, 4)', ("N",) -> '(N,)'."""
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def resolve(shape: tuple[int | str, ...], sizes: dict[str, int]) -> tuple[int, ...]:
    """A symbolic shape with its symbols replaced by ``sizes`` ({"N": .., "H": .., "W": .., "D": ..}); a lower-case
    chunk symbol ("d", "h", "w") is min(VOLUME_CHUNK, its upper-case size)."""
    return tuple(d if isinstance(d, int) else sizes[d] if d.isupper() else min(VOLUME_CHUNK, sizes[d.upper()])
                 for d in shape)


def split_datasets(root_values: dict[str, object]) -> tuple[DatasetSpec, ...]:
    """The datasets of every split group of a file with these root attributes (or their values): the required
    ones and each optional one whose announcing attribute is 1 (absent reads as 0)."""
    return tuple(d for d in DATASETS if not d.announced_by or int(root_values.get(d.announced_by, 0)) == 1)


def card_file_lines(root_values: dict[str, object]) -> list[str]:
    """Markdown bullet lines describing brats_fuse.h5 for the dataset card; ``root_values`` are the
    written root attributes, shown beside their descriptions."""
    groups = ", ".join(f"`{s}`" for s in SPLITS)
    lines = [f"- `{H5_NAME}` (HDF5 format {FORMAT_VERSION}): groups {groups}, each with the datasets"]
    lines += [f"  - `{d.name}` {shape_text(d.shape)} {d.type_text()}: {d.description}"
              for d in split_datasets(root_values)]
    lines.append("  and the root attributes")
    for a in ROOT_ATTRIBUTES:
        value = root_values[a.name]
        shown = ", ".join(value) if isinstance(value, (tuple, list)) else value
        lines.append(f"  - `{a.name}` ({shown}: {a.description})")
    if root_values.get("volumes"):
        lines.append(f"  and the group `/{VOLUMES_GROUP}/<split>/<case_id>` per case of each split, with the datasets")
        lines += [f"  - `{d.name}` {shape_text(d.shape)} {d.type_text()}: {d.description}" for d in VOLUME_DATASETS]
        lines.append("  and the attributes")
        lines += [f"  - `{a.name}` {a.type_text()}: {a.description}" for a in VOLUME_ATTRIBUTES]
    return lines
