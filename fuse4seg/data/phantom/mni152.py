"""The MNI152 (ICBM 2009c nonlinear symmetric) T1, GM and WM templates shipped in the nilearn wheel.

The phantom's anatomy: 197 x 233 x 189 voxels at 1 mm, uint8, skull-stripped T1 and tissue
probability maps. They are read with nibabel from nilearn's package data (no network) and cached once
per process and output scale.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from fuse4seg.errors import DataError

TEMPLATE_FILES: dict[str, str] = {
    name: f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz" for name in ("t1", "gm", "wm")
}


@dataclass(frozen=True)
class MNITemplate:
    """MNI152 tissue maps, float32 in [0, 1], block-averaged to ``step`` mm and smoothed for the target scale."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    step: int  # template voxel size in mm (the templates are 1 mm; coarse outputs use 2 mm or more)
    origin: np.ndarray  # world mm of template voxel (0, 0, 0); the template axes are +x, +y, +z
    centre: np.ndarray  # world mm of the brain's bounding-box centre
    bbox: tuple[np.ndarray, np.ndarray]  # world mm min/max of the brain
    sites: np.ndarray  # (N, 3) world mm of deep white-matter voxels (tumour centres) with (N,) depth mm
    depth: np.ndarray


def template_path(name: str) -> Path:
    """Path of the MNI152 ``t1``/``gm``/``wm`` template inside the installed nilearn package."""
    # find_spec locates the wheel without importing nilearn.datasets (which pulls in pandas and sklearn: ~4 s).
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("nilearn is not installed: the phantom needs the MNI152 templates its wheel ships")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / TEMPLATE_FILES[name]
    if not path.is_file():
        raise DataError(f"MNI152 template {path} is missing from the nilearn installation")
    return path


@lru_cache(maxsize=4)
def load_template(scale: float) -> MNITemplate:
    """Load the templates once per process and scale; pre-smooth them to avoid aliasing on coarse grids."""
    maps = {}
    for name in TEMPLATE_FILES:
        img = nib.load(template_path(name))
        # nibabel returns Fortran-ordered arrays; C order makes map_coordinates about 4x faster here.
        maps[name] = np.ascontiguousarray(np.asanyarray(img.dataobj), dtype=np.float32) / np.float32(255.0)
    affine = img.affine
    # The T1 template is skull-stripped: its support is the brain (GM, WM and CSF).
    brain = maps["t1"] > 0.05
    origin = affine[:3, 3].astype(np.float64)
    idx = np.argwhere(brain)
    lo, hi = origin + idx.min(axis=0), origin + idx.max(axis=0)
    # Tumour sites: white matter at least 15 mm from the brain surface (distance on a 2 mm grid).
    depth = ndi.distance_transform_edt(brain[::2, ::2, ::2]) * 2.0
    site_idx = np.argwhere((depth >= 15.0) & (maps["wm"][::2, ::2, ::2] > 0.5))
    sites = origin + site_idx * 2.0
    # Anti-aliasing for coarse grids: block-average to ``step`` mm (cheap), then a Gaussian that brings the
    # total blur to sigma = (1/scale - 1)/2 mm (a box of width s mm has variance (s^2 - 1)/12 on a 1 mm grid).
    step = max(1, int(0.5 / scale))
    if step > 1:
        maps = {k: _block_mean(v, step) for k, v in maps.items()}
    sigma = np.sqrt(max((0.5 * (1.0 / scale - 1.0)) ** 2 - (step**2 - 1) / 12.0, 0.0)) / step
    if sigma > 0.1:
        maps = {k: ndi.gaussian_filter(v, sigma) for k, v in maps.items()}
    maps = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in maps.items()}
    return MNITemplate(
        t1=maps["t1"], gm=maps["gm"], wm=maps["wm"], step=step, origin=origin + (step - 1) / 2.0,
        centre=(lo + hi) / 2.0, bbox=(lo, hi), sites=sites, depth=depth[tuple(site_idx.T)],
    )


def _block_mean(volume: np.ndarray, step: int) -> np.ndarray:
    """Mean over non-overlapping step^3 blocks (trailing partial blocks dropped): (X//step, Y//step, Z//step)."""
    shape = tuple(n // step for n in volume.shape)
    out = np.zeros(shape, dtype=np.float32)
    for i in range(step):
        for j in range(step):
            for k in range(step):
                out += volume[i::step, j::step, k::step][: shape[0], : shape[1], : shape[2]]
    return out / np.float32(step**3)
