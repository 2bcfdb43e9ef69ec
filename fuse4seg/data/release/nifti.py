"""Read one NIfTI file with every size it claims checked before any voxel data is read (:func:`load_nifti`).

A NIfTI header states the image's dimensions, voxel type and where the voxels start; nibabel trusts
them and allocates what they claim (a 280 KB file claiming 1000^3 voxels costs 2 GB before the read
fails, and an extension claiming 2 GB is allocated while the header is parsed). Here the header is
parsed from its first bytes and checked first: dimensions, voxel sizes (finite, :data:`MAX_VOXEL_MM`), a
numeric voxel type, the voxel count against the caller's limit (:data:`MAX_VOLUME_VOXELS`, :data:`MAX_SLICE_PIXELS`), the header and
extensions against :data:`MAX_HEADER_BYTES`, and for ``.nii`` the file size. Only then are exactly
``vox_offset + voxels * bytes per voxel`` bytes read, in chunks, so what is allocated grows with the
bytes actually there: a truncated ``.nii.gz`` fails after reading what it has, and a gzip stream that
decompresses to more than the header claims is never read past the claim (a gzip bomb is bounded by
the claim, which the voxel limit bounds). nibabel then parses those bytes (its scaling, byte order and
memory layout unchanged).
"""

from __future__ import annotations

import io
import math
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import Opener
from nibabel.spatialimages import HeaderDataError

from fuse4seg.errors import DataError
from fuse4seg.io import one_line

#: Most voxels of a 3-D volume: 512^3 = 134M. A BraTS volume is 240 x 240 x 155 = 8.9M voxels and clinical
#: MR volumes stay below 512^3 even at 0.5 mm; at the limit a float32 volume is 512 MiB.
MAX_VOLUME_VOXELS: int = 512**3
#: Most pixels of a 2-D slice: 2^26 = 8192 x 8192, 32 times a 1024^2 photograph; 256 MiB as float32.
MAX_SLICE_PIXELS: int = 1 << 26
#: Most bytes before the voxel data (the 348- or 540-byte header and its extensions, which are KBs in
#: practice): a header may not make the reader allocate more than this for them.
MAX_HEADER_BYTES: int = 16 << 20
#: Largest voxel edge (mm) a header may state (pixdim of the image's dimensions): MR voxels are 0.1 to 10 mm; a
#: metre is no voxel of a brain image, and NaN, inf or 1e38 (an overlong float) would turn every distance (HD95
#: in mm, a case's spacing) into NaN or inf.
MAX_VOXEL_MM: float = 1000.0
#: What nibabel and the decompressor raise for a corrupt or truncated file.
CORRUPT_NIFTI_ERRORS = (EOFError, OSError, ValueError, zlib.error, HeaderDataError,
                        nib.filebasedimages.ImageFileError)
#: Voxel types read: integers and reals (NumPy kinds); complex, RGB and nibabel's void types are refused.
NUMERIC_KINDS: str = "iuf"
#: The largest NIfTI header (NIfTI-2, 540 bytes) and the 4 extension-flag bytes after it.
_HEAD_BYTES: int = 544
#: Bytes read per call while reading the file: what one read may allocate beyond the data present.
_CHUNK_BYTES: int = 8 << 20
#: What a file of the wrong dimensionality is told it should be, by ``ndim``.
_EXPECTED: dict[int, str] = {2: "a 2-D slice (H, W)", 3: "a 3-D volume"}


def _read_at_most(stream: io.IOBase, count: int, into: io.BytesIO) -> int:
    """Append up to ``count`` bytes of ``stream`` (fewer at its end) to ``into``, in chunks so that memory
    follows the data present, not ``count``; returns the size of ``into``."""
    remaining = count
    while remaining > 0:
        chunk = stream.read(min(_CHUNK_BYTES, remaining))
        if not chunk:
            break
        into.write(chunk)
        remaining -= len(chunk)
    return into.tell()


def _image_class(head: bytes) -> type[nib.Nifti1Image] | None:
    """The nibabel image class whose header ``head`` (the file's first bytes) holds, as nibabel sniffs it."""
    for klass in (nib.Nifti2Image, nib.Nifti1Image):
        if klass.header_class.may_contain_header(head):
            return klass
    return None


def _checked_header(head: bytes, what: str, ndim: int, max_voxels: int
                    ) -> tuple[type[nib.Nifti1Image], tuple[int, ...], int, int]:
    """(image class, shape, data offset, data bytes) from the first bytes of a file, after every check on them;
    DataError (``what`` names the file) for a header that is not NIfTI, bad, or claims too much."""
    klass = _image_class(head)
    if klass is None:
        raise DataError(f"{what} is corrupt or unreadable (not a NIfTI-1 or NIfTI-2 header)")
    header = klass.header_class(head[:klass.header_class.sizeof_hdr], check=False)
    dims = [int(d) for d in header["dim"]]
    if not 1 <= dims[0] <= 7:
        raise DataError(f"{what} is corrupt or unreadable (header dim[0] = {dims[0]}, not a dimension count 1-7)")
    shape = tuple(dims[1:dims[0] + 1])
    if min(shape) < 1:
        raise DataError(f"{what} is corrupt or unreadable (header dimensions {shape}: each must be >= 1)")
    kept = len(shape)
    while kept > ndim and shape[kept - 1] == 1:  # writers store a volume as (X, Y, Z, 1), a slice as (H, W, 1)
        kept -= 1
    if kept != ndim:
        raise DataError(f"{what} is {kept}-D, expected {_EXPECTED.get(ndim, f'a {ndim}-D image')}")
    spacing = [float(v) for v in header["pixdim"][1:kept + 1]]
    if not all(math.isfinite(v) and abs(v) <= MAX_VOXEL_MM for v in spacing):
        raise DataError(f"{what} is corrupt or unreadable (header voxel size {', '.join(f'{v:g}' for v in spacing)} "
                        f"mm: each must be finite and at most {MAX_VOXEL_MM:g} in size)")
    try:
        dtype = header.get_data_dtype()
    except KeyError:
        raise DataError(f"{what} is corrupt or unreadable (unknown NIfTI datatype code "
                        f"{int(header['datatype'])})") from None
    if dtype.kind not in NUMERIC_KINDS:
        raise DataError(f"{what} has voxel type {header.get_value_label('datatype')}; only integer and real "
                        "voxels are read (not complex, RGB or binary)")
    voxels = math.prod(shape)
    if voxels > max_voxels:
        raise DataError(f"{what} is too large: its header claims {' x '.join(map(str, shape))} = {voxels} voxels, "
                        f"over the limit of {max_voxels}")
    offset = float(header["vox_offset"])
    if not (math.isfinite(offset) and 0 <= offset <= MAX_HEADER_BYTES):
        raise DataError(f"{what} is corrupt or unreadable (header puts the voxel data at byte {offset:g}, outside "
                        f"[0, {MAX_HEADER_BYTES}])")
    # nibabel moves an offset inside the header (old writers leave 0) to just past it, as it reads.
    offset = max(int(offset), klass.header_class.single_vox_offset)
    return klass, shape, offset, voxels * dtype.itemsize


def load_nifti(path: str | os.PathLike, ndim: int, max_voxels: int, what: str | None = None,
               dtype: np.dtype | type | None = None) -> tuple[nib.Nifti1Image, np.ndarray]:
    """(image, voxel array) of one ``.nii`` / ``.nii.gz`` file (NIfTI-1 or NIfTI-2) holding an ``ndim``-D image.

    Trailing dimensions of size 1 beyond ``ndim`` are dropped ((X, Y, Z, 1) is a 3-D volume). The array has
    the header's scaling applied (the stored type when there is none; ``dtype``: converted by nibabel) and
    nibabel's layout (Fortran order); the image gives the header and affine (its own data proxy is closed:
    the voxels are in the array). Every problem is a one-line DataError beginning with ``what`` (default:
    the path), e.g. ``"{what} is corrupt or unreadable (...)"``; nothing larger than ``max_voxels`` voxels
    (see :data:`MAX_VOLUME_VOXELS`, :data:`MAX_SLICE_PIXELS`) or than the bytes present is allocated (at
    the peak, the file's decompressed bytes and the array are held side by side).
    """
    path = Path(path)
    what = str(path) if what is None else what
    try:
        raw = io.BytesIO()  # the file's bytes up to the end of the voxel data, grown as they are read
        with Opener(str(path), "rb") as stream:
            _read_at_most(stream, _HEAD_BYTES, raw)
            klass, shape, offset, nbytes = _checked_header(raw.getvalue(), what, ndim, max_voxels)
            expected = offset + nbytes
            claim = f"its header's {' x '.join(map(str, shape))} voxels from byte {offset} need {expected}"
            if not path.name.lower().endswith(".gz") and path.stat().st_size < expected:
                raise DataError(f"{what} is corrupt or unreadable (truncated: {path.stat().st_size} bytes, but {claim})")
            if raw.tell() > expected:  # a tiny image ends inside the bytes read for the header
                raw.truncate(expected)
                raw.seek(expected)
            size = _read_at_most(stream, expected - raw.tell(), raw)
        if size < expected:
            raise DataError(f"{what} is corrupt or unreadable (truncated: decompresses to {size} bytes, but {claim})")
        raw.seek(0)
        image = klass.from_stream(raw)
        data = np.asanyarray(image.dataobj, dtype=dtype)
        raw.close()  # frees the file's bytes (the image keeps the stream); the voxels are in ``data``
    except CORRUPT_NIFTI_ERRORS as exc:
        raise DataError(f"{what} is corrupt or unreadable ({one_line(exc)})") from None
    return image, data[(Ellipsis, *(0,) * (data.ndim - ndim))]
