"""Read and validate BraTS release directories (2020, 2021, 2023+ GLI) into canonical, normalised arrays.

Naming schemes (detected from the case directory names):

- ``brats2020``: ``BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair,seg}.nii.gz``
  (also 2018/2019 ``Brats18_CBICA_AAB_1``-style names), labels {0, 1 NCR/NET, 2 ED, 4 ET};
- ``brats2021``: ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``, labels {0, 1, 2, 4};
- ``brats2023``: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``
  (any BraTS 2023+ cohort tag: GLI, MEN, MET, PED, SSA), labels {0, 1 NETC, 2 SNFH, 3 ET}.

Files may be ``.nii.gz`` or ``.nii``; validation sets have no ``seg`` file. Each is read by
:func:`fuse4seg.data.release.nifti.load_nifti`, which checks the sizes its header claims before reading voxels. Inside fuse4seg labels
are canonical: 0 background, 1 NCR, 2 ED, 3 ET (BraTS 2020/2021 label 4 becomes 3).

Intensity normalisation (:func:`normalise_modality`), applied to each modality separately:

1. the brain mask is the set of voxels where *any* of the four modalities is > 0 (BraTS volumes are
   skull-stripped, so the background is exactly 0);
2. ``lo`` and ``hi`` are the 0.5th and 99.5th percentiles (NumPy's linear interpolation) of this
   modality's values over the brain mask;
3. brain voxels become ``clip((v - lo) / (hi - lo), 0, 1)``; voxels outside the mask become 0;
   if ``hi == lo`` (a constant modality), brain voxels above ``lo`` become 1 and the rest 0.

(implemented in :mod:`fuse4seg.data.release.intensity`: integer volumes through a histogram and a table of
every value, never cast; the result equals the cast-first float32 computation bit for bit).
Loaded volumes keep the NIfTI files' Fortran memory order per modality.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from fuse4seg.conventions import MODALITIES
from fuse4seg.data.release.intensity import (
    normalise_by_table,
    normalise_modality,  # noqa: F401 (re-exported: part of this module's interface)
    normalise_values,
    take_chunked,
    unsigned_codes,
    uses_table,
)
from fuse4seg.data.release.nifti import (
    CORRUPT_NIFTI_ERRORS,  # noqa: F401 (re-exported: part of this module's interface)
    MAX_VOLUME_VOXELS,
    load_nifti,
)
from fuse4seg.errors import DataError

SCHEMES: tuple[str, ...] = ("brats2020", "brats2021", "brats2023")

#: Case directory name patterns, one per scheme (full match).
CASE_PATTERNS: dict[str, re.Pattern[str]] = {
    "brats2020": re.compile(r"(BraTS20_(Training|Validation|Testing)_\d+|Brats1[789]_\w+)"),
    "brats2021": re.compile(r"BraTS2021_\d+"),
    "brats2023": re.compile(r"BraTS-[A-Z]+-\d+-\d+"),
}

#: File suffix of each canonical modality (and the label map) per scheme.
FILE_SUFFIXES: dict[str, dict[str, str]] = {
    "brats2020": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}

#: Release label value -> canonical label value, per scheme.
LABEL_MAPS: dict[str, dict[int, int]] = {
    "brats2020": {0: 0, 1: 1, 2: 2, 4: 3},
    "brats2021": {0: 0, 1: 1, 2: 2, 4: 3},
    "brats2023": {0: 0, 1: 1, 2: 2, 3: 3},
}

#: Largest absolute difference (mm) tolerated between the affines of one case's files.
AFFINE_ATOL_MM: float = 1e-3

_EXTENSIONS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one BraTS case: modality name ("t1","t1ce","t2","flair","seg") -> path."""

    case_id: str
    scheme: str
    directory: Path
    paths: dict[str, Path]


@dataclass
class BraTSCase:
    """One loaded case: images (4, X, Y, Z) float32 in [0, 1] (MODALITIES order, each a Fortran-ordered
    block as in the NIfTI files), label (X, Y, Z) uint8 {0..3}, brain mask (X, Y, Z) bool."""

    case_id: str
    scheme: str
    images: np.ndarray
    label: np.ndarray | None
    brain_mask: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header


def detect_scheme(case_name: str) -> str | None:
    """The naming scheme a case directory name belongs to, or None if it is not a BraTS case name."""
    for scheme, pattern in CASE_PATTERNS.items():
        if pattern.fullmatch(case_name):
            return scheme
    return None


def _find_file(directory: Path, case_id: str, suffix: str) -> Path | None:
    """The ``.nii.gz`` or ``.nii`` file ``case_id + suffix`` in ``directory``; None if absent."""
    found = [directory / f"{case_id}{suffix}{ext}" for ext in _EXTENSIONS]
    found = [p for p in found if p.is_file()]
    if len(found) > 1:
        raise DataError(f"{case_id}: both {found[0].name} and {found[1].name} exist; keep one of them")
    return found[0] if found else None


def find_case(case_dir: str | Path) -> CaseFiles:
    """Locate the four modality files (and the label map, if any) of one case directory."""
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise DataError(f"case directory {case_dir} does not exist")
    case_id = case_dir.name
    scheme = detect_scheme(case_id)
    if scheme is None:
        raise DataError(
            f"{case_dir} is not a BraTS case directory (expected a name like BraTS20_Training_001, "
            "BraTS2021_00000 or BraTS-GLI-00000-000)"
        )
    paths: dict[str, Path] = {}
    for name, suffix in FILE_SUFFIXES[scheme].items():
        path = _find_file(case_dir, case_id, suffix)
        if path is None and name == "seg":
            path = _misnamed_seg(case_dir)
        if path is None and name != "seg":
            raise DataError(f"{case_id}: {name} file {case_id}{suffix}.nii.gz is missing")
        if path is not None:
            paths[name] = path
    return CaseFiles(case_id=case_id, scheme=scheme, directory=case_dir, paths=paths)


def _case_dirs(root: Path, max_depth: int = 3) -> list[Path]:
    """Case-named directories at the shallowest level (1..max_depth) below ``root`` that has any.

    Downloads nest cases under wrapper folders (e.g. Kaggle's
    ``BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/BraTS20_Training_001``).
    """
    level = [root]
    for _depth in range(max_depth):
        level = sorted(q for p in level for q in p.iterdir() if q.is_dir() and not q.name.startswith("."))
        cases = [p for p in level if detect_scheme(p.name)]
        if cases:
            return cases
    return []


def _misnamed_seg(case_dir: Path) -> Path | None:
    """The one NIfTI file in ``case_dir`` whose name contains "seg" but not the case id, if exactly one.

    Real releases have such files: BraTS 2020's BraTS20_Training_355 ships ``W39_1998.09.19_Segm.nii``.
    """
    found = [p for p in case_dir.iterdir() if p.is_file() and "seg" in p.name.lower()
             and p.name.endswith(_EXTENSIONS) and not p.name.startswith(case_dir.name)]
    return found[0] if len(found) == 1 else None


def find_cases(root: str | Path) -> list[CaseFiles]:
    """All cases of a BraTS release directory, sorted by case id; DataError if empty or not BraTS."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"BraTS directory {root} does not exist")
    if not root.is_dir():
        raise DataError(f"BraTS directory {root} is a file, not a directory")
    if detect_scheme(root.name):
        return [find_case(root)]
    if not any(root.iterdir()):
        raise DataError(f"BraTS directory {root} is empty")
    dirs = _case_dirs(root)
    if not dirs:
        raise DataError(
            f"{root} contains no BraTS cases (expected subdirectories like BraTS20_Training_001, "
            "BraTS2021_00000 or BraTS-GLI-00000-000)"
        )
    cases = sorted((find_case(d) for d in dirs), key=lambda c: c.case_id)
    schemes = sorted({c.scheme for c in cases})
    if len(schemes) > 1:
        raise DataError(f"{root} mixes BraTS naming schemes ({', '.join(schemes)}); keep one release per directory")
    ids = [c.case_id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"{root}: case {dupes[0]} appears in more than one subdirectory")
    return cases


def _raise_unknown(values: np.ndarray, scheme: str, allowed: list[int]) -> None:
    """Raise the DataError for label values outside the scheme (at most five of them listed)."""
    shown = ", ".join(str(v.item()) for v in values[:5])
    raise DataError(f"unknown label values {shown} (the {scheme} scheme allows {', '.join(map(str, allowed))})")


def to_canonical_labels(label: np.ndarray, scheme: str) -> np.ndarray:
    """Map a release label map (any int/float array) to canonical uint8 {0,1,2,3}; DataError on unknown values."""
    if scheme not in LABEL_MAPS:
        raise DataError(f"unknown BraTS scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    label = np.asarray(label)
    if label.dtype.kind == "f":
        if not np.isfinite(label).all() or not np.array_equal(label, np.round(label)):
            bad = label[~np.isfinite(label) | (label != np.round(label))][:3]
            raise DataError(f"label values must be integers, found {', '.join(map(str, bad))}")
    elif label.dtype.kind not in "iub":
        raise DataError(f"label map has non-numeric dtype {label.dtype}")
    allowed = sorted(LABEL_MAPS[scheme])
    if label.size == 0:
        return np.zeros(label.shape, dtype=np.uint8)
    low, high = label.min(), label.max()
    if low < 0 or high > allowed[-1]:
        values = np.unique(label[(label < 0) | (label > allowed[-1])])
        _raise_unknown(values, scheme, allowed)
    if label.dtype.kind == "f":
        label = label.astype(np.intp)
    # A lookup table turns the check and the mapping into one vectorised gather; 1- and 2-byte
    # labels (as stored) index a table of every bit pattern, gathered in cache-sized chunks.
    small = uses_table(label.dtype)
    lut = np.full(2 ** (8 * label.itemsize) if small else allowed[-1] + 1, 255, dtype=np.uint8)
    for value, canonical in LABEL_MAPS[scheme].items():
        lut[value] = canonical
    out = take_chunked(lut, unsigned_codes(label)) if small else lut[label]
    unknown = out == 255
    if unknown.any():
        _raise_unknown(np.unique(label[unknown]), scheme, allowed)
    return out


def from_canonical_labels(label: np.ndarray, scheme: str) -> np.ndarray:
    """Map a canonical label map {0,1,2,3} back to the release's values (uint8; 3 -> 4 for 2020/2021)."""
    if scheme not in LABEL_MAPS:
        raise DataError(f"unknown BraTS scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() > 3):
        raise DataError(f"canonical labels must lie in 0..3, found {label.min()}..{label.max()}")
    lut = np.zeros(4, dtype=np.uint8)
    for value, canonical in LABEL_MAPS[scheme].items():
        lut[canonical] = value
    return lut[label.astype(np.int64)]


def _load_volume(case: CaseFiles, name: str) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Load one file of a case as (image, 3-D array), sizes checked before reading (:func:`load_nifti`);
    DataError naming the case and file if unreadable, not 3-D or too large."""
    path = case.paths[name]
    return load_nifti(path, ndim=3, max_voxels=MAX_VOLUME_VOXELS, what=f"{case.case_id}: {name} file {path.name}")


def _check_geometry(case: CaseFiles, name: str, img: nib.Nifti1Image, data: np.ndarray,
                    shape: tuple[int, ...], affine: np.ndarray) -> None:
    """Raise DataError if one file's shape or affine differs from the case's T1 file."""
    path = case.paths[name]
    if data.shape != shape:
        raise DataError(
            f"{case.case_id}: {name} file {path.name} has shape {data.shape}, but the t1 file has {shape}"
        )
    if not np.allclose(img.affine, affine, rtol=0.0, atol=AFFINE_ATOL_MM):
        diff = float(np.abs(img.affine - affine).max())
        raise DataError(
            f"{case.case_id}: {name} file {path.name} has a different affine from the t1 file "
            f"(max difference {diff:.4g} mm)"
        )


def load_case(case: CaseFiles, require_label: bool = True) -> BraTSCase:
    """Load, validate and normalise one case: images (4, X, Y, Z) float32 [0, 1], label uint8 {0..3}."""
    if require_label and "seg" not in case.paths:
        suffix = FILE_SUFFIXES[case.scheme]["seg"]
        raise DataError(f"{case.case_id}: seg file {case.case_id}{suffix}.nii.gz is missing")
    t1_img, t1 = _load_volume(case, "t1")
    shape, affine = t1.shape, np.asarray(t1_img.affine, dtype=np.float64)
    # Each modality is a Fortran-ordered (X, Y, Z) block, the NIfTI files' own layout: no transposing
    # copy, and an axial slice images[m, :, :, z] is contiguous.
    images = np.empty((len(MODALITIES), *shape[::-1]), dtype=np.float32).transpose(0, 3, 2, 1)
    brain_mask = np.zeros(shape, dtype=bool, order="F")
    integer_volumes: dict[int, np.ndarray] = {}
    for index, name in enumerate(MODALITIES):
        img, data = (t1_img, t1) if name == "t1" else _load_volume(case, name)
        _check_geometry(case, name, img, data, shape, affine)
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            bad = int(np.count_nonzero(~np.isfinite(data)))
            raise DataError(f"{case.case_id}: {name} file {case.paths[name].name} has {bad} non-finite voxels (NaN/Inf)")
        if uses_table(data.dtype):
            integer_volumes[index] = np.asfortranarray(data)  # normalised from the integers, never cast
            brain_mask |= integer_volumes[index] > 0
        else:
            images[index] = data  # the one cast to float32
            brain_mask |= images[index] > 0
        del data
    del t1
    for index in range(len(MODALITIES)):
        if index in integer_volumes:
            # Outside the mask every modality is <= 0, by the mask's definition.
            normalise_by_table(integer_volumes.pop(index), brain_mask, images[index], outside_nonpositive=True)
        else:
            normalise_values(images[index], brain_mask, images[index])
    label = None
    if "seg" in case.paths:
        seg_img, seg = _load_volume(case, "seg")
        _check_geometry(case, "seg", seg_img, seg, shape, affine)
        try:
            label = to_canonical_labels(seg, case.scheme)
        except DataError as exc:
            raise DataError(f"{case.case_id}: seg file {case.paths['seg'].name}: {exc}") from None
    return BraTSCase(
        case_id=case.case_id,
        scheme=case.scheme,
        images=images,
        label=label,
        brain_mask=brain_mask,
        affine=affine,
        header=t1_img.header,
    )
