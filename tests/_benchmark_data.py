"""Tiny synthetic BraTS releases for the benchmark/package/dataset tests (milliseconds to write).

Each case is a (24, 24, 10) BraTS 2021 layout case: a noisy ellipsoidal "brain" in four modalities
and a spherical tumour with labels 1 (core), 4 (enhancing shell) and 2 (oedema) around it. Case 0's
tumour is centred at z = 5 with radius 3, so its tumour slices are known.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (24, 24, 10)
MODALITY_FILES = ("t1", "t1ce", "t2", "flair")


def tumour_label(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    """BraTS 2021 labels of a spherical tumour: 1 inside 0.4 r, 4 up to 0.7 r, 2 up to r."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    dist = np.sqrt(((grid - np.asarray(centre)[:, None, None, None]) ** 2).sum(axis=0))
    label = np.zeros(shape, dtype=np.uint8)
    label[dist <= radius] = 2
    label[dist <= 0.7 * radius] = 4
    label[dist <= 0.4 * radius] = 1
    return label


def write_case(root: Path, index: int, seed: int = 0, tumour: bool = True) -> Path:
    """Write one BraTS2021_xxxxx case directory under ``root``; returns it."""
    rng = np.random.default_rng([seed, index])
    case_id = f"BraTS2021_{index:05d}"
    directory = root / case_id
    directory.mkdir(parents=True)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    brain = (grid**2).sum(axis=0) < 0.8
    centre = (12.0, 12.0, 5.0) if index == 0 else (rng.uniform(8, 16), rng.uniform(8, 16), rng.uniform(4, 6))
    label = tumour_label(SHAPE, centre, 3.0) * brain if tumour else np.zeros(SHAPE, np.uint8)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for k, name in enumerate(MODALITY_FILES):
        image = (200 + 100 * k + 40 * rng.standard_normal(SHAPE)) * brain + 300 * (label == 4) * (name == "t1ce")
        image += 250 * (label == 2) * (name == "flair")
        nib.save(nib.Nifti1Image(np.clip(image, 0, None).astype(np.int16), affine),
                 directory / f"{case_id}_{name}.nii.gz")
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), directory / f"{case_id}_seg.nii.gz")
    return directory


def write_release(root: Path, cases: int, seed: int = 0, empty: tuple[int, ...] = ()) -> Path:
    """Write a tiny BraTS 2021 release of ``cases`` cases (indices in ``empty`` without tumour)."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(cases):
        write_case(root, index, seed, tumour=index not in empty)
    return root


def build_small_package(root: Path) -> Path:
    """A package built under ``root`` from a 4-case tiny release: 16 x 16 slices, 3 per case, split 2/1/1 cases."""
    from fuse4seg.data.build.builder import build_benchmark

    build_benchmark(root / "package", brats=write_release(root / "brats", cases=4), size=16, slices_per_case=3,
                    split=(0.5, 0.25, 0.25), progress=False)
    return root / "package"
