"""``build-benchmark --volumes``: the volumetric layout equals independent crops of the release, the slices are planes
of it, patches equal slices of the zero-padded volume, verify checks it, and a build without it is unchanged."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from fuse4seg.data import BraTSFuseVolumes
from fuse4seg.data.build.builder import build_benchmark
from fuse4seg.data.package.h5format import open_validated
from fuse4seg.data.package.verify import verify
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.fusion import fuse_batch
from fuse4seg.io import sha256_file

SPLITS = ("train", "val", "test")
MODALITY_FILES = ("t1", "t1ce", "t2", "flair")  # MODALITIES order, written out
CANONICAL = np.array([0, 1, 2, 0, 3], dtype=np.uint8)  # BraTS 2021 value -> canonical (3 never occurs)


@pytest.fixture(scope="module")
def packages(phantom_release: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The 6-case phantom release built twice, 3 slices per case, without --size: with and without --volumes."""
    root = tmp_path_factory.mktemp("volumes")
    return {name: Path(build_benchmark(root / name, brats=phantom_release, slices_per_case=3, volumes=name == "volumes",
                                  progress=False)["out"]) for name in ("volumes", "slices")}


@pytest.fixture
def damaged(packages: dict[str, Path], tmp_path: Path) -> Callable[[Callable[[h5py.File], None]], Path]:
    """Copy the --volumes package, apply an edit to its HDF5 file, update croissant.json's hash; returns the copy."""
    def make(edit: Callable[[h5py.File], None]) -> Path:
        """The edited copy."""
        copy = tmp_path / "copy"
        shutil.copytree(packages["volumes"], copy)
        with h5py.File(copy / "brats_fuse.h5", "r+") as h5:
            edit(h5)
        meta = json.loads((copy / "croissant.json").read_text())
        for entry in meta["distribution"]:
            if entry["contentUrl"] == "brats_fuse.h5":
                entry["sha256"] = sha256_file(copy / "brats_fuse.h5")
                entry["contentSize"] = f"{(copy / 'brats_fuse.h5').stat().st_size} B"
        (copy / "croissant.json").write_text(json.dumps(meta))
        return copy
    return make


def release_case(release: Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(canonical label (X, Y, Z) uint8, brain mask = any raw modality > 0) read with nibabel alone."""
    raw = np.stack([np.asarray(nib.load(release / case_id / f"{case_id}_{m}.nii.gz").dataobj) for m in MODALITY_FILES])
    seg = np.asarray(nib.load(release / case_id / f"{case_id}_seg.nii.gz").dataobj).astype(np.int64)
    return CANONICAL[seg], (raw > 0).any(axis=0)


def test_layout_shapes_chunks_and_attributes(packages: dict[str, Path]) -> None:
    """Every case of every slice split has a group /volumes/<split>/<case> with source (4, D, H, W), fused
    (1, D, H, W) float32 and label (D, H, W) uint8, gzip-1 in 32^3 chunks clipped to the volume, and the attributes
    box (3, 2), shape (3,) int64, affine (4, 4), spacing (3,) float64 (4 mm phantom voxels)."""
    with h5py.File(packages["volumes"] / "brats_fuse.h5", "r") as h5:
        assert h5.attrs["volumes"] == 1 and h5.attrs["slice_size"] == 0
        assert sorted(h5) == ["test", "train", "val", "volumes"] and sorted(h5["volumes"]) == sorted(SPLITS)
        for split in SPLITS:
            slice_cases = sorted(set(h5[split]["case_id"].asstr()[()]))
            assert list(h5["volumes"][split]) == slice_cases
            for case_id in slice_cases:
                case = h5["volumes"][split][case_id]
                assert sorted(case) == ["fused", "label", "source"]
                assert sorted(case.attrs) == ["affine", "box", "shape", "spacing"]
                d, h, w = case["label"].shape
                chunk = (min(32, d), min(32, h), min(32, w))
                for name, dtype, shape, chunks in (("source", "float32", (4, d, h, w), (1, *chunk)),
                                                   ("fused", "float32", (1, d, h, w), (1, *chunk)),
                                                   ("label", "uint8", (d, h, w), chunk)):
                    data = case[name]
                    assert (str(data.dtype), data.shape, data.chunks) == (dtype, shape, chunks), name
                    assert (data.compression, data.compression_opts, data.shuffle) == ("gzip", 1, False), name
                assert [m.decode() if isinstance(m, bytes) else m for m in case["source"].attrs["modalities"]] == \
                    list(MODALITY_FILES)
                assert case.attrs["box"].dtype == np.int64 and case.attrs["box"].shape == (3, 2)
                assert case.attrs["shape"].tolist() == [60, 60, 39] and case.attrs["spacing"].tolist() == [4.0] * 3
                assert case.attrs["affine"].dtype == np.float64 and case.attrs["affine"].shape == (4, 4)
                box = case.attrs["box"]
                assert (box[:, 1] - box[:, 0]).tolist() == [h, w, d]


def test_volumes_equal_independent_crops_of_the_release(packages: dict[str, Path], phantom_release: Path) -> None:
    """Read with nibabel alone: box = the bounding box of the brain mask (any modality > 0); label = the release
    label mapped to canonical and cropped (no tumour voxel lost); source = load_case's normalised images cropped to
    the box with (D, H, W) = (z, x, y); affine equals the NIfTI's; fused = the rule on each stored axial plane."""
    from fuse4seg.data.release.brats import find_case, load_case

    with h5py.File(packages["volumes"] / "brats_fuse.h5", "r") as h5:
        for split in SPLITS:
            for case_id, case in h5["volumes"][split].items():
                label, brain = release_case(phantom_release, case_id)
                hits = [np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
                box = np.array([[h[0], h[-1] + 1] for h in hits])
                assert case.attrs["box"].tolist() == box.tolist()
                (x0, x1), (y0, y1), (z0, z1) = box.tolist()
                np.testing.assert_array_equal(case["label"][()], label[x0:x1, y0:y1, z0:z1].transpose(2, 0, 1))
                assert np.count_nonzero(case["label"][()]) == np.count_nonzero(label) > 0
                loaded = load_case(find_case(phantom_release / case_id))
                expected = loaded.images[:, x0:x1, y0:y1, z0:z1].transpose(0, 3, 1, 2)
                np.testing.assert_array_equal(case["source"][()], expected)
                np.testing.assert_array_equal(case.attrs["affine"],
                                              nib.load(phantom_release / case_id / f"{case_id}_t1.nii.gz").affine)
                planes = case["source"][()][[1, 3]].transpose(1, 0, 2, 3)  # t1ce, flair: (D, 2, H, W)
                np.testing.assert_array_equal(case["fused"][()], fuse_batch(planes, "laplacian")[None])


def test_slices_are_planes_of_the_volumes(packages: dict[str, Path]) -> None:
    """Without --size every stored slice of z is plane z - z0 of its case's source and label inside the box, and
    zero outside it."""
    with h5py.File(packages["volumes"] / "brats_fuse.h5", "r") as h5:
        for split in SPLITS:
            group = h5[split]
            for k, (case_id, z) in enumerate(zip(group["case_id"].asstr()[()], group["slice_index"][()])):
                case = h5["volumes"][split][case_id]
                (x0, x1), (y0, y1), (z0, z1) = case.attrs["box"].tolist()
                assert z0 <= z < z1
                for name, plane in (("source", case["source"][:, z - z0]), ("label", case["label"][z - z0])):
                    stored = group[name][k]
                    np.testing.assert_array_equal(stored[..., x0:x1, y0:y1], plane)
                    outside = stored.copy()
                    outside[..., x0:x1, y0:y1] = 0
                    assert not outside.any()


def test_read_patch_equals_slicing_the_zero_padded_volume(packages: dict[str, Path]) -> None:
    """read_patch equals a slice of the whole volume padded by 40 zeros on every side (label 0), for patches inside,
    over each edge, and wholly outside; items equal the file's arrays; lazy, cached and unpickled readers agree."""
    lazy = BraTSFuseVolumes(packages["volumes"], "train")
    cached = BraTSFuseVolumes(packages["volumes"], "train", cache=True)
    clone = pickle.loads(pickle.dumps(lazy))
    assert cached.cached and not lazy.cached and len(lazy) == 4 and lazy.case_ids == sorted(lazy.case_ids)
    rng = np.random.default_rng(0)
    for i in range(len(lazy)):
        item = lazy[i]
        d, h, w = lazy.dims[i]
        assert item["source"].shape == (4, d, h, w) and item["label"].dtype.is_floating_point is False
        with h5py.File(packages["volumes"] / "brats_fuse.h5", "r") as h5:
            case = h5["volumes/train"][item["case_id"]]
            np.testing.assert_array_equal(item["source"].numpy(), case["source"][()])
            np.testing.assert_array_equal(item["label"].numpy(), case["label"][()])
            assert item["box"].tolist() == case.attrs["box"].tolist()
        padded = {name: np.pad(item[name].numpy(), [(0, 0)] * (item[name].ndim - 3) + [(40, 40)] * 3)
                  for name in ("source", "fused", "label")}
        starts = [(0, 0, 0), (-5, -7, -3), (d - 10, h - 4, w - 20), (d + 2, 0, 0), (-40, -40, -40)]
        starts += [tuple(rng.integers(-20, 40, size=3).tolist()) for _ in range(6)]
        for start in starts:
            size = (16, 24, 8)
            cut = tuple(slice(s + 40, s + 40 + n) for s, n in zip(start, size))
            for reader in (lazy, cached, clone):
                patch = reader.read_patch(i, start, size)
                assert patch["start"].tolist() == list(start) and patch["case_id"] == item["case_id"]
                for name in ("source", "fused", "label"):
                    lead = (slice(None),) * (padded[name].ndim - 3)
                    np.testing.assert_array_equal(patch[name].numpy(), padded[name][(*lead, *cut)])
    with pytest.raises(ConfigError, match="size: expected three integers >= 1"):
        lazy.read_patch(0, (0, 0, 0), (0, 4, 4))
    with pytest.raises(ConfigError, match="over the limit"):
        lazy.read_patch(0, (0, 0, 0), (1024, 1024, 1024))
    with pytest.raises(DataError, match="holds no volumes"):
        BraTSFuseVolumes(packages["slices"], "train")


def test_verify_passes_and_a_build_without_volumes_is_unchanged(packages: dict[str, Path]) -> None:
    """verify passes both builds and counts the volumes; without --volumes the file holds exactly the three splits'
    six datasets and volumes = 0, and their contents equal the --volumes build's byte for byte; a file written
    before the attribute existed (none) still opens."""
    report = verify(packages["volumes"])
    assert report["volumes"] == {s: report["splits"][s]["cases"] for s in SPLITS}
    assert verify(packages["slices"])["volumes"] is None
    with h5py.File(packages["slices"] / "brats_fuse.h5", "r") as plain, \
            h5py.File(packages["volumes"] / "brats_fuse.h5", "r") as full:
        assert plain.attrs["volumes"] == 0 and sorted(plain) == sorted(SPLITS)
        for split in SPLITS:
            assert sorted(plain[split]) == ["case_id", "fused", "label", "slice_index", "source", "spacing", "text"]
            for name in plain[split]:
                a, b = plain[split][name], full[split][name]
                assert a.dtype == b.dtype and a.chunks == b.chunks
                assert (a.asstr()[()] == b.asstr()[()]).all() if a.dtype.kind == "O" else \
                    np.array_equal(a[()], b[()])
    old = packages["slices"].parent / "old.h5"
    shutil.copy(packages["slices"] / "brats_fuse.h5", old)
    with h5py.File(old, "r+") as h5:
        del h5.attrs["volumes"]
    h5, counts = open_validated(old)
    h5.close()
    assert counts["train"] > 0


def _case(h5: h5py.File, split: str = "train") -> h5py.Group:
    """The first case group of ``split``'s volumes."""
    group = h5["volumes"][split]
    return group[next(iter(group))]


def _replace(case: h5py.Group, name: str, data: np.ndarray, chunks: tuple[int, ...]) -> None:
    """Replace dataset ``name`` of ``case`` by ``data``, gzip-1 with ``chunks``, keeping its attributes."""
    attrs = dict(case[name].attrs)
    del case[name]
    case.create_dataset(name, data=data, chunks=chunks, compression="gzip", compression_opts=1)
    case[name].attrs.update(attrs)


def _too_large(h5: h5py.File) -> None:
    """A case claiming a 600^3 source (no data stored: the header alone)."""
    case = _case(h5)
    del case["source"]
    case.create_dataset("source", shape=(4, 600, 600, 600), dtype="float32", chunks=(1, 32, 32, 32),
                        compression="gzip", compression_opts=1)


def _move_case(h5: h5py.File) -> None:
    """A case of train also stored under val (a patient in two splits)."""
    case = _case(h5)
    h5.copy(case, h5["volumes/val"], name=case.name.rsplit("/", 1)[1])


@pytest.mark.parametrize(("edit", "message"), [
    (lambda h5: _replace(_case(h5), "label", _case(h5)["label"][()].astype(np.int16), _case(h5)["label"].chunks),
     "label is int16("),
    (lambda h5: _case(h5).attrs.__setitem__("box", _case(h5).attrs["box"] + 30), "attribute box"),
    (lambda h5: _case(h5).create_dataset("extra", data=np.zeros(3)), "unexpected object /volumes/train/"),
    (_too_large, "declares a 600 x 600 x 600 volume; the limit is 1 to 134217728 voxels"),
    (lambda h5: _case(h5).attrs.__setitem__("spacing", np.array([4.0, 0.0, 4.0])), "attribute spacing"),
    (lambda h5: _case(h5).attrs.__setitem__("shape", np.array([60, 60], dtype=np.int64)),
     "attribute shape is int64(2,), expected int64(3,)"),
    (lambda h5: _case(h5).attrs.__setitem__("note", "x"), "has attributes"),
    (lambda h5: _replace(_case(h5), "fused", _case(h5)["fused"][()], (1, 8, 8, 8)), "expected chunks"),
    (lambda h5: h5.attrs.__setitem__("volumes", 0), "/volumes is present but root attribute volumes is not 1"),
    (lambda h5: h5.__delitem__("volumes"), "missing group /volumes"),
    (_move_case, "has volumes in both train and val"),
    (lambda h5: h5["volumes/train"].move(next(iter(h5["volumes/train"])), "BraTS2021_99999"),
     "/volumes/train and /train hold different cases"),
    (lambda h5: _replace(_case(h5), "source", _case(h5)["source"][()] * 2, _case(h5)["source"].chunks),
     "source[:, 0:"),
    (lambda h5: _replace(_case(h5), "label", _case(h5)["label"][()] + 4, _case(h5)["label"].chunks), "has label"),
])
def test_verify_refuses_damaged_volumes_in_one_line(damaged: Callable, edit: Callable[[h5py.File], None],
                                                    message: str) -> None:
    """Each crafted damage to the volumes (dtype, box outside the shape, an extra dataset, a 600^3 header, spacing 0,
    a wrong attribute shape, an extra attribute, other chunks, the root flag, a patient in two splits, volumes of
    other cases than the slices', values outside [0, 1] or labels over 3) fails verify with one line naming the file."""
    copy = damaged(edit)
    with pytest.raises(DataError) as caught:
        verify(copy)
    text = str(caught.value)
    assert message in text and "\n" not in text and text.startswith(str(copy / "brats_fuse.h5")), text


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # rdflib inside mlcroissant
def test_card_croissant_and_command_record_the_volumes(packages: dict[str, Path]) -> None:
    """The card records --volumes in its command line and describes the layout and the per-plane fusion;
    croissant.json's description of the HDF5 file states the volume groups (no record set: mlcroissant cannot read
    HDF5) and mlcroissant loads it without errors or warnings."""
    card = (packages["volumes"] / "README.md").read_text()
    assert "--volumes" in card and "Whole volumes (`--volumes`)" in card and "each axial plane" in card
    assert "`/volumes/<split>/<case_id>`" in card and "`box` (3, 2) int64" in card
    assert "Whole volumes" not in (packages["slices"] / "README.md").read_text()
    meta = json.loads((packages["volumes"] / "croissant.json").read_text())
    assert meta["recordSet"] == []
    (h5,) = [d for d in meta["distribution"] if d["@id"] == "brats_fuse.h5"]
    volumes = h5["description"].split(" Whole volumes: ", 1)[1]
    assert volumes.startswith("one group /volumes/<split>/<case_id> per case, with source: (4, D, H, W) float32 in")
    assert " | attribute box: (3, 2) int64" in volumes
    mlcroissant = pytest.importorskip("mlcroissant")
    dataset = mlcroissant.Dataset(jsonld=packages["volumes"] / "croissant.json")
    assert not dataset.metadata.ctx.issues.errors and not dataset.metadata.ctx.issues.warnings


def test_a_fusion_callable_fuses_each_plane(phantom_release: Path, tmp_path: Path) -> None:
    """With a Python fusion callable the fused volume is that callable on each axial plane of the stored inputs."""
    mean = lambda sources: sources.mean(axis=1)
    build_benchmark(tmp_path / "pkg", brats=phantom_release, slices_per_case=1, volumes=True, fusion_fn=mean,
                    fusion_name="mean-callable", progress=False)
    ds = BraTSFuseVolumes(tmp_path / "pkg", "test")
    item = ds[0]
    expected = np.clip(item["source"].numpy()[[1, 3]].mean(axis=0, dtype=np.float32), 0, 1)
    np.testing.assert_allclose(item["fused"].numpy()[0], expected, rtol=0, atol=1e-7)


def test_rebuild_with_volumes_is_byte_identical(phantom_release: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With SOURCE_DATE_EPOCH set, a --volumes build with 1 and with 2 workers gives byte-identical files."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    digests = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        build_benchmark(out, brats=phantom_release, slices_per_case=2, volumes=True, workers=workers, progress=False,
                        command="fuse4seg build-benchmark --volumes")
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())})
    assert digests[0] == digests[1] and {"brats_fuse.h5", "README.md", "croissant.json"} <= set(digests[0])


def test_size_does_not_resize_the_volumes(packages: dict[str, Path], phantom_release: Path, tmp_path: Path) -> None:
    """With --size 32 the slices are 32 x 32 but the volumes are the native-grid ones of the build without --size."""
    build_benchmark(tmp_path / "pkg", brats=phantom_release, slices_per_case=3, size=32, volumes=True, progress=False)
    with h5py.File(tmp_path / "pkg" / "brats_fuse.h5", "r") as sized, \
            h5py.File(packages["volumes"] / "brats_fuse.h5", "r") as native:
        assert sized["train/source"].shape[2:] == (32, 32)
        for split in SPLITS:
            for case_id, case in sized["volumes"][split].items():
                other = native["volumes"][split][case_id]
                np.testing.assert_array_equal(case["source"][()], other["source"][()])
                assert case.attrs["box"].tolist() == other.attrs["box"].tolist()
