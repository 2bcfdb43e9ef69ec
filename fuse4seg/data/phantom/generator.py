"""Phantom BraTS: a synthetic release in real BraTS layout built on the MNI152 (ICBM 2009c) templates.

Each case warps the real MNI152 T1, GM and WM templates shipped in the nilearn wheel (CSF = brain mask
minus GM and WM) with a smooth random elastic field plus the mass effect of one or two tumours, then
draws the four modalities from tissue-weighted contrasts. Tumours are noise-perturbed level sets
(a rotated anisotropic distance whose radius is modulated by smooth random noise), each with a
necrotic core (NCR), an enhancing rim (ET) and surrounding oedema (ED) that spreads through GM/WM but
not CSF. Contrasts follow real MRI: ET is bright only in T1ce, NCR is dark in T1/T1ce and bright-ish
in T2, oedema is bright in FLAIR and T2 and slightly dark in T1, CSF is bright in T2 and dark in
FLAIR and T1. A smooth multiplicative bias field, Rician noise and a per-case intensity scale
follow; images are stored as int16 and labels as uint8 in the chosen release's label scheme.
Case ``i`` uses ``np.random.default_rng([seed, i])``, so a release is byte-identical for one seed
whatever the number of workers (nibabel writes gzip with mtime 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from fuse4seg.conventions import MODALITIES
from fuse4seg.data.phantom.mni152 import MNITemplate, load_template
from fuse4seg.data.release.brats import FILE_SUFFIXES, LABEL_MAPS, SCHEMES, from_canonical_labels
from fuse4seg.errors import ConfigError
from fuse4seg.io import atomic_dir
from fuse4seg.options import check_seed
from fuse4seg.parallel import ordered_map

#: Full-scale BraTS grid (voxels at 1 mm).
BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
NAMINGS: tuple[str, ...] = SCHEMES  # the release layouts a phantom can be written in

#: Mean intensity (arbitrary units, WM of T1 ~ 0.85) of each tissue/tumour class per modality.
#: Columns: CSF, GM, WM, ED (oedema), NCR (necrotic core), ET (enhancing tumour).
CONTRASTS: dict[str, tuple[float, ...]] = {
    "t1": (0.25, 0.60, 0.85, 0.50, 0.30, 0.55),
    "t1ce": (0.25, 0.58, 0.80, 0.48, 0.22, 1.35),
    "t2": (1.00, 0.55, 0.35, 0.85, 0.90, 0.60),
    "flair": (0.12, 0.60, 0.45, 1.00, 0.50, 0.70),
}
#: Typical stored intensity of each modality (multiplied per case by a random factor in [0.6, 1.6]).
BASE_SCALE: dict[str, float] = {"t1": 700.0, "t1ce": 900.0, "t2": 1000.0, "flair": 600.0}
_CSF, _GM, _WM, _ED, _NCR, _ET = range(6)


@dataclass
class PhantomCase:
    """One generated case: images (4, X, Y, Z) int16 as stored, canonical label (X, Y, Z) uint8, affine (4, 4).

    ``tissue`` (3, X, Y, Z) float32 holds the warped CSF/GM/WM fractions inside the brain (0 outside), if requested.
    """

    images: np.ndarray
    label: np.ndarray
    tissue: np.ndarray | None
    affine: np.ndarray


def grid_for_scale(scale: float) -> tuple[tuple[int, int, int], float]:
    """Output grid shape (voxels) and isotropic spacing (mm) for ``scale`` (1.0 -> 240 x 240 x 155 at 1 mm)."""
    shape = tuple(max(8, round(n * scale)) for n in BRATS_SHAPE)
    return shape, 1.0 / scale


def _affine(shape: tuple[int, ...], spacing: float, centre: np.ndarray) -> np.ndarray:
    """BraTS-like affine (x and y flipped, LPS storage order) whose grid centre lies at world ``centre`` mm."""
    axes = np.array([-spacing, -spacing, spacing])
    affine = np.diag([*axes, 1.0])
    affine[:3, 3] = centre - axes * (np.array(shape) - 1) / 2.0
    return affine


def _smooth_field(rng: np.random.Generator, coords: list[np.ndarray], spacing: float, count: int = 1) -> np.ndarray:
    """``count`` smooth random fields (count, X, Y, Z) float32, std ~1, on the grid given by 1-D world coords (mm).

    Separable Gaussian radial basis on knots ``spacing`` mm apart: three small matrix products, no per-voxel loop.
    """
    bases = []
    for c in coords:
        knots = np.arange(c.min() - spacing, c.max() + 1.5 * spacing, spacing)
        basis = np.exp(-0.5 * ((c[:, None] - knots[None, :]) / (0.6 * spacing)) ** 2).astype(np.float32)
        bases.append(basis / np.sqrt((basis**2).sum(axis=1).mean()))
    weights = rng.standard_normal((count, *(b.shape[1] for b in bases)), dtype=np.float32)
    field = weights @ bases[2].T  # (n, A, B, Z)
    field = bases[1] @ field  # (n, A, Y, Z)
    n, a, y, z = field.shape
    # The last product writes a C-ordered (n, X, Y*Z) block directly: no copy when callers reshape.
    return (bases[0] @ field.reshape(n, a, y * z)).reshape(n, len(coords[0]), y, z)


@dataclass(frozen=True)
class _Tumour:
    """One tumour: centre (world mm), rotation (3, 3), relative axes (3,), radii of oedema, core, necrosis (mm)."""

    centre: np.ndarray
    rotation: np.ndarray
    axes: np.ndarray
    r_ed: float
    r_core: float
    r_ncr: float


def _draw_tumour(rng: np.random.Generator, tpl: MNITemplate, pose: tuple[np.ndarray, np.ndarray]) -> _Tumour:
    """Random tumour centred at a deep white-matter site of the template, mapped into output world mm."""
    linear, shift = pose
    r_core = float(rng.uniform(11.0, 20.0))
    deep = np.flatnonzero(tpl.depth >= min(r_core + 5.0, tpl.depth.max()))
    site = tpl.sites[rng.choice(deep)] + rng.uniform(-1.0, 1.0, 3)
    centre = tpl.centre + shift + np.linalg.solve(linear, site - tpl.centre)
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    return _Tumour(
        centre=centre, rotation=rotation, axes=rng.uniform(0.8, 1.25, 3),
        r_ed=r_core * float(rng.uniform(1.5, 2.3)), r_core=r_core, r_ncr=r_core * float(rng.uniform(0.45, 0.7)),
    )


def _mass_effect(tumours: list[_Tumour], coords: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Displacement (mm, per axis, broadcastable) that samples anatomy nearer each tumour centre (pushes tissue out)."""
    disp = [np.zeros(1, np.float32)] * 3
    for t in tumours:
        strength = float(rng.uniform(0.15, 0.35))
        rel = [(c - t.centre[a]).astype(np.float32).reshape([-1 if i == a else 1 for i in range(3)])
               for a, c in enumerate(coords)]
        r2 = rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2
        falloff = strength * np.exp(-r2 / np.float32(2.0 * (1.5 * t.r_ed) ** 2))
        disp = [d - falloff * r for d, r in zip(disp, rel)]
    return disp


def _tumour_labels(tumours: list[_Tumour], coords: list[np.ndarray], healthy: np.ndarray,
                   brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Canonical labels (X, Y, Z) uint8 of the tumours on the work grid; oedema only in GM/WM, all inside the brain."""
    label = np.zeros(brain.shape, dtype=np.uint8)
    for t in tumours:
        half = 1.4 * t.r_ed * t.axes.max() + 4.0
        box = [np.flatnonzero(np.abs(c - t.centre[a]) <= half) for a, c in enumerate(coords)]
        if any(b.size == 0 for b in box):
            continue
        sl = tuple(slice(b[0], b[-1] + 1) for b in box)
        local = [c[s] for c, s in zip(coords, sl)]
        rel = np.stack(np.meshgrid(*[c - t.centre[a] for a, c in enumerate(local)], indexing="ij"), axis=-1)
        q = (rel.astype(np.float32) @ t.rotation.astype(np.float32)) / t.axes.astype(np.float32)
        dist = np.sqrt((q**2).sum(axis=-1))
        # Noise-perturbed level sets: the radius is modulated by lobulated (coarse) and ragged (fine) noise.
        coarse = _smooth_field(rng, local, 0.6 * t.r_core, count=2)
        fine = _smooth_field(rng, local, 4.0, count=1)[0]
        r_ed = t.r_ed * (1.0 + 0.22 * coarse[0] + 0.06 * fine)
        r_core = t.r_core * (1.0 + 0.18 * coarse[1] + 0.05 * fine)
        r_ncr = t.r_ncr * (1.0 + 0.18 * coarse[1] + 0.12 * fine)
        inside = brain[sl]
        ed = (dist < r_ed) & healthy[sl] & inside
        core = (dist < r_core) & inside
        # The enhancing rim keeps at least 3 mm so that the core is ring-enhancing, as in glioblastoma.
        ncr = core & (dist < np.minimum(r_ncr, r_core - 3.0))
        view = label[sl]
        view[ed & (view == 0)] = 2
        view[core & (view != 1)] = 3
        view[ncr] = 1
    return label


def case_id_for(naming: str, index: int) -> str:
    """Case directory name of phantom case ``index`` (0-based) in the naming scheme of a real release."""
    if naming == "brats2020":
        return f"BraTS20_Training_{index + 1:03d}"
    if naming == "brats2021":
        return f"BraTS2021_{index:05d}"
    return f"BraTS-GLI-{index:05d}-000"


def _warp_anatomy(tpl: MNITemplate, coords: list[np.ndarray], tumours: list[_Tumour], rng: np.random.Generator,
                  pose: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Sample the template at the deformed work-grid positions: (4, X, Y, Z) float32 CSF, GM, WM, T1 in [0, 1].

    Output point x samples the template at ``centre + L (x + m(x) - centre - shift) + e(x)``: pose (L, shift),
    tumour mass effect m and a smooth elastic field e (std 2.5 mm, correlation ~24 mm).
    """
    linear, shift = pose
    mass = _mass_effect(tumours, coords, rng)
    sample = _smooth_field(rng, coords, 24.0, count=3)
    sample *= np.float32(2.5)
    rel = [(c - tpl.centre[a] - shift[a]).astype(np.float32).reshape([-1 if i == a else 1 for i in range(3)]) + m
           for a, (c, m) in enumerate(zip(coords, mass))]
    for a in range(3):
        for b in range(3):
            sample[a] += np.float32(linear[a, b]) * rel[b]
        sample[a] += np.float32(tpl.centre[a] - tpl.origin[a])
    if tpl.step > 1:
        sample /= np.float32(tpl.step)
    out = np.zeros((4, *sample.shape[1:]), dtype=np.float32)
    # Interpolate only where brain can be: probe every f-th voxel (4 mm apart), dilate twice, expand to blocks.
    f = int(4.0 * len(coords[0]) / max(abs(coords[0][-1] - coords[0][0]), 1e-6))
    if f >= 2:
        probe = ndi.map_coordinates(tpl.t1, sample[:, ::f, ::f, ::f], order=1, prefilter=False) > 0.01
        probe = ndi.binary_dilation(probe, np.ones((3, 3, 3), bool), iterations=2)
        near = probe.repeat(f, 0).repeat(f, 1).repeat(f, 2)[tuple(slice(0, n) for n in sample.shape[1:])]
        idx = np.flatnonzero(near)
        points = sample.reshape(3, -1)[:, idx]
    else:
        idx, points = None, sample
    for i, volume in enumerate((tpl.gm, tpl.wm, tpl.t1), start=1):
        values = ndi.map_coordinates(volume, points, order=1, mode="constant", cval=0.0, prefilter=False)
        if idx is None:
            out[i] = values
        else:
            out[i].reshape(-1)[idx] = values
    # CSF = brain minus GM and WM; the warped skull-stripped T1 gives the brain (its darkest brain voxels are > 0.125).
    np.minimum(out[3] * np.float32(8.0), 1.0, out=out[0])
    out[0] -= out[1] + out[2]
    np.clip(out[0], 0.0, 1.0, out=out[0])
    return out


def _intensities(anatomy: np.ndarray, label: np.ndarray, brain: np.ndarray, coords: list[np.ndarray],
                 rng: np.random.Generator) -> np.ndarray:
    """Stored intensities of the four modalities at the brain voxels: (4, n_brain) int16 (>= 1)."""
    inside = np.flatnonzero(brain)
    csf, gm, wm, t1 = (a.reshape(-1)[inside] for a in anatomy)
    p_brain = csf + gm + wm
    # Piecewise-linear ramps of the real T1 template: its fine structure, re-mapped per modality below.
    ramp1, ramp2 = np.clip(t1 - 0.25, 0.0, 0.40) / 0.40, np.clip(t1 - 0.65, 0.0, 0.21) / 0.21
    # Soft (partial-volume) tumour class weights and texture, computed only around the tumours.
    weights = np.zeros((3, inside.size), dtype=np.float32)
    texture = np.zeros(inside.size, dtype=np.float32)
    idx = np.argwhere(label > 0)
    if idx.size:
        lo, hi = np.maximum(idx.min(axis=0) - 3, 0), idx.max(axis=0) + 4
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub = np.zeros(label.shape, dtype=bool)
        sub[sl] = True
        pick = sub.reshape(-1)[inside]
        local = [c[s] for c, s in zip(coords, sl)]
        # 0.6 mm partial-volume blur: at coarse scales the labels are coarse too, so it shrinks with the voxel.
        sigma = 0.6 / abs(float(coords[0][1] - coords[0][0]))
        for k, value in enumerate((2, 1, 3)):
            soft = ndi.gaussian_filter((label[sl] == value).astype(np.float32), sigma)
            weights[k, pick] = soft[brain[sl]]
        texture[pick] = 0.1 * _smooth_field(rng, local, 5.0)[0][brain[sl]]
    w_tumour = weights.sum(axis=0)
    bias = np.exp(0.12 * _smooth_field(rng, coords, 60.0, count=4).reshape(4, -1)[:, inside])
    out = np.empty((4, inside.size), dtype=np.int16)
    for m, name in enumerate(MODALITIES):
        # Scanners and protocols differ: each class mean varies by up to 5 % between cases.
        mu = np.asarray(CONTRASTS[name]) * rng.uniform(0.95, 1.05, len(CONTRASTS[name]))
        detail = mu[_CSF] + (mu[_GM] - mu[_CSF]) * ramp1 + (mu[_WM] - mu[_GM]) * ramp2
        tissue = 0.5 * (csf * mu[_CSF] + gm * mu[_GM] + wm * mu[_WM]) + 0.5 * p_brain * detail
        image = tissue * (1.0 - w_tumour) + weights[0] * (0.3 * tissue + 0.7 * mu[_ED])
        image += (weights[1] * mu[_NCR] + weights[2] * mu[_ET]) * (1.0 + texture)
        scale = BASE_SCALE[name] * float(rng.uniform(0.6, 1.6))
        values = image * bias[m] * np.float32(scale)
        noise = rng.standard_normal((2, inside.size), dtype=np.float32) * np.float32(0.03 * scale * mu[_WM])
        values = np.sqrt((values + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude noise
        out[m] = np.clip(np.rint(values), 1, np.iinfo(np.int16).max)
    return out


def generate_case(seed: int, index: int, scale: float = 1.0, with_tissue: bool = False) -> PhantomCase:
    """Generate phantom case ``index``: int16 images (4, X, Y, Z), canonical label, optionally CSF/GM/WM maps."""
    rng = np.random.default_rng([seed, index])
    tpl = load_template(float(scale))
    shape, spacing = grid_for_scale(scale)
    affine = _affine(shape, spacing, tpl.centre)
    world = [affine[a, a] * np.arange(shape[a]) + affine[a, 3] for a in range(3)]
    # Pose: template offsets are scaled by 1/size, so the MNI brain (larger than most) shrinks to 86-98 %.
    shift = rng.uniform(-4.0, 4.0, 3)
    linear = _rotation(np.deg2rad(rng.uniform(-5.0, 5.0, 3))) / rng.uniform(0.86, 0.98)
    pose = (linear, shift)
    # Work only on the part of the grid that can hold brain: the posed template bounding box plus 10 mm.
    corners = np.stack(np.meshgrid(*zip(*tpl.bbox), indexing="ij"), axis=-1).reshape(-1, 3)
    posed = tpl.centre + shift + np.linalg.solve(linear, (corners - tpl.centre).T).T
    box = [np.flatnonzero((w >= posed[:, a].min() - 10.0) & (w <= posed[:, a].max() + 10.0))
           for a, w in enumerate(world)]
    sl = tuple(slice(b[0], b[-1] + 1) for b in box)
    coords = [w[s] for w, s in zip(world, sl)]
    for _attempt in range(20):
        tumours = [_draw_tumour(rng, tpl, pose) for _ in range(1 + int(rng.random() < 0.35))]
        anatomy = _warp_anatomy(tpl, coords, tumours, rng, pose)
        brain = anatomy[:3].sum(axis=0) > 0.5
        label = _tumour_labels(tumours, coords, anatomy[1] + anatomy[2] > 0.5, brain, rng)
        if np.all(np.bincount(label.ravel(), minlength=4)[1:] > 0):
            break
    images = np.zeros((4, *shape), dtype=np.int16)
    work = np.zeros((4, *label.shape), dtype=np.int16)
    work.reshape(4, -1)[:, np.flatnonzero(brain)] = _intensities(anatomy, label, brain, coords, rng)
    images[(slice(None), *sl)] = work
    full_label = np.zeros(shape, dtype=np.uint8)
    full_label[sl] = label
    tissue = None
    if with_tissue:
        tissue = np.zeros((3, *shape), dtype=np.float32)
        tissue[(slice(None), *sl)] = anatomy[:3] * brain
    return PhantomCase(images=images, label=full_label, tissue=tissue, affine=affine)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) from three Euler angles in radians (x, then y, then z)."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _write_case(args: tuple[Path, str, int, int, float]) -> str:
    """Generate one case and write its five NIfTI files under ``root``; returns the case id."""
    root, naming, seed, index, scale = args
    case = generate_case(seed, index, scale)
    case_id = case_id_for(naming, index)
    directory = root / case_id
    directory.mkdir()
    suffixes = FILE_SUFFIXES[naming]
    volumes = {name: case.images[m] for m, name in enumerate(MODALITIES)}
    volumes["seg"] = from_canonical_labels(case.label, naming)
    for name, volume in volumes.items():
        img = nib.Nifti1Image(volume, case.affine)
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(case.affine, code=1)
        img.set_sform(case.affine, code=1)
        nib.save(img, directory / f"{case_id}{suffixes[name]}.nii.gz")
    return case_id


def is_phantom_release(directory: Path) -> bool:
    """Whether ``directory`` is a phantom release written before output markers: phantom.json from this
    generator and nothing but case directories beside it."""
    path = directory / "phantom.json"
    try:  # the generator writes a few hundred bytes; anything larger, or not a regular file, is not its record
        if not path.is_file() or path.stat().st_size > 2**20:
            return False
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    others = [p for p in directory.iterdir() if p.name != "phantom.json"]
    return (isinstance(meta, dict) and meta.get("generator") == "fuse4seg phantom"
            and all(p.is_dir() and p.name in set(meta.get("cases", [])) for p in others))


def write_phantom_release(out: str | Path, cases: int, naming: str = "brats2021", seed: int = 0,
                          scale: float = 1.0, workers: int = 1, overwrite: bool = False) -> Path:
    """Write ``cases`` phantom cases in real BraTS layout under ``out`` (atomically); returns ``out``."""
    naming = naming.lower()
    if naming not in NAMINGS:
        raise ConfigError(f"must be one of {', '.join(NAMINGS)}, got {naming!r}", option="naming")
    if int(cases) < 1:
        raise ConfigError(f"must be at least 1, got {cases}", option="cases")
    if not 0.1 <= float(scale) <= 1.0:
        raise ConfigError(f"must lie in [0.1, 1.0], got {scale}", option="scale")
    if int(workers) < 1:
        raise ConfigError(f"must be at least 1, got {workers}", option="workers")
    seed = check_seed(seed)
    out = Path(out)
    shape, spacing = grid_for_scale(scale)
    with atomic_dir(out, "release", overwrite=overwrite, legacy=is_phantom_release) as tmp:
        jobs = [(tmp, naming, int(seed), i, float(scale)) for i in range(int(cases))]
        ids = list(ordered_map(_write_case, jobs, int(workers), desc="phantom", progress=False,
                               preload=("fuse4seg.data.phantom.generator",)))
        meta = {
            "generator": "fuse4seg phantom", "naming": naming, "seed": int(seed), "scale": float(scale),
            "cases": ids, "shape": list(shape), "spacing_mm": spacing,
            "anatomy": "MNI152 ICBM 2009c nonlinear symmetric T1/GM/WM templates (nilearn)",
            "labels": {"NCR": 1, "ED": 2, "ET": {v: k for k, v in LABEL_MAPS[naming].items()}[3]},
        }
        (tmp / "phantom.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out
