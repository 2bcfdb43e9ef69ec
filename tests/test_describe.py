"""Slice descriptions (fuse4seg.data.package.describe): hand-checked rules, seeded wording, storage in the package as the
optional dataset ``text``, user reports (--reports), verify and older packages without texts."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from fuse4seg.data import BraTSFuse
from fuse4seg.data.build.builder import build_benchmark
from fuse4seg.data.package.describe import (
    NO_TUMOUR,
    conspicuity,
    describe_slice,
    read_reports,
    region_areas,
    slice_rng,
    tumour_location,
    tumour_relation,
)
from fuse4seg.data.package.schema import MAX_DESCRIPTION_BYTES
from fuse4seg.data.package.verify import verify
from fuse4seg.data.release.brats import find_cases, load_case
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import sha256_file

RING = np.zeros((40, 40), np.uint8)
RING[5:35, 5:35] = 2  # oedema all round
RING[12:28, 12:28] = 3  # enhancing rim ...
RING[16:24, 16:24] = 1  # ... around a necrotic core


def rng(seed: int = 0) -> np.random.Generator:
    """A wording RNG."""
    return np.random.default_rng(seed)


def test_areas_are_pixels_times_pixel_area() -> None:
    """A 10 x 10 px ET square at 0.5 x 0.5 mm is 25.0 mm² of ET, TC and WT; absent labels are left out."""
    label = np.zeros((32, 32), np.uint8)
    label[4:14, 4:14] = 3
    assert region_areas(label, (0.5, 0.5)) == {"WT": 25.0, "TC": 25.0, "ET": 25.0}
    areas = region_areas(RING, (1.0, 2.0))
    assert areas == {"WT": 900 * 2.0, "TC": 256 * 2.0, "ET": (256 - 64) * 2.0, "NCR": 64 * 2.0, "ED": 644 * 2.0}


def test_location_follows_the_axis_codes() -> None:
    """With BraTS's LPS storage a blob at high axis-0 indices is left, at low axis-1 indices anterior; RAS flips
    both; z_position gives superior/inferior, None leaves it out; a centred blob is midline."""
    brain = np.ones((60, 60), bool)
    label = np.zeros((60, 60), np.uint8)
    label[45:55, 2:8] = 2
    assert tumour_location(label, brain, 0.9) == {"hemisphere": "left", "ap": "anterior", "si": "superior"}
    assert tumour_location(label, brain, None, ("R", "A", "S")) == {"hemisphere": "right", "ap": "posterior"}
    assert tumour_location(label, brain, 0.1)["si"] == "inferior"
    assert tumour_location(label, brain, None, ("S", "I", "L")) == {}  # not L/R, A/P: no words
    centred = np.zeros((61, 61), np.uint8)
    centred[25:36, 28:33] = 3
    assert tumour_location(centred, np.ones((61, 61), bool))["hemisphere"] == "midline"
    assert tumour_location(np.zeros((8, 8), np.uint8), np.ones((8, 8), bool), 0.5) == {}


def test_relations() -> None:
    """NCR inside an ET ring inside ED: the ring sentence; variants for adjacency and separation."""
    assert tumour_relation(RING) == "oedema surrounding an enhancing rim with a necrotic core"
    beside = np.zeros((40, 40), np.uint8)
    beside[10:20, 10:20] = 3
    beside[10:20, 20:26] = 1
    assert tumour_relation(beside) == "enhancing tumour next to necrosis"
    beside[10:20, 26:30] = 2  # oedema on one side only: touches less than half of the core's boundary
    assert tumour_relation(beside) == "oedema adjacent to enhancing tumour next to necrosis"
    apart = np.zeros((40, 40), np.uint8)
    apart[5:10, 5:10] = 3
    apart[30:35, 30:35] = 2
    assert tumour_relation(apart) == "enhancing tumour with separate oedema"
    assert tumour_relation(np.where(RING == 2, 2, 0)) == "oedema without a tumour core"
    assert tumour_relation(np.zeros((4, 4), np.uint8)) is None


def test_no_tumour_text() -> None:
    """An empty label map reads 'No tumour visible in this slice.'."""
    text = describe_slice(np.zeros((16, 16), np.uint8), np.full((4, 16, 16), 0.5, np.float32), (1.0, 1.0), 0.5, rng())
    assert text == NO_TUMOUR == "No tumour visible in this slice."


def test_conspicuity_picks_the_constructed_modality() -> None:
    """ET made bright on T2 and NCR dark on T1 (others barely differ): those modalities, with their signs."""
    sources = np.full((4, 40, 40), 0.4, np.float32)
    sources[:, :, :3] = 0.0  # background outside the brain
    sources[:, RING == 3] = 0.45
    sources[2, RING == 3] = 0.95  # t2
    sources[0, RING == 1] = 0.05  # t1
    picked = conspicuity(RING, sources)
    assert picked["ET"][0] == "t2" and picked["ET"][1] == pytest.approx(0.55)
    assert picked["NCR"][0] == "t1" and picked["NCR"][1] == pytest.approx(-0.35)
    assert conspicuity(np.ones((4, 4), np.uint8), np.ones((4, 4, 4), np.float32)) == {}  # no normal brain


def test_description_by_hand_and_seeded_wording() -> None:
    """The full text holds the relation, location, areas and conspicuity; a seed fixes it, seeds vary it."""
    sources = np.full((4, 40, 40), 0.4, np.float32)
    sources[1, RING == 3] = 0.9
    sources[3, RING == 2] = 0.8
    sources[1, RING == 1] = 0.1
    text = describe_slice(RING, sources, (0.5, 0.5), 0.5, rng(1))
    assert "oedema surrounding an enhancing rim with a necrotic core" in text
    assert "at the midline (central, mid-level)." in text  # the ring is centred in the 40 x 40 brain
    assert "enhancing tumour 48.0 mm²" in text and "necrotic core 16.0 mm²" in text and "whole tumour 225.0 mm²" in text
    assert "T1ce (brighter" in text and "T1ce (darker" in text and "FLAIR (brighter" in text
    assert text == describe_slice(RING, sources, (0.5, 0.5), 0.5, rng(1))
    assert len({describe_slice(RING, sources, (0.5, 0.5), 0.5, rng(s)) for s in range(12)}) > 1
    assert slice_rng(3, "case", 7).random() == slice_rng(3, "case", 7).random() != slice_rng(4, "case", 7).random()


def _build(release: Path, out: Path, **options: object) -> dict:
    """A small build of ``release`` (2 slices per case, 32 px)."""
    return build_benchmark(out, brats=release, size=32, slices_per_case=2, split=(0.5, 0.25, 0.25), seed=3,
                           progress=False, **options)


@pytest.fixture(scope="module")
def package(phantom_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package of the phantom release, with texts."""
    out = tmp_path_factory.mktemp("describe") / "pkg"
    _build(phantom_release, out)
    return out


def test_build_stores_one_text_per_slice_recomputed_from_the_arrays(package: Path, phantom_release: Path) -> None:
    """Every split stores one text per slice, equal to describe_slice of the stored label, sources and spacing,
    the case's brain z-extent (from the release) and the build's seed; BraTSFuse returns it."""
    brain_z = {}
    for case in find_cases(phantom_release):
        z = np.flatnonzero(load_case(case, require_label=True).brain_mask.any(axis=(0, 1)))
        brain_z[case.case_id] = (z[0], z[-1])
    with h5py.File(package / "brats_fuse.h5", "r") as h5:
        assert h5.attrs["text"] == 1
        for split in ("train", "val", "test"):
            group = h5[split]
            texts = group["text"].asstr()[()]
            assert len(texts) == group["label"].shape[0] > 0
            for i, text in enumerate(texts):
                case_id, z = group["case_id"].asstr()[i], int(group["slice_index"][i])
                low, high = brain_z[case_id]
                expected = describe_slice(group["label"][i], group["source"][i], tuple(group["spacing"][i, :2]),
                                          (z - low) / (high - low), slice_rng(3, case_id, z))
                assert text == expected
    item = BraTSFuse(package, "train")[0]
    assert isinstance(item["text"], str) and item["text"].endswith(".")
    assert BraTSFuse(package, "train", cache=True)[0]["text"] == item["text"]
    assert verify(package)["splits"]["train"]["slices"] > 0
    # croissant.json describes the HDF5 layout in the file's own entry (its record sets are the Parquet export's)
    h5_entry = next(d for d in json.loads((package / "croissant.json").read_text())["distribution"]
                    if d.get("name") == "brats_fuse.h5")
    assert h5_entry["description"].rstrip(". ").split(" | ")[-1].startswith("text: ")
    assert "`text` (N,) UTF-8 string" in (package / "README.md").read_text()


def test_reports_replace_texts(package: Path, phantom_release: Path, tmp_path: Path) -> None:
    """A case-wide report replaces every text of its case, a slice report that slice's; the card records it."""
    with h5py.File(package / "brats_fuse.h5", "r") as h5:
        case_id, z = h5["train/case_id"].asstr()[0], int(h5["train/slice_index"][0])
        other = h5["train/case_id"].asstr()[-1]
    reports = tmp_path / "reports.csv"
    reports.write_text(f'case_id,slice_index,text\n{case_id},{z},"Slice report, ünïcode."\n{other},,Case report.\n',
                       encoding="utf-8")
    out = tmp_path / "pkg"
    summary = _build(phantom_release, out, reports=reports)
    assert f"--reports {reports}" in summary["command"] and f"--reports {reports}" in (out / "README.md").read_text()
    with h5py.File(out / "brats_fuse.h5", "r") as h5, h5py.File(package / "brats_fuse.h5", "r") as old:
        texts, before = list(h5["train/text"].asstr()[()]), list(old["train/text"].asstr()[()])
        ids, zs = h5["train/case_id"].asstr()[()], h5["train/slice_index"][()]
    for text, was, c, s in zip(texts, before, ids, zs):
        want = "Slice report, ünïcode." if (c, s) == (case_id, z) else "Case report." if c == other else was
        assert text == want
    verify(out)


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    (b"case,slice,text\n", "header must be case_id,slice_index,text"),
    (b"case_id,slice_index,text\nNOPE,,x\n", "line 2: unknown case id 'NOPE'"),
    (b"case_id,slice_index,text\nA,1,x\nA,1,y\n", "line 3: duplicate report for case A slice 1"),
    (b"case_id,slice_index,text\nA,1,\xff\xfe\n", "not UTF-8 text"),
    (b"case_id,slice_index,text\nA,one,x\n", "slice_index 'one' is not a non-negative integer"),
    (b"case_id,slice_index,text\nA,,x,y\n", "line 2: expected 3 columns, got 4"),
    (b"case_id,slice_index,text\nA,," + b"x" * (MAX_DESCRIPTION_BYTES + 1), "over the limit of 4096"),
])
def test_bad_reports_are_one_line_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    """Each bad reports file is a ConfigError about --reports on one line naming the problem."""
    path = tmp_path / "reports.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        read_reports(path, ["A", "B"])
    assert info.value.option == "reports" and "\n" not in str(info.value)


def test_bad_reports_stop_the_cli(phantom_release: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """build-benchmark --reports with an unknown case prints one line under the flag and writes nothing."""
    from fuse4seg.cli import main

    path = tmp_path / "r.csv"
    path.write_text("case_id,slice_index,text\nNOPE,,x\n", encoding="utf-8")
    code = main(["build-benchmark", "--out", str(tmp_path / "o"), "--brats", str(phantom_release),
                 "--size", "16", "--slices-per-case", "1", "--reports", str(path)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.count("\n") == 0 and "--reports" in err and "unknown case id 'NOPE'" in err
    assert not (tmp_path / "o").exists()


def _rehash(directory: Path) -> None:
    """Update croissant.json for an edited brats_fuse.h5, so the HDF5 checks are reached."""
    path = directory / "croissant.json"
    meta = json.loads(path.read_text())
    for entry in meta["distribution"]:
        if entry["contentUrl"] == "brats_fuse.h5":
            entry["sha256"] = sha256_file(directory / "brats_fuse.h5")
            entry["contentSize"] = f"{(directory / 'brats_fuse.h5').stat().st_size} B"
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(("value", "message"), [
    (b"bad \xff text", r"/val/text holds a string that is not UTF-8 \(among \[0:\d+\]"),
    ("x" * (MAX_DESCRIPTION_BYTES + 1), "/val/text holds a string of 4097 bytes, over the limit of 4096"),
])
def test_verify_refuses_bad_texts(package: Path, tmp_path: Path, value: object, message: str) -> None:
    """A non-UTF-8 or over-long stored text fails verify on one line."""
    copy = tmp_path / "copy"
    shutil.copytree(package, copy)
    with h5py.File(copy / "brats_fuse.h5", "r+") as h5:
        h5["val/text"][0] = value
    _rehash(copy)
    with pytest.raises(DataError, match=message) as info:
        verify(copy)
    assert "\n" not in str(info.value)


def test_an_older_package_without_texts_still_opens(package: Path, tmp_path: Path) -> None:
    """Without the text datasets and root attribute (a package written before them) verify passes and items have
    no "text"; texts without the attribute are an unexpected object."""
    copy = tmp_path / "copy"
    shutil.copytree(package, copy)
    with h5py.File(copy / "brats_fuse.h5", "r+") as h5:
        del h5.attrs["text"]
        for split in ("train", "val", "test"):
            del h5[split]["text"]
    _rehash(copy)
    verify(copy)
    assert "text" not in BraTSFuse(copy, "val")[0] and "text" not in BraTSFuse(copy, "val", cache=True)[0]
    with h5py.File(copy / "brats_fuse.h5", "r+") as h5:
        h5["val"].create_dataset("text", data=["x"] * h5["val/label"].shape[0])
    _rehash(copy)
    with pytest.raises(DataError, match="unexpected object /val/text"):
        verify(copy)


def test_rebuild_is_byte_identical(phantom_release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With SOURCE_DATE_EPOCH a rebuild of the same --out (with 2 workers) writes identical files, texts included."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    hashes = []
    for workers in (1, 2):
        _build(phantom_release, tmp_path / "pkg", workers=workers, overwrite=True)
        hashes.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "pkg").iterdir())})
    assert hashes[0] == hashes[1] and "brats_fuse.h5" in hashes[0]
