"""Parquet and NIfTI exports of a package: records read through pyarrow, mlcroissant and datasets equal the HDF5
records bit for bit, the NIfTI stacks round-trip with their spacing, verify catches tampering, and bad input
through the command line is a one-line error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fuse4seg.cli import main
from fuse4seg.conventions import MODALITIES
from fuse4seg.data.build.builder import build_benchmark
from fuse4seg.data.package.export import export, export_nifti, export_parquet
from fuse4seg.data.package.records import record_columns
from fuse4seg.data.package.verify import verify
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import sha256_file

SPLITS = ("train", "val", "test")
IMAGES = (*MODALITIES, "fused", "label")


def h5_records(package: Path, split: str) -> dict[str, np.ndarray]:
    """The records of ``/<split>`` read straight from brats_fuse.h5 with h5py, one array per Parquet column."""
    with h5py.File(package / "brats_fuse.h5", "r") as h5:
        group = h5[split]
        source = group["source"][()]
        records = {"index": np.arange(len(source)), "case_id": np.array(group["case_id"].asstr()[()], dtype=str),
                   "slice_index": group["slice_index"][()], "spacing": group["spacing"][()],
                   "fused": group["fused"][()][:, 0], "label": group["label"][()],
                   "text": np.array(group["text"].asstr()[()], dtype=str)}
    records.update({m: source[:, i] for i, m in enumerate(MODALITIES)})
    return records


def grid_type(schema: pa.Schema, name: str) -> tuple[pa.DataType, int, int]:
    """(value type, rows, columns) of a column stored as nested fixed-size lists (an image)."""
    outer = schema.field(name).type
    assert pa.types.is_fixed_size_list(outer) and pa.types.is_fixed_size_list(outer.value_type), name
    return outer.value_type.value_type, outer.list_size, outer.value_type.list_size


def assert_bits_equal(got: object, want: np.ndarray, name: str) -> None:
    """``got`` (any nesting of lists / arrays) has ``want``'s shape and, cast to its dtype, the same bytes."""
    array = np.asarray(got)
    assert array.shape == want.shape, name
    if want.dtype.kind in "fiu":
        assert np.array_equal(array, want), name  # values first: a cast below must not wrap a wrong value
        array = array.astype(want.dtype)
        assert array.tobytes() == np.ascontiguousarray(want).tobytes(), name
    else:
        assert array.tolist() == want.tolist(), name


@pytest.fixture(scope="module")
def exported(bench: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session package ``bench`` with its Parquet records added by export_parquet. Read only."""
    target = tmp_path_factory.mktemp("exported") / "pkg"
    shutil.copytree(bench, target)
    export_parquet(target)
    return target


@pytest.fixture
def copy(exported: Path, tmp_path: Path) -> Path:
    """A private copy of the exported package that a test may change."""
    return Path(shutil.copytree(exported, tmp_path / "pkg"))


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    """Exit 1 and exactly one `error:` line containing ``pattern``, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], err


def test_parquet_records_equal_the_hdf5_records(exported: Path) -> None:
    """Every column of every split read with pyarrow equals the HDF5 datasets bit for bit, in the HDF5 order, and
    the schema declares float32 images, a uint8 label and the (H, W) shape; verify lists the shards."""
    report = verify(exported)
    assert report["parquet"] == {s: report["splits"][s]["slices"] for s in SPLITS}
    for split in SPLITS:
        table = pq.read_table(exported / "parquet" / f"{split}-00000-of-00001.parquet")
        assert table.column_names == [c.name for c in record_columns(True)]
        assert grid_type(table.schema, "t1") == (pa.float32(), 48, 48)
        assert grid_type(table.schema, "label") == (pa.uint8(), 48, 48)
        want = h5_records(exported, split)
        for name, values in want.items():
            assert_bits_equal(table.column(name).to_pylist(), values, f"{split}/{name}")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # rdflib inside mlcroissant
def test_mlcroissant_reads_the_parquet_record_sets_bit_exactly(exported: Path) -> None:
    """mlcroissant validates croissant.json without errors or warnings and iterates the record sets
    parquet-<split>: each record's fields (text included) equal the HDF5 record of the same position."""
    mlcroissant = pytest.importorskip("mlcroissant")
    dataset = mlcroissant.Dataset(jsonld=exported / "croissant.json")
    assert not dataset.metadata.ctx.issues.errors and not dataset.metadata.ctx.issues.warnings
    assert [r.name for r in dataset.metadata.record_sets] == [f"parquet-{s}" for s in SPLITS]
    for split in ("train", "test"):
        want = h5_records(exported, split)
        records = list(dataset.records(record_set=f"parquet-{split}"))
        assert len(records) == len(want["index"])
        for i, record in enumerate(records):
            fields = {key.split("/", 1)[1]: value for key, value in record.items()}
            assert set(fields) == set(want)
            for name, values in want.items():
                got = fields[name].decode("utf-8") if isinstance(fields[name], bytes) else fields[name]
                assert_bits_equal(got, values[i], f"{split}[{i}]/{name}")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # rdflib inside mlcroissant
@pytest.mark.parametrize("volumes", [False, True])
def test_every_declared_record_set_yields_records(tmp_path: Path, volumes: bool) -> None:
    """On a package built (with or without --volumes) and exported with default options, every RecordSet that
    croissant.json declares yields its records through mlcroissant; the HDF5 file stays a FileObject."""
    mlcroissant = pytest.importorskip("mlcroissant")
    from _benchmark_data import write_release

    package = tmp_path / "package"
    build_benchmark(package, brats=write_release(tmp_path / "brats", cases=4), size=16, slices_per_case=2,
                    split=(0.5, 0.25, 0.25), volumes=volumes, progress=False)
    for stage in ("built", "exported"):
        if stage == "exported":
            export(package, "parquet")
        meta = json.loads((package / "croissant.json").read_text())
        assert any(d["@id"] == "brats_fuse.h5" and d["@type"] == "cr:FileObject" for d in meta["distribution"])
        dataset = mlcroissant.Dataset(jsonld=package / "croissant.json")
        assert not dataset.metadata.ctx.issues.errors and not dataset.metadata.ctx.issues.warnings
        names = [r.name for r in dataset.metadata.record_sets]
        assert names == ([] if stage == "built" else [f"parquet-{s}" for s in SPLITS])
        counts = {name: sum(1 for _ in dataset.records(record_set=name)) for name in names}
        assert all(counts.values()), counts


def test_datasets_loads_every_split_from_the_card_and_the_folder(exported: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, datasets.load_dataset(DIR) (the card's configs and dataset_info) and load_dataset("parquet",
    data_dir=DIR/parquet) load train/val/test (the latter names val "validation", its rule for file names) with
    the HDF5 row counts and bit-identical values, the label typed uint8; the card's front matter has the configs
    and only the split keys datasets reads."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    front = yaml.safe_load((exported / "README.md").read_text().split("---\n")[1])
    assert front["configs"][0]["data_files"] == [{"split": s, "path": f"parquet/{s}-*.parquet"} for s in SPLITS]
    assert all(set(s) == {"name", "num_bytes", "num_examples"} for s in front["dataset_info"]["splits"])
    by_card = datasets.load_dataset(str(exported), cache_dir=str(tmp_path / "cache1"))
    by_folder = datasets.load_dataset("parquet", data_dir=str(exported / "parquet"), cache_dir=str(tmp_path / "c2"))
    for loaded, names in ((by_card, SPLITS), (by_folder, ("train", "validation", "test"))):
        assert list(loaded) == list(names)
        for split, name in zip(SPLITS, names):
            want = h5_records(exported, split)
            table = loaded[name].data.table  # the Arrow table datasets holds: exact types
            assert grid_type(table.schema, "label") == (pa.uint8(), 48, 48)
            for column, values in want.items():
                assert_bits_equal(table.column(column).to_pylist(), values, f"{split}/{column}")
            row = loaded[name].with_format("numpy")[0]
            assert row["t1"].dtype == np.float32 and row["t1"].tobytes() == want["t1"][0].tobytes()


def test_shards_split_the_records_in_order_and_reexport_needs_overwrite(copy: Path) -> None:
    """With shards of about 2 records the train split's 9 records are 5 shards NNNNN-of-00005 whose concatenation
    is the HDF5 order; verify passes; a second export is refused without overwrite and replaces every old
    shard with it (the one-shard layout again)."""
    row = 5 * 48 * 48 * 4 + 48 * 48 + 8 + 4 + 12 + 1024 + 4096
    summary = export_parquet(copy, overwrite=True, shard_bytes=2 * row)
    train = sorted(f for f in summary["files"] if f.startswith("parquet/train-"))
    assert train == [f"parquet/train-{i:05d}-of-00005.parquet" for i in range(5)]
    rows = [pq.read_table(copy / name, columns=["index"]).column("index").to_pylist() for name in train]
    assert rows == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    assert verify(copy)["parquet"]["train"] == 9
    with pytest.raises(ConfigError, match="parquet already exists \\(pass --overwrite"):
        export_parquet(copy)
    export_parquet(copy, overwrite=True)
    assert sorted(p.name for p in (copy / "parquet").glob("*.parquet")) == [
        f"{s}-00000-of-00001.parquet" for s in ("test", "train", "val")]
    meta = json.loads((copy / "croissant.json").read_text())
    assert sum(e["contentUrl"].startswith("parquet/") for e in meta["distribution"] if "contentUrl" in e) == 3
    assert verify(copy)["parquet"] == {"train": 9, "val": 6, "test": 3}


def test_verify_detects_tampered_parquet(copy: Path) -> None:
    """A flipped byte in a shard is a sha256 mismatch naming it; a shard rewritten without its last record (and
    re-hashed into croissant.json) is a record-count mismatch; a stray file in parquet/ is unlisted."""
    shard = copy / "parquet" / "val-00000-of-00001.parquet"
    original = shard.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="val-00000-of-00001.parquet: sha256 differs"):
        verify(copy)
    shard.write_bytes(original)
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, table.num_rows - 1), shard)
    shortened = shard.read_bytes()
    meta = json.loads((copy / "croissant.json").read_text())
    for entry in meta["distribution"]:
        if entry.get("contentUrl") == "parquet/val-00000-of-00001.parquet":
            entry.update(sha256=sha256_file(shard), contentSize=f"{shard.stat().st_size} B")
    (copy / "croissant.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="5 val records, but brats_fuse.h5 has 6 val slices"):
        verify(copy)
    shard.unlink()
    with pytest.raises(DataError, match="val-00000-of-00001.parquet: listed in croissant.json but missing"):
        verify(copy)
    (copy / "parquet" / "notes.txt").write_text("x")
    shard.write_bytes(shortened)
    with pytest.raises(DataError, match="not listed in croissant.json: parquet/notes.txt"):
        verify(copy)


def test_export_refuses_a_damaged_package_and_leaves_it_unchanged(bench: Path, tmp_path: Path) -> None:
    """Exporting a package whose brats_fuse.h5 no longer matches its hash is a DataError, and no parquet folder or
    rewritten croissant.json appears (re-hashing would vouch for the damage)."""
    target = Path(shutil.copytree(bench, tmp_path / "pkg"))
    h5 = target / "brats_fuse.h5"
    data = bytearray(h5.read_bytes())
    data[len(data) // 2] ^= 0x01
    h5.write_bytes(bytes(data))
    before = (target / "croissant.json").read_bytes()
    with pytest.raises(DataError, match="brats_fuse.h5: sha256 differs"):
        export_parquet(target)
    assert not (target / "parquet").exists() and (target / "croissant.json").read_bytes() == before


def test_nifti_export_round_trips_exactly_with_the_spacing(exported: Path, tmp_path: Path) -> None:
    """Each case folder holds (H, W, K) stacks whose voxels equal the HDF5 slices bit for bit (float32, label
    uint8), whose header zooms are the slices' spacing, and a slices.json with their positions, axial indices
    and texts; every case of every split is there once."""
    summary = export_nifti(exported, tmp_path / "nifti")
    assert summary["cases"] == {s: verify(exported)["splits"][s]["cases"] for s in SPLITS}
    for split in SPLITS:
        want = h5_records(exported, split)
        folders = sorted((tmp_path / "nifti" / split).iterdir())
        assert sorted(p.name for p in folders) == sorted(set(want["case_id"].tolist()))
        covered = []
        for folder in folders:
            slices = json.loads((folder / "slices.json").read_text())
            rows = np.asarray(slices["index"])
            covered += slices["index"]
            assert slices["slice_index"] == want["slice_index"][rows].tolist()
            assert slices["text"] == want["text"][rows].tolist()
            for name in IMAGES:
                image = nib.load(folder / f"{name}.nii.gz")
                voxels = np.asanyarray(image.dataobj)
                assert voxels.dtype == (np.uint8 if name == "label" else np.float32)
                assert_bits_equal(np.moveaxis(voxels, -1, 0), want[name][rows], f"{folder.name}/{name}")
                assert image.header.get_zooms() == tuple(want["spacing"][rows[0]].tolist())
        assert sorted(covered) == list(range(len(want["index"])))


def test_build_benchmark_parquet_equals_a_later_export(phantom_release: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """build_benchmark(parquet=True) writes the same shards, byte for byte, as export_parquet on the same build
    without it; its card records --parquet and it verifies."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    options = {"brats": phantom_release, "size": 16, "slices_per_case": 1, "split": (0.5, 0.25, 0.25),
               "progress": False}
    summary = build_benchmark(tmp_path / "built", parquet=True, **options)
    build_benchmark(tmp_path / "later", **options)
    export_parquet(tmp_path / "later")
    assert len(summary["parquet"]) == 3 and verify(tmp_path / "built")["parquet"] == verify(tmp_path / "later")["parquet"]
    for name in summary["parquet"]:
        assert (tmp_path / "built" / name).read_bytes() == (tmp_path / "later" / name).read_bytes()
    assert "--parquet" in (tmp_path / "built" / "README.md").read_text()


def test_export_options_are_checked_before_any_work(exported: Path, tmp_path: Path) -> None:
    """export() refuses an unknown format, --out with parquet, nifti without --out, and an --out inside the
    package, each naming the option."""
    with pytest.raises(ConfigError, match="^format: 'csv': expected one of parquet, nifti"):
        export(exported, "csv")
    with pytest.raises(ConfigError, match="^out: applies only with --format nifti"):
        export(exported, "parquet", out=tmp_path / "x")
    with pytest.raises(ConfigError, match="^out: required with --format nifti"):
        export(exported, "nifti")
    with pytest.raises(ConfigError, match="^out: .* is inside, or contains, the package"):
        export(exported, "nifti", out=exported / "nifti")


@pytest.mark.parametrize(("argv", "pattern"), [
    (["export", "{missing}"], "no such package directory"),
    (["export", "{pkg}", "--format", "csv"], "--format: must be one of parquet, nifti, got 'csv'"),
    (["export", "{pkg}"], "parquet already exists (pass --overwrite to replace it)"),
    (["export", "{pkg}", "--format", "nifti"], "--out: required with --format nifti"),
    (["export", "{pkg}", "--format", "nifti", "--out", "{existing}"], "already exists (pass --overwrite"),
    (["export", "{pkg}", "--format", "nifti", "--out", "{existing}", "--overwrite"],
     "is not a fuse4seg nifti (no .fuse4seg marker of that kind); refusing to replace it"),
])
def test_cli_bad_input_is_one_line(copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                   argv: list[str], pattern: str) -> None:
    """`fuse4seg export` with a missing package, an unknown --format, an existing output without --overwrite, or
    an --overwrite of a folder fuse4seg did not write exits 1 with one `error:` line, and changes nothing."""
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    names = {"missing": tmp_path / "nope", "pkg": copy, "existing": existing}
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    code, _, err = run([a.format(**names) for a in argv], capsys)
    assert_one_line_error(code, err, pattern)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]


def test_cli_exports_both_formats(bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`fuse4seg export DIR` writes the shards and `verify` passes on the result; `--format nifti --out` writes
    6 files per case; both print one summary line."""
    target = Path(shutil.copytree(bench, tmp_path / "pkg"))
    code, out, err = run(["export", str(target), "--format", "parquet"], capsys)
    assert code == 0, err
    assert "wrote 3 Parquet shard(s)" in out and "train 9, val 6, test 3" in out
    assert run(["verify", str(target)], capsys)[0] == 0
    code, out, err = run(["export", str(target), "--format", "nifti", "--out", str(tmp_path / "nii")], capsys)
    assert code == 0, err
    assert out.strip() == f"wrote 36 NIfTI files to {tmp_path / 'nii'} (cases: train 3, val 2, test 1)"


def test_export_upgrades_an_older_card_and_is_idempotent(bench: Path, tmp_path: Path) -> None:
    """A card written before the export existed (splits with num_cases, which datasets refuses) comes out with
    exactly name/num_bytes/num_examples per split and the same counts, its Limits pointing at the Parquet record
    sets; exporting again with overwrite rewrites byte-identical card, croissant.json and shards."""
    target = Path(shutil.copytree(bench, tmp_path / "pkg"))
    card = target / "README.md"
    text = card.read_text()
    counts = {s["name"]: s["num_examples"] for s in yaml.safe_load(text.split("---\n")[1])["dataset_info"]["splits"]}
    card.write_text(text.replace("    num_examples: 9\n", "    num_examples: 9\n    num_cases: 3\n", 1))
    meta = json.loads((target / "croissant.json").read_text())
    for entry in meta["distribution"]:
        if entry.get("contentUrl") == "README.md":
            entry.update(sha256=sha256_file(card), contentSize=f"{card.stat().st_size} B")
    (target / "croissant.json").write_text(json.dumps(meta))
    assert "num_cases: 3" in card.read_text() and verify(target)["parquet"] is None
    export_parquet(target)
    first = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    front = yaml.safe_load(card.read_text().split("---\n")[1])
    assert [list(s) for s in front["dataset_info"]["splits"]] == [["name", "num_bytes", "num_examples"]] * 3
    assert {s["name"]: s["num_examples"] for s in front["dataset_info"]["splits"]} == counts
    assert card.read_text().count("## Parquet records") == 1 and "or the Parquet record sets" in card.read_text()
    export_parquet(target, overwrite=True)
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == first
