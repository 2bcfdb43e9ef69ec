"""build_benchmark: slice rule, patient splits, geometry, fusion, HDF5 schema, reproducibility."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from _benchmark_data import tumour_label, write_release

from fuse4seg.conventions import MODALITIES
from fuse4seg.data.build.builder import build_benchmark, split_cases
from fuse4seg.data.build.cases import select_slices
from fuse4seg.data.build.options import parse_split
from fuse4seg.data.release.geometry import crop_resize, square_box
from fuse4seg.errors import ConfigError, DataError, Fuse4SegError
from fuse4seg.fusion import fuse_batch


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 7-case tiny BraTS 2021 release; case 6 has no tumour."""
    return write_release(tmp_path_factory.mktemp("release") / "brats", cases=7, empty=(6,))


def build(release: Path, out: Path, **options: object) -> dict:
    """build_benchmark from ``release`` with small test defaults."""
    options = {"slices_per_case": 3, "progress": False, "command": "fuse4seg build-benchmark (test)", **options}
    return build_benchmark(out, brats=release, **options)


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file in ``directory``, by name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_select_slices_rule() -> None:
    """Hand-worked areas: candidates are the slices with at least 25% of the largest tumour area (z 3..10); K of
    them evenly spaced from first to last; K above the count keeps all; no tumour gives none."""
    label = np.zeros((8, 8, 20), dtype=np.uint8)
    areas = [0, 1, 4, 9, 16, 25, 36, 36, 25, 16, 9, 4, 1, 0, 0, 0, 0, 0, 0, 2]
    for z, area in enumerate(areas):
        label.reshape(64, 20)[:area, z] = 1
    # Candidates: area >= 0.25 * 36 = 9 -> z = 3..10 (8 slices); 4 evenly spaced from first to last.
    np.testing.assert_array_equal(select_slices(label, 4), [3, 5, 8, 10])
    np.testing.assert_array_equal(select_slices(label, 20), np.arange(3, 11))
    np.testing.assert_array_equal(select_slices(label, 1), [3])
    assert select_slices(np.zeros((4, 4, 5), np.uint8), 3).size == 0


def test_split_cases_by_patient() -> None:
    """23 cases at 0.7/0.1/0.2 split 16/2/5 by largest remainder, every case exactly once, same seed same split,
    other seed other split; every non-zero split gets a case; too few cases is a ConfigError."""
    ids = [f"case{i:03d}" for i in range(23)]
    splits = split_cases(ids, (0.7, 0.1, 0.2), seed=3)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [16, 2, 5]  # 16.1, 2.3, 4.6: largest remainder
    assert sorted(c for ids_ in splits.values() for c in ids_) == ids
    assert split_cases(ids, (0.7, 0.1, 0.2), seed=3) == splits
    assert split_cases(ids, (0.7, 0.1, 0.2), seed=4) != splits
    tiny = split_cases(ids[:3], (0.98, 0.01, 0.01), seed=0)  # every non-zero split gets a case
    assert [len(tiny[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    assert split_cases(ids[:2], (0.5, 0.5, 0.0), seed=0)["test"] == []
    with pytest.raises(ConfigError, match="at least 3 cases"):
        split_cases(ids[:2], (0.7, 0.1, 0.2), seed=0)


@pytest.mark.parametrize("text", ["0.7,0.1", "0.7,0.2,0.2", "a,b,c", "1.2,-0.1,-0.1", "nan,0,1"])
def test_parse_split_rejects(text: str) -> None:
    """Two values, a sum of 1.1, text, negatives and NaN are each a ConfigError naming split."""
    with pytest.raises(ConfigError, match="^split: "):
        parse_split(text)


def test_parse_split_tolerance() -> None:
    """Exact fractions parse unchanged and a sum off by 5e-7 (within the 1e-6 tolerance) is accepted."""
    assert parse_split("0.7,0.1,0.2") == (0.7, 0.1, 0.2)
    assert parse_split([1 / 3, 1 / 3, 1 / 3 + 5e-7]) == pytest.approx((1 / 3,) * 3, abs=1e-6)


def test_square_box_and_crop_resize() -> None:
    """square_box centres a square on a 6x14 box; crop_resize zero-pads a box that starts outside the array,
    keeps labels in their set and doubles a 4x4 label block to 8x8 by nearest neighbour."""
    mask = np.zeros((20, 30), bool)
    mask[4:10, 6:20] = True  # 6 x 14 box -> 14 x 14 square centred at (7, 13)
    assert square_box(mask) == (0, 14, 6, 20)
    images = np.zeros((2, 4, 20, 30), np.float32)
    images[:, :, 4:10, 6:20] = 1.0
    label = np.zeros((2, 20, 30), np.uint8)
    label[:, 5:9, 8:12] = 3
    out, lab = crop_resize(images, label, (-2, 12, 6, 20), 28)  # starts outside: zero padding
    assert out.shape == (2, 4, 28, 28) and lab.shape == (2, 28, 28) and lab.dtype == np.uint8
    assert set(np.unique(lab)) <= {0, 3} and out.min() >= 0 and out.max() <= 1
    # Nearest-neighbour doubling: the label block (rows 5..8 -> 7..10 in the crop, cols 2..5) doubles.
    assert (lab[0] == 3).sum() == 4 * 4 * 4
    np.testing.assert_allclose(out[0, 0, :4], 0.0)  # the 2 padded rows stay zero


def test_build_schema_and_content(release: Path, tmp_path: Path) -> None:
    """A --size 16 'max' build: root attributes, shapes, dtypes, chunking and compression per split, fused equal
    to fuse_batch of the recorded inputs, labels in {0..3}, every slice with tumour, no case in two splits,
    tumour-free case skipped."""
    summary = build(release, tmp_path / "pkg", size=16, fusion="max", fusion_inputs="flair,t1ce")
    assert summary["skipped_cases"] == ["BraTS2021_00006"]
    with h5py.File(tmp_path / "pkg" / "brats_fuse.h5", "r") as h5:
        assert h5.attrs["fusion_method"] == "max"
        assert list(h5.attrs["fusion_inputs"]) == ["flair", "t1ce"]
        assert h5.attrs["format_version"] == 2
        for key in ("source_dataset", "label_scheme", "builder_version", "created"):
            assert key in h5.attrs
        seen: dict[str, set[str]] = {}
        for split in ("train", "val", "test"):
            group = h5[split]
            n = summary["splits"][split]["slices"]
            assert group["source"].shape == (n, 4, 16, 16) and group["source"].dtype == np.float32
            assert group["fused"].shape == (n, 1, 16, 16) and group["label"].dtype == np.uint8
            assert group["source"].chunks == (1, 4, 16, 16) and group["source"].compression == "gzip"
            assert list(group["source"].attrs["modalities"]) == list(MODALITIES)
            source, fused = group["source"][:], group["fused"][:]
            expected = fuse_batch(source[:, [3, 1]], "max")
            np.testing.assert_array_equal(fused[:, 0], expected)
            assert set(np.unique(group["label"][:])) <= {0, 1, 2, 3}
            assert (group["label"][:] > 0).any(axis=(1, 2)).all()  # every slice carries tumour
            seen[split] = set(group["case_id"].asstr()[:])
        assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"])
        assert not (seen["val"] & seen["test"])


def test_native_size_slices_match_the_volume(release: Path, tmp_path: Path) -> None:
    """Without --size the stored slices are exactly load_case's volume slices z 3, 5, 7 (the hand-derived rule
    for case 0's radius-3 tumour at z 5), images and labels alike; empty splits keep (0, 24, 24)."""
    from fuse4seg.data.release.brats import find_cases, load_case

    build(release, tmp_path / "pkg", split=(1.0, 0.0, 0.0))
    case0 = load_case(find_cases(release)[0])
    with h5py.File(tmp_path / "pkg" / "brats_fuse.h5", "r") as h5:
        rows = np.flatnonzero(h5["train/case_id"].asstr()[:] == "BraTS2021_00000")
        z = h5["train/slice_index"][rows]
        # Tumour sphere of radius 3 at z = 5: areas peak at z = 5, candidates z = 3..7 -> 3, 5, 7.
        np.testing.assert_array_equal(z, [3, 5, 7])
        np.testing.assert_array_equal(h5["train/source"][rows], np.moveaxis(case0.images[..., z], -1, 0))
        np.testing.assert_array_equal(h5["train/label"][rows], np.moveaxis(case0.label[..., z], -1, 0))
        assert h5["val/source"].shape[0] == 0 and h5["test/label"].shape == (0, 24, 24)
    expected = tumour_label((24, 24, 10), (12.0, 12.0, 5.0), 3.0)
    assert (case0.label > 0).sum() == (expected > 0).sum()


def test_rebuild_is_byte_identical(release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With SOURCE_DATE_EPOCH fixed, 1 and 2 workers give byte-identical files with that date in the card;
    another seed gives a different HDF5 file."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    build(release, tmp_path / "a", size=16, seed=5)
    build(release, tmp_path / "b", size=16, seed=5, workers=2)
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b")
    assert "2023-11-14T22:13:20Z" in (tmp_path / "a" / "README.md").read_text()
    build(release, tmp_path / "c", size=16, seed=7)
    assert file_hashes(tmp_path / "a")["brats_fuse.h5"] != file_hashes(tmp_path / "c")["brats_fuse.h5"]


def test_split_left_without_tumour_is_an_error(release: Path, tmp_path: Path) -> None:
    """Seed 6 leaves only the tumour-free case in test: a DataError naming the split and the case, and nothing is
    written."""
    with pytest.raises(DataError, match="split test has no tumour-bearing case .*BraTS2021_00006"):
        build(release, tmp_path / "pkg", seed=6)
    assert list(tmp_path.iterdir()) == []


def test_dataset_content_hashes_match_without_source_date_epoch(release: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SOURCE_DATE_EPOCH two builds differ only in dates: all 21 HDF5 datasets (texts included) hash identically."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    hashes = []
    for name in ("a", "b"):
        build(release, tmp_path / name, size=16)
        with h5py.File(tmp_path / name / "brats_fuse.h5", "r") as h5:
            content = {}
            h5.visititems(lambda key, obj, c=content: c.__setitem__(key, hashlib.sha256(
                np.ascontiguousarray(obj[()]).tobytes() if obj.dtype.kind != "O" else
                "|".join(obj.asstr()[()]).encode()).hexdigest()) if isinstance(obj, h5py.Dataset) else None)
        hashes.append(content)
    assert hashes[0] == hashes[1] and len(hashes[0]) == 21


def test_fusion_fn_replaces_the_rule(release: Path, tmp_path: Path) -> None:
    """A fusion_fn is called on (K, 2, 16, 16) batches of the fusion inputs and its output stored as fused with
    fusion_name as fusion_method; a wrong output shape is a DataError leaving nothing behind."""
    calls = []

    def half_sum(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape)
        return x.sum(axis=1) / 2

    build(release, tmp_path / "pkg", size=16, fusion_fn=half_sum, fusion_name="fusion-cnn@ckpt")
    with h5py.File(tmp_path / "pkg" / "brats_fuse.h5", "r") as h5:
        assert h5.attrs["fusion_method"] == "fusion-cnn@ckpt"
        source, fused = h5["train/source"][:], h5["train/fused"][:, 0]
    np.testing.assert_allclose(fused, (source[:, 1] + source[:, 3]) / 2, atol=1e-6)
    assert all(shape[1:] == (2, 16, 16) for shape in calls)

    with pytest.raises(DataError, match="fusion_fn returned shape"):
        build(release, tmp_path / "bad", fusion_fn=lambda x: x[:, :1])
    assert not (tmp_path / "bad").exists()


def test_library_errors_leave_nothing_behind(release: Path, tmp_path: Path) -> None:
    """Bad --slices-per-case, --brats with --phantom, --size 4 and cases of mixed slice sizes raise before or
    during the build and leave tmp_path empty."""
    with pytest.raises(ConfigError, match="^slices_per_case: must be >= 1"):
        build(release, tmp_path / "x", slices_per_case=0)
    with pytest.raises(ConfigError, match="brats: cannot be combined with phantom"):
        build_benchmark(tmp_path / "x", brats=release, phantom=3)
    with pytest.raises(ConfigError, match="^size: must be >= 8 pixels, got 4"):
        build(release, tmp_path / "x", size=4)
    with pytest.raises(DataError, match="^size: case BraTS2021_00002: slices are"):  # mixed slice sizes need resampling
        mixed = write_release(tmp_path / "mixed", 3)
        import shutil

        import nibabel as nib

        case = mixed / "BraTS2021_00002"
        for file in case.iterdir():
            img = nib.load(file)
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:20], img.affine), file)
        build(mixed, tmp_path / "x")
    shutil.rmtree(tmp_path / "mixed")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_crop_resize_many_slices_equals_one_at_a_time() -> None:
    """160 planes (over OpenCV's 128-channel limit, resized in blocks) equal resizing each slice alone, and
    bilinear resizing keeps a constant image constant."""
    rng = np.random.default_rng(2)
    images = rng.random((40, 4, 30, 26)).astype(np.float32)
    label = rng.integers(0, 4, (40, 30, 26)).astype(np.uint8)
    out, lab = crop_resize(images, label, (0, 30, -2, 28), 45)
    for i in (0, 17, 39):
        one, one_lab = crop_resize(images[i:i + 1], label[i:i + 1], (0, 30, -2, 28), 45)
        np.testing.assert_allclose(out[i], one[0], atol=1e-5)  # OpenCV's SIMD paths differ in the last bit
        np.testing.assert_array_equal(lab[i], one_lab[0])
    flat, _ = crop_resize(np.full((2, 4, 30, 30), 0.25, np.float32), label[:2, :, :26].repeat(2, 2)[:, :, :30],
                          (0, 30, 0, 30), 45)
    np.testing.assert_allclose(flat, 0.25, atol=1e-6)  # bilinear keeps constants


def test_os_errors_say_whether_a_read_or_a_write_failed(release: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An OS error naming a source file is reported as 'cannot read FILE', one naming a file in the
    output as 'cannot write OUT' (before the fix both read 'cannot write OUT'); without a file name the
    stage decides (listing the release is a read); nothing is left behind either way."""
    import errno

    from fuse4seg.data.package import croissant as package
    from fuse4seg.data.release import brats

    case_file = release / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz"

    def unreadable(root: Path) -> list:
        """find_cases stand-in failing as an unreadable file in the release would."""
        raise PermissionError(errno.EACCES, "Permission denied", str(case_file))

    def no_name(root: Path) -> list:
        """find_cases stand-in failing with an I/O error that names no file."""
        raise OSError(errno.EIO, "Input/output error")

    def disk_full(directory: Path, meta: dict) -> None:
        """write_package_files stand-in failing as a full disk would, on a file it writes."""
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(directory) / "README.md"))

    with monkeypatch.context() as patch:
        patch.setattr(brats, "find_cases", unreadable)
        with pytest.raises(Fuse4SegError, match=f"^cannot read {case_file}: Permission denied$"):
            build(release, tmp_path / "out")
        patch.setattr(brats, "find_cases", no_name)
        with pytest.raises(Fuse4SegError, match=f"^cannot read {release}: Input/output error$"):
            build(release, tmp_path / "out")
    with monkeypatch.context() as patch:
        patch.setattr(package, "write_package_files", disk_full)
        with pytest.raises(Fuse4SegError, match=rf"^cannot write {tmp_path / 'out'}: No space left on device \("):
            build(release, tmp_path / "out", size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_resize_planes_over_128_channels_equals_cv2_per_plane() -> None:
    """geometry.resize_planes on 300 planes (three blocks of <= 128 channels) equals cv2.resize of each
    plane alone, for bilinear and nearest; crop_box zero-pads a box that starts outside the array."""
    import cv2

    from fuse4seg.data.release.geometry import MAX_CV_CHANNELS, crop_box, resize_planes

    rng = np.random.default_rng(5)
    planes = rng.random((300, 21, 17)).astype(np.float32)
    for interpolation in (cv2.INTER_LINEAR, cv2.INTER_NEAREST):
        out = resize_planes(planes, 33, interpolation)
        expected = np.stack([cv2.resize(p, (33, 33), interpolation=interpolation) for p in planes])
        assert out.shape == (300, 33, 33) and MAX_CV_CHANNELS == 128
        np.testing.assert_allclose(out, expected, atol=1e-5)
    cropped = crop_box(np.ones((2, 4, 5), np.float32), (-1, 4, 1, 6))
    assert cropped.shape == (2, 5, 5) and cropped[:, 0].sum() == 0 and cropped[:, :, -1].sum() == 0
    assert cropped[:, 1:, :4].min() == 1


def _rehash(directory: Path) -> None:
    """Update croissant.json's sha256/size of a deliberately edited brats_fuse.h5 (so verify reaches the schema)."""
    import json

    from fuse4seg.io import sha256_file

    path, h5_path = directory / "croissant.json", directory / "brats_fuse.h5"
    meta = json.loads(path.read_text())
    for entry in meta["distribution"]:
        if entry["contentUrl"] == "brats_fuse.h5":
            entry["sha256"], entry["contentSize"] = sha256_file(h5_path), f"{h5_path.stat().st_size} B"
    path.write_text(json.dumps(meta))


def test_slice_size_attribute_recorded_required_and_validated(release: Path, tmp_path: Path) -> None:
    """brats_fuse.h5 records the geometry rule: slice_size = --size (16) or 0 without --size, named in the card;
    a file without it (format 2 requires it), or with a slice_size of the wrong type, negative, or disagreeing with
    the slices is a one-line DataError from open_validated and verify."""
    import shutil

    from fuse4seg.data.package.h5format import open_validated, slice_size
    from fuse4seg.data.package.verify import verify

    build(release, tmp_path / "sized", size=16)
    build(release, tmp_path / "native")
    for name, expected in (("sized", 16), ("native", 0)):
        h5, counts = open_validated(tmp_path / name / "brats_fuse.h5")
        with h5:
            assert slice_size(h5, name) == expected and h5.attrs["slice_size"].dtype.kind == "i"
        assert f"`slice_size` ({expected}:" in (tmp_path / name / "README.md").read_text()
    import nibabel as nib

    t1 = nib.load(next(release.glob("*/*_t1.nii.gz")))
    assert (counts["height"], counts["width"]) == t1.shape[:2]  # native: the volume's in-plane size
    copy = tmp_path / "copy"
    for value, message in ((None, r"missing root attribute\(s\) slice_size"), ("16", "slice_size must be one integer >= 0"),
                           (np.array([16, 16]), "slice_size must be one integer >= 0"),
                           (16.0, "slice_size must be one integer >= 0"), (-1, "slice_size must be one integer >= 0"),
                           (8, "slice_size is 8 but the slices are 16 x 16")):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(tmp_path / "sized", copy)
        with h5py.File(copy / "brats_fuse.h5", "r+") as h5:
            if value is None:
                del h5.attrs["slice_size"]
            else:
                h5.attrs["slice_size"] = value
        _rehash(copy)
        for check in (lambda: open_validated(copy / "brats_fuse.h5"), lambda: verify(copy)):
            with pytest.raises(DataError, match=message) as caught:
                check()
            assert str(caught.value).startswith(str(copy / "brats_fuse.h5")) and "\n" not in str(caught.value)


def test_spacing_records_the_physical_pixel_size(write_brats_case, tmp_path: Path) -> None:
    """Cases with 1.5 x 1.2 x 3 mm voxels and a brain spanning the whole 20 x 16 grid: --size 16 crops each to a
    20-voxel square, so pixels are 1.5 * 20/16 = 1.875 by 1.2 * 20/16 = 1.5 mm; without --size they stay
    1.5 x 1.2; dz is 3 mm either way. A file without the dataset (format 2 requires it), or with a wrongly
    shaped, non-positive or partial spacing, is a one-line DataError."""
    import shutil

    from fuse4seg.data.package.h5format import open_validated, read_spacing
    from fuse4seg.data.package.verify import verify

    release = tmp_path / "release"
    for i in range(3):
        write_brats_case(release, case_id=f"BraTS2021_{i:05d}", shape=(20, 16, 8), seed=i,
                         affine=np.diag([-1.5, 1.2, 3.0, 1.0]))
    for name, size, expected in (("sized", 16, (1.875, 1.5, 3.0)), ("native", None, (1.5, 1.2, 3.0))):
        build_benchmark(tmp_path / name, brats=release, size=size, slices_per_case=2, split=(0.34, 0.33, 0.33),
                        progress=False)
        h5, counts = open_validated(tmp_path / name / "brats_fuse.h5")
        with h5:
            for split in ("train", "val", "test"):
                assert h5[split]["spacing"].dtype == np.float32
                np.testing.assert_allclose(read_spacing(h5, split, name), [expected] * counts[split], rtol=1e-6)
        assert "`spacing` (N, 3) float32 in mm" in (tmp_path / name / "README.md").read_text()
    h5_entry = next(d for d in json.loads((tmp_path / "sized" / "croissant.json").read_text())["distribution"]
                    if d.get("name") == "brats_fuse.h5")
    assert "spacing: " in h5_entry["description"]  # the HDF5 layout, described in the file's own entry
    copy = tmp_path / "copy"

    def edit(change: object) -> None:
        """A re-hashed copy of the sized package with ``change(h5)`` applied."""
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(tmp_path / "sized", copy)
        with h5py.File(copy / "brats_fuse.h5", "r+") as h5:
            change(h5)
        _rehash(copy)

    broken = {
        "missing dataset /train/spacing": lambda h5: [h5[s].__delitem__("spacing") for s in ("train", "val", "test")],
        "must be float32": lambda h5: (h5["val"].__delitem__("spacing"), h5["val"].create_dataset(
            "spacing", data=np.ones((h5["val/label"].shape[0], 2), np.float32))),
        "missing dataset /test/spacing": lambda h5: h5["test"].__delitem__("spacing"),
        "not finite and > 0 mm": lambda h5: h5["train/spacing"].__setitem__((0, 2), 0.0),
    }
    for message, change in broken.items():
        edit(change)
        with pytest.raises(DataError, match=message) as caught:
            verify(copy)
        assert "\n" not in str(caught.value)


def test_library_build_records_its_own_command_line(release: Path, tmp_path: Path) -> None:
    """build_benchmark without ``command`` records the equivalent CLI call (it used to write `--out DIR` and drop
    --split); command_line quotes paths and adds --phantom-scale and --fusion-checkpoint only when they matter."""
    from fuse4seg.data.build.builder import command_line

    out = tmp_path / "my pkg"
    build_benchmark(out, brats=release, size=16, slices_per_case=3, split="0.6,0.2,0.2", progress=False)
    expected = (f"fuse4seg build-benchmark --out '{out}' --brats {release} --fusion-inputs t1ce,flair "
                f"--fusion laplacian --size 16 --slices-per-case 3 --split 0.6,0.2,0.2 --seed 0")
    assert f"```\n{expected}\n```" in (out / "README.md").read_text()
    assert command_line("o", phantom=4, phantom_scale=0.25, fusion_inputs="flair,t1", fusion="max", split=(1, 0, 0),
                        seed=3, fusion_checkpoint="r/best.pt") == (
        "fuse4seg build-benchmark --out o --phantom 4 --phantom-scale 0.25 --fusion-inputs flair,t1 --fusion max "
        "--slices-per-case 8 --split 1,0,0 --seed 3 --fusion-checkpoint r/best.pt")
    assert "--phantom-scale" not in command_line("o", brats="b", phantom_scale=0.5)
