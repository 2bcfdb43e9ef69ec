"""BraTS reader: naming detection, label mapping, the normalisation rule, and every bad input (library and CLI)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import DEFAULT_IDS, FIXTURE_SHAPE, fixture_label, write_case

from fuse4seg.cli import main
from fuse4seg.data.release import intensity
from fuse4seg.data.release.brats import (
    detect_scheme,
    find_case,
    find_cases,
    from_canonical_labels,
    load_case,
    normalise_modality,
    to_canonical_labels,
)
from fuse4seg.data.release.intensity import linear_percentiles, percentile_bounds
from fuse4seg.errors import DataError

IDS = {
    "brats2020": ["BraTS20_Training_002", "BraTS20_Training_001", "BraTS20_Training_010"],
    "brats2021": ["BraTS2021_01666", "BraTS2021_00000", "BraTS2021_00495"],
    "brats2023": ["BraTS-GLI-00002-000", "BraTS-GLI-00000-000", "BraTS-GLI-00000-001"],
}
FILES = {
    "brats2020": ("t1", "t1ce", "t2", "flair", "seg"),
    "brats2021": ("t1", "t1ce", "t2", "flair", "seg"),
    "brats2023": ("t1n", "t1c", "t2w", "t2f", "seg"),
}


@pytest.mark.parametrize("scheme", sorted(IDS))
def test_find_cases_detects_each_naming_scheme(tmp_path: Path, scheme: str) -> None:
    for case_id in IDS[scheme]:
        write_case(tmp_path, scheme, case_id)
    (tmp_path / "name_mapping.csv").write_text("not a case\n")
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == sorted(IDS[scheme])
    assert {c.scheme for c in cases} == {scheme}
    sep = "-" if scheme == "brats2023" else "_"
    first = cases[0]
    expected = {m: f"{first.case_id}{sep}{f}.nii.gz" for m, f in zip(("t1", "t1ce", "t2", "flair", "seg"), FILES[scheme])}
    assert {k: p.name for k, p in first.paths.items()} == expected


def test_detect_scheme_rejects_other_names() -> None:
    assert detect_scheme("BraTS2021_00001") == "brats2021"
    assert detect_scheme("BraTS-MEN-00004-000") == "brats2023"
    assert detect_scheme("BraTS20_Validation_005") == "brats2020"
    for name in ("BraTS2021", "case_001", "BraTS-GLI-00000", "BraTS2021_00001_t1"):
        assert detect_scheme(name) is None


def test_uncompressed_nii_nested_release_and_validation_cases(tmp_path: Path) -> None:
    root = tmp_path / "release"
    # Nested two levels deep, as Kaggle's BraTS 2020 download unpacks.
    wrapper = root / "BraTS2020_ValidationData" / "MICCAI_BraTS2020_ValidationData"
    write_case(wrapper, "brats2020", "BraTS20_Validation_001", seg=False, ext=".nii")
    (root / "BraTS2020_ValidationData" / "survival_evaluation.csv").write_text("BraTS20_Validation_001,60\n")
    cases = find_cases(root)
    assert [c.case_id for c in cases] == ["BraTS20_Validation_001"]
    assert sorted(cases[0].paths) == ["flair", "t1", "t1ce", "t2"]
    assert cases[0].paths["t1"].name == "BraTS20_Validation_001_t1.nii"
    loaded = load_case(cases[0], require_label=False)
    assert loaded.label is None and loaded.images.shape == (4, *FIXTURE_SHAPE)
    with pytest.raises(DataError, match=r"BraTS20_Validation_001: seg file BraTS20_Validation_001_seg.nii.gz is missing"):
        load_case(cases[0])


def test_misnamed_seg_file_of_brats2020_case_355_is_found(tmp_path: Path) -> None:
    case = write_case(tmp_path, "brats2020", "BraTS20_Training_355")
    (case / "BraTS20_Training_355_seg.nii.gz").rename(case / "W39_1998.09.19_Segm.nii.gz")
    (found,) = find_cases(tmp_path)
    assert found.paths["seg"].name == "W39_1998.09.19_Segm.nii.gz"
    np.testing.assert_array_equal(load_case(found).label, to_canonical_labels(fixture_label(FIXTURE_SHAPE, "brats2020"), "brats2020"))


@pytest.mark.parametrize("scheme", sorted(IDS))
def test_load_case_maps_labels_to_canonical(tmp_path: Path, scheme: str) -> None:
    directory = write_case(tmp_path, scheme)
    loaded = load_case(find_case(directory))
    raw = fixture_label(FIXTURE_SHAPE, scheme)
    expected = np.select([raw == 1, raw == 2, raw >= 3], [1, 2, 3], 0)
    assert loaded.label.dtype == np.uint8
    np.testing.assert_array_equal(loaded.label, expected)
    assert loaded.images.dtype == np.float32 and loaded.images.shape == (4, *FIXTURE_SHAPE)
    np.testing.assert_array_equal(loaded.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert loaded.case_id == DEFAULT_IDS[scheme] and loaded.scheme == scheme


def test_label_mapping_and_round_trip() -> None:
    release = np.array([0, 1, 2, 4, 4, 2], dtype=np.uint8)
    np.testing.assert_array_equal(to_canonical_labels(release, "brats2021"), [0, 1, 2, 3, 3, 2])
    np.testing.assert_array_equal(to_canonical_labels(release.astype(np.float64), "brats2020"), [0, 1, 2, 3, 3, 2])
    np.testing.assert_array_equal(to_canonical_labels([0, 3, 1, 2], "brats2023"), [0, 3, 1, 2])
    canonical = np.arange(4, dtype=np.uint8).repeat(3).reshape(3, 2, 2)
    np.testing.assert_array_equal(from_canonical_labels(canonical, "brats2021"), np.array([0, 1, 2, 4]).repeat(3).reshape(3, 2, 2))
    for scheme in ("brats2020", "brats2021", "brats2023"):
        np.testing.assert_array_equal(to_canonical_labels(from_canonical_labels(canonical, scheme), scheme), canonical)
    with pytest.raises(DataError, match=r"unknown label values 3 \(the brats2021 scheme allows 0, 1, 2, 4\)"):
        to_canonical_labels(np.array([0, 3, 4]), "brats2021")
    with pytest.raises(DataError, match=r"unknown label values 4, 7"):
        to_canonical_labels(np.array([0, 4, 7, 3]), "brats2023")
    with pytest.raises(DataError, match=r"unknown label values -1"):
        to_canonical_labels(np.array([0, -1], dtype=np.int16), "brats2023")
    with pytest.raises(DataError, match="must be integers"):
        to_canonical_labels(np.array([0.0, 1.5]), "brats2021")


def test_normalisation_matches_hand_computation() -> None:
    volume = np.zeros((20, 10, 2), dtype=np.int16)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[:, :, 0] = True
    volume[:, :, 0] = np.arange(1, 201).reshape(20, 10)  # 200 brain values 1..200
    out = normalise_modality(volume, mask)
    # Linear percentiles of 1..200: position 199 * 0.005 = 0.995 -> 1.995; 199 * 0.995 = 198.005 -> 199.005.
    lo, hi = 1.995, 199.005
    assert out.dtype == np.float32
    assert out[0, 0, 0] == 0.0 and out[19, 9, 0] == 1.0  # values 1 and 200 are clipped
    assert out[9, 9, 0] == pytest.approx((100 - lo) / (hi - lo), abs=1e-6)  # value 100 -> 0.497462...
    assert out[9, 9, 0] == pytest.approx(0.4974620, abs=1e-6)
    assert not out[:, :, 1].any()
    constant = normalise_modality(np.where(mask, 7, 0), mask)
    assert not constant.any()  # hi == lo: nothing lies above lo
    mixed = np.where(mask, 7, 0)
    mixed[0, 0, 0] = 9
    np.testing.assert_array_equal(normalise_modality(mixed, mask)[mask].max(), 1.0)


def test_load_case_brain_mask_is_any_modality_positive(tmp_path: Path) -> None:
    t1 = np.zeros(FIXTURE_SHAPE, np.float32)
    t1[2:10, 2:8, 2:6] = np.linspace(10, 50, 8 * 6 * 4, dtype=np.float32).reshape(8, 6, 4)
    flair = np.zeros(FIXTURE_SHAPE, np.float32)
    flair[0, 0, 0] = 5.0  # a voxel that only FLAIR sees: in the mask, but T1 there is 0 -> below lo -> 0
    zero = np.zeros(FIXTURE_SHAPE, np.float32)
    loaded = load_case(find_case(write_case(tmp_path, images={"t1": t1, "t1ce": zero, "t2": zero, "flair": flair})))
    assert loaded.brain_mask.sum() == 8 * 6 * 4 + 1 and loaded.brain_mask[0, 0, 0]
    expected_t1 = normalise_modality(t1, loaded.brain_mask)
    np.testing.assert_array_equal(loaded.images[0], expected_t1)
    assert loaded.images[0, 0, 0, 0] == 0.0 and loaded.images[3, 0, 0, 0] == 1.0


def _reference_normalise(volumes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The rule from its definition, cast first: float32 volumes, any-positive mask, np.percentile, clip."""
    cast = [np.asarray(v, dtype=np.float32) for v in volumes]
    mask = np.any([c > 0 for c in cast], axis=0)
    out = np.zeros((len(cast), *mask.shape), np.float32)
    for m, values in enumerate(c[mask] for c in cast):
        if values.size:
            lo, hi = (float(p) for p in np.percentile(values, [0.5, 99.5]))
            out[m][mask] = (np.clip((values - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0) if hi > lo
                            else (values > lo).astype(np.float32))
    return out, mask


def _assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    """float32 arrays equal bit for bit (so +0.0 and -0.0 differ)."""
    assert actual.dtype == expected.dtype == np.float32 and actual.shape == expected.shape
    np.testing.assert_array_equal(actual.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("n", [1, 2, 3, 199, 200, 201, 202, 1000, 4321])
def test_histogram_percentiles_equal_numpy_bit_for_bit(n: int) -> None:
    rng = np.random.default_rng(n)
    for values in (rng.integers(-300, 3000, size=n), rng.integers(0, 4, size=n), np.full(n, 7),
                   rng.normal(500.0, 300.0, size=n)):
        values = values.astype(np.float32)
        ordered = np.sort(values)
        assert linear_percentiles(lambda k, s=ordered: s[k], n) == percentile_bounds(values)
        assert percentile_bounds(values) == tuple(float(p) for p in np.percentile(values, [0.5, 99.5]))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16])
@pytest.mark.parametrize("order", ["C", "F"])
def test_integer_table_normalisation_equals_the_cast_first_rule(dtype: type, order: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intensity, "GATHER_CHUNK", 37)  # many chunks and a ragged last one
    info = np.iinfo(dtype)
    rng = np.random.default_rng(5)
    shape = (9, 7, 5)
    mask = rng.random(shape) < 0.6
    cases = {
        "full range": rng.integers(info.min, info.max, size=shape, endpoint=True),
        "negatives in the brain (lo < 0)": rng.integers(max(info.min, -20), 100, size=shape),
        "constant (hi == lo)": np.full(shape, 3),
        "two values": rng.integers(0, 2, size=shape) * 5,
    }
    for name, values in cases.items():
        # Positive values outside this arbitrary mask too: the public function must zero them.
        volume = np.asarray(values.astype(dtype), order=order)
        reference = np.zeros(shape, np.float32)
        cast = volume.astype(np.float32)
        lo, hi = (float(p) for p in np.percentile(cast[mask], [0.5, 99.5]))
        scaled = np.clip((cast - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0) if hi > lo else (cast > lo)
        reference[mask] = scaled[mask]
        out = normalise_modality(volume, mask)
        _assert_same_bits(out, reference)
        assert out.flags[f"{order}_CONTIGUOUS"], name
    assert not normalise_modality(np.ones(shape, dtype), np.zeros(shape, bool)).any()  # empty brain


def _write_mixed_case(root: Path) -> Path:
    """A case whose modalities are stored as int16 with negatives, uint8, float32 and scaled int16 (float64)."""
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in FIXTURE_SHAPE], indexing="ij"))
    brain = (grid**2).sum(axis=0) < 1.5
    t1 = (rng.integers(-40, 2000, size=FIXTURE_SHAPE) * brain).astype(np.int16)
    t1ce = (rng.integers(0, 256, size=FIXTURE_SHAPE) * brain).astype(np.uint8)
    t2 = (rng.gamma(2.0, 300.0, size=FIXTURE_SHAPE) * brain).astype(np.float32)
    directory = write_case(root, images={"t1": t1, "t1ce": t1ce, "t2": t2})
    flair = nib.Nifti1Image((rng.integers(0, 900, size=FIXTURE_SHAPE) * brain).astype(np.int16), np.diag([-1.0, -1.0, 1.0, 1.0]))
    flair.header.set_slope_inter(0.37, 0.0)  # nibabel returns scaled data as float64
    nib.save(flair, directory / "BraTS2021_00000_flair.nii.gz")
    return directory


def test_load_case_equals_the_cast_first_rule_for_integer_and_float_files(tmp_path: Path) -> None:
    case = find_case(_write_mixed_case(tmp_path))
    stored = [np.asanyarray(nib.load(case.paths[name]).dataobj) for name in ("t1", "t1ce", "t2", "flair")]
    assert [v.dtype for v in stored] == [np.int16, np.uint8, np.float32, np.float64]
    expected, mask = _reference_normalise(stored)
    loaded = load_case(case)
    _assert_same_bits(loaded.images, expected)
    np.testing.assert_array_equal(loaded.brain_mask, mask)
    assert all(loaded.images[m].flags.f_contiguous for m in range(4))
    assert (~mask).any() and np.percentile(stored[0][mask], 0.5) < 0  # lo < 0, and still a +0.0 background


def test_load_case_equals_the_cast_first_rule_on_the_phantom(phantom_release: Path) -> None:
    for case in find_cases(phantom_release)[:2]:
        stored = [np.asanyarray(nib.load(case.paths[name]).dataobj) for name in ("t1", "t1ce", "t2", "flair")]
        expected, mask = _reference_normalise(stored)
        loaded = load_case(case)
        _assert_same_bits(loaded.images, expected)
        np.testing.assert_array_equal(loaded.brain_mask, mask)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32])
def test_label_mapping_for_every_stored_dtype(dtype: type, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intensity, "GATHER_CHUNK", 5)
    release = np.asfortranarray(np.array([0, 1, 2, 4, 4, 2, 0, 1, 4, 2, 1, 0], dtype=dtype).reshape(2, 3, 2))
    out = to_canonical_labels(release, "brats2021")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.where(release == 4, 3, release.astype(np.int64)))
    bad = release.copy()
    bad[1, 2, 1] = 3
    with pytest.raises(DataError, match=r"unknown label values 3 \(the brats2021 scheme allows 0, 1, 2, 4\)"):
        to_canonical_labels(bad, "brats2021")


# ---- bad input: each raises DataError naming the case and the file, and the CLI exits 1 in one line ----


def _truncate(path: Path) -> None:
    """Cut a .nii.gz file in half (a corrupt download)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_release(root: Path, problem: str) -> tuple[Path, str]:
    """A 3-case BraTS 2021 release whose case BraTS2021_00003 has ``problem``; returns (root, expected message)."""
    for index in (1, 2):
        write_case(root, "brats2021", f"BraTS2021_{index:05d}", seed=index)
    cid = "BraTS2021_00003"
    case = root / cid
    if problem == "missing":
        write_case(root, "brats2021", cid)
        (case / f"{cid}_t1ce.nii.gz").unlink()
        return root, f"{cid}: t1ce file {cid}_t1ce.nii.gz is missing"
    if problem == "shape":
        write_case(root, "brats2021", cid, images={"flair": np.ones((12, 10, 7), np.int16)})
        return root, f"{cid}: flair file {cid}_flair.nii.gz has shape (12, 10, 7), but the t1 file has (12, 10, 8)"
    if problem == "affine":
        write_case(root, "brats2021", cid)
        img = nib.load(case / f"{cid}_t2.nii.gz")
        shifted = img.affine.copy()
        shifted[0, 3] += 1.0
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), shifted), case / f"{cid}_t2.nii.gz")
        return root, f"{cid}: t2 file {cid}_t2.nii.gz has a different affine from the t1 file (max difference 1 mm)"
    if problem == "corrupt":
        write_case(root, "brats2021", cid)
        _truncate(case / f"{cid}_flair.nii.gz")
        return root, f"{cid}: flair file {cid}_flair.nii.gz is corrupt or unreadable"
    if problem == "garbage":
        write_case(root, "brats2021", cid)
        with gzip.open(case / f"{cid}_t1.nii.gz", "wb") as fh:
            fh.write(b"not a nifti file at all")
        return root, f"{cid}: t1 file {cid}_t1.nii.gz is corrupt or unreadable"
    if problem == "nan":
        t2 = np.ones(FIXTURE_SHAPE, np.float32)
        t2[3, 3, 3] = np.nan
        t2[4, 4, 4] = np.inf
        write_case(root, "brats2021", cid, images={"t2": t2})
        return root, f"{cid}: t2 file {cid}_t2.nii.gz has 2 non-finite voxels (NaN/Inf)"
    if problem == "label":
        labels = fixture_label(FIXTURE_SHAPE, "brats2021")
        labels[0, 0, 0] = 3
        write_case(root, "brats2021", cid, labels=labels)
        return root, f"{cid}: seg file {cid}_seg.nii.gz: unknown label values 3 (the brats2021 scheme allows 0, 1, 2, 4)"
    raise AssertionError(problem)


PROBLEMS = ("missing", "shape", "affine", "corrupt", "garbage", "nan", "label")


@pytest.mark.parametrize("problem", PROBLEMS)
def test_bad_case_raises_data_error_naming_case_and_file(tmp_path: Path, problem: str) -> None:
    root, message = _bad_release(tmp_path / "brats", problem)
    with pytest.raises(DataError) as info:
        for case in find_cases(root):
            load_case(case)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``fuse4seg`` in-process; returns (exit status, the error line of stderr, after any progress bar)."""
    status = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1 and err.endswith("\n")
    # A progress bar may precede the message on the same terminal line (carriage returns); drop it.
    return status, err.rstrip("\n").split("\n")[-1].split("\r")[-1] + "\n"


@pytest.mark.parametrize("problem", PROBLEMS)
def test_bad_case_via_build_benchmark_cli(tmp_path: Path, problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    root, message = _bad_release(tmp_path / "brats", problem)
    out = tmp_path / "package"
    status, err = _run_cli(["build-benchmark", "--out", str(out), "--brats", str(root), "--size", "16",
                            "--split", "0.34,0.33,0.33"], capsys)
    assert status == 1
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".package*"))


@pytest.mark.parametrize("layout", ["empty", "non-brats", "absent", "file"])
def test_empty_or_non_brats_directory(tmp_path: Path, layout: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    if layout == "file":
        root.write_text("BraTS2021_00000\n")
    elif layout != "absent":
        root.mkdir()
    if layout == "non-brats":
        (root / "scans").mkdir()
        (root / "scans" / "patient1").mkdir()
        (root / "readme.txt").write_text("hello\n")
    expected = {
        "empty": f"BraTS directory {root} is empty",
        "non-brats": f"{root} contains no BraTS cases (expected subdirectories like BraTS20_Training_001",
        "absent": f"BraTS directory {root} does not exist",
        "file": f"BraTS directory {root} is a file, not a directory",
    }[layout]
    with pytest.raises(DataError) as info:
        find_cases(root)
    assert str(info.value).startswith(expected)
    status, err = _run_cli(["build-benchmark", "--out", str(tmp_path / "pkg"), "--brats", str(root)], capsys)
    assert status == 1 and err.startswith(f"error: {expected}") and err.count("\n") == 1
    assert not (tmp_path / "pkg").exists()


def test_mixed_schemes_and_duplicate_extensions_are_refused(tmp_path: Path) -> None:
    write_case(tmp_path / "mixed", "brats2021")
    write_case(tmp_path / "mixed", "brats2023")
    with pytest.raises(DataError, match="mixes BraTS naming schemes"):
        find_cases(tmp_path / "mixed")
    case = write_case(tmp_path / "dup", "brats2021")
    write_case(tmp_path / "dup", "brats2021", ext=".nii")
    with pytest.raises(DataError, match="BraTS2021_00000: both BraTS2021_00000_t1.nii.gz and BraTS2021_00000_t1.nii exist"):
        find_case(case)
    with pytest.raises(DataError, match="is not a BraTS case directory"):
        find_case(tmp_path / "dup")
