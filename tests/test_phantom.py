"""Phantom BraTS: real layout and label schemes, MRI contrast facts, determinism, and the ``phantom`` command."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fuse4seg.cli import main
from fuse4seg.conventions import MODALITIES
from fuse4seg.data.phantom.generator import generate_case, grid_for_scale, write_phantom_release
from fuse4seg.data.phantom.mni152 import template_path
from fuse4seg.data.release.brats import find_cases, load_case
from fuse4seg.errors import ConfigError


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_grid_for_scale() -> None:
    assert grid_for_scale(1.0) == ((240, 240, 155), 1.0)
    assert grid_for_scale(0.25) == ((60, 60, 39), 4.0)
    assert grid_for_scale(0.5) == ((120, 120, 78), 2.0)


def test_templates_are_the_mni152_files_shipped_with_nilearn() -> None:
    for name in ("t1", "gm", "wm"):
        img = nib.load(template_path(name))
        assert img.shape == (197, 233, 189)
        np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 1.0))


def test_release_layout_geometry_and_labels(phantom_release: Path) -> None:
    cases = find_cases(phantom_release)
    assert [c.case_id for c in cases] == [f"BraTS2021_{i:05d}" for i in range(6)]
    meta = json.loads((phantom_release / "phantom.json").read_text())
    assert meta["seed"] == 0 and meta["scale"] == 0.25 and meta["naming"] == "brats2021"
    for case in cases:
        assert sorted(case.paths) == ["flair", "seg", "t1", "t1ce", "t2"]
        t1 = nib.load(case.paths["t1"])
        assert t1.shape == (60, 60, 39) and t1.get_data_dtype() == np.int16
        np.testing.assert_allclose(t1.header.get_zooms(), (4.0, 4.0, 4.0))
        seg = np.asanyarray(nib.load(case.paths["seg"]).dataobj)
        assert seg.dtype == np.uint8
        values, counts = np.unique(seg, return_counts=True)
        assert values.tolist() == [0, 1, 2, 4]  # every case has NCR, ED and ET, in the 2021 scheme
        assert counts[1:].min() >= 3


def test_generate_case_is_what_the_release_stores(phantom_release: Path) -> None:
    case = find_cases(phantom_release)[2]
    generated = generate_case(seed=0, index=2, scale=0.25, with_tissue=True)
    for m, name in enumerate(MODALITIES):
        np.testing.assert_array_equal(np.asanyarray(nib.load(case.paths[name]).dataobj), generated.images[m])
    loaded = load_case(case)
    np.testing.assert_array_equal(loaded.label, generated.label)
    np.testing.assert_allclose(loaded.affine, generated.affine)
    # Skull-stripped like BraTS: every brain voxel is > 0 in every modality, the background is exactly 0.
    brain = generated.tissue.sum(axis=0) > 0.5
    np.testing.assert_array_equal(loaded.brain_mask, brain)
    assert (generated.images[:, brain] >= 1).all() and not generated.images[:, ~brain].any()
    assert (loaded.label[~brain] == 0).all()


def _class_means(seed: int, index: int, images: np.ndarray) -> dict[str, np.ndarray]:
    """Mean normalised intensity (4,) of each tissue/tumour class of a phantom case."""
    generated = generate_case(seed=seed, index=index, scale=0.25, with_tissue=True)
    csf, gm, wm = generated.tissue
    label = generated.label
    masks = {"CSF": (csf > 0.7) & (label == 0), "GM": (gm > 0.7) & (label == 0), "WM": (wm > 0.7) & (label == 0),
             "NCR": label == 1, "ED": label == 2, "ET": label == 3}
    assert all(mask.sum() > 0 for mask in masks.values())
    return {name: images[:, mask].mean(axis=1) for name, mask in masks.items()}


def test_contrasts_follow_real_mri(phantom_release: Path) -> None:
    t1, t1ce, t2, flair = range(4)
    for index, case in enumerate(find_cases(phantom_release)):
        mean = _class_means(0, index, load_case(case).images)
        # Healthy tissue: T1 WM > GM > CSF; T2 CSF brightest, WM darkest; FLAIR CSF dark.
        assert mean["WM"][t1] > mean["GM"][t1] > mean["CSF"][t1]
        assert mean["CSF"][t2] > mean["GM"][t2] > mean["WM"][t2]
        assert mean["CSF"][flair] < mean["WM"][flair] < mean["GM"][flair]
        # Enhancing tumour is bright only in T1ce: above WM there, below WM in T1.
        assert mean["ET"][t1ce] > mean["ET"][t1] + 0.2
        assert mean["ET"][t1ce] > mean["WM"][t1ce] and mean["ET"][t1] < mean["WM"][t1]
        # Necrotic core dark in T1/T1ce, bright-ish in T2.
        assert mean["NCR"][t1ce] < mean["GM"][t1ce] and mean["NCR"][t1] < mean["GM"][t1]
        assert mean["NCR"][t2] > mean["GM"][t2]
        # Oedema bright in FLAIR and T2, slightly dark in T1.
        assert mean["ED"][flair] > mean["WM"][flair] + 0.15
        assert mean["ED"][t2] > mean["WM"][t2] + 0.15
        assert mean["ED"][t1] < mean["WM"][t1]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = write_phantom_release(tmp_path / "a", cases=2, seed=5, scale=0.2)
    b = write_phantom_release(tmp_path / "b", cases=2, seed=5, scale=0.2, workers=2)
    c = write_phantom_release(tmp_path / "c", cases=2, seed=6, scale=0.2)
    hashes_a, hashes_c = _hashes(a), _hashes(c)
    assert len(hashes_a) == 2 * 5 + 2  # five files per case, phantom.json and the .fuse4seg marker
    assert hashes_a == _hashes(b)
    differing = [name for name in hashes_a if name.endswith(".nii.gz") and hashes_a[name] != hashes_c[name]]
    assert len(differing) == 10


def test_brats2023_naming_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gli"
    assert main(["phantom", "--out", str(out), "--cases", "1", "--naming", "brats2023", "--scale", "0.2",
                 "--seed", "3"]) == 0
    assert "wrote 1 phantom cases" in capsys.readouterr().out
    (case,) = find_cases(out)
    assert case.case_id == "BraTS-GLI-00000-000" and case.scheme == "brats2023"
    assert case.paths["t1ce"].name == "BraTS-GLI-00000-000-t1c.nii.gz"
    seg = np.asanyarray(nib.load(case.paths["seg"]).dataobj)
    assert np.unique(seg).tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(load_case(case).label, generate_case(3, 0, 0.2).label)
    # An existing directory is refused without --overwrite and left as it was.
    before = _hashes(out)
    assert main(["phantom", "--out", str(out), "--cases", "1", "--scale", "0.2"]) == 1
    assert capsys.readouterr().err == f"error: --out: {out} already exists (pass --overwrite to replace it)\n"
    assert _hashes(out) == before
    assert main(["phantom", "--out", str(out), "--cases", "1", "--scale", "0.2", "--overwrite"]) == 0
    assert [c.case_id for c in find_cases(out)] == ["BraTS2021_00000"]


def test_brats2020_naming(tmp_path: Path) -> None:
    out = write_phantom_release(tmp_path / "r2020", cases=1, naming="brats2020", scale=0.2)
    (case,) = find_cases(out)
    assert case.case_id == "BraTS20_Training_001" and case.scheme == "brats2020"
    assert np.unique(np.asanyarray(nib.load(case.paths["seg"]).dataobj)).tolist() == [0, 1, 2, 4]
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # shared like a plain mkdir


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--naming", "brats2019", "--naming: must be one of brats2020, brats2021, brats2023, got 'brats2019'"),
    ("--scale", "0", "--scale: must be >= 0.1, got 0"),
    ("--cases", "0", "--cases: must be >= 1, got 0"),
    ("--workers", "0", "--workers: must be >= 1, got 0"),
])
def test_bad_options(tmp_path: Path, option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = {"--out": str(tmp_path / "x"), "--cases": "1", "--scale": "0.2"}
    argv[option] = value
    assert main(["phantom", *[t for kv in argv.items() for t in kv]]) == 1
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError):
        write_phantom_release(tmp_path / "y", **{option.strip("-"): int(value) if value.isdigit() else value,
                                                 **({} if option == "--cases" else {"cases": 1})})


def test_tumours_are_noise_perturbed_level_sets_not_spheres() -> None:
    from scipy import ndimage as ndi

    from fuse4seg.data.phantom.generator import _Tumour, _tumour_labels

    axis = np.arange(-50.0, 51.0)
    grid = np.meshgrid(axis, axis, axis, indexing="ij")
    radius = np.sqrt(grid[0] ** 2 + grid[1] ** 2 + grid[2] ** 2)
    everywhere = np.ones(radius.shape, dtype=bool)

    def boundary_spread(mask: np.ndarray) -> float:
        """Coefficient of variation of the centre distance over a mask's boundary voxels."""
        dist = radius[mask & ~ndi.binary_erosion(mask)]
        return float(dist.std() / dist.mean())

    sphere = boundary_spread(radius < 15.0)
    assert sphere < 0.03  # a digital sphere's boundary lies at nearly one distance
    # A tumour with spherical base shape (isotropic axes): only the level-set noise makes it irregular.
    tumour = _Tumour(centre=np.zeros(3), rotation=np.eye(3), axes=np.ones(3), r_ed=30.0, r_core=15.0, r_ncr=8.0)
    for seed in range(3):
        label = _tumour_labels([tumour], [axis, axis, axis], everywhere, everywhere, np.random.default_rng(seed))
        assert np.bincount(label.ravel(), minlength=4)[1:].min() > 500
        assert boundary_spread(label > 0) > 3 * sphere and boundary_spread(np.isin(label, (1, 3))) > 3 * sphere
        # Nesting: necrosis inside the enhancing core, the core inside the oedema.
        assert not (ndi.binary_dilation(label == 1) & (label == 0)).any()
