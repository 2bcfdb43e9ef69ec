"""The HDF5 schema declaration (fuse4seg.data.package.schema): what the writer, croissant.json and the card say, format-1
refusal, and the one Dataset with and without its in-memory cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import albumentations as A
import h5py
import numpy as np
import pytest
import torch
from _benchmark_data import build_small_package

from fuse4seg.cli import main
from fuse4seg.data import BraTSFuse
from fuse4seg.data.package import dataset
from fuse4seg.data.package.verify import verify
from fuse4seg.errors import DataError
from fuse4seg.io import sha256_file
from fuse4seg.runkit.benchmark import benchmark_info, open_split

REBUILD = "format version 1 is no longer read; rebuild it with `fuse4seg build-benchmark`"


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package built from a 4-case tiny release, 16 x 16 slices, 3 per case."""
    return build_small_package(tmp_path_factory.mktemp("schema"))


def test_written_layout(package: Path) -> None:
    """Every split holds the seven datasets with the dtypes, chunks and compression written out here; the root
    attribute volumes is 0 and there is no /volumes group (a build without --volumes); text is 1."""
    expected = {  # name: (dtype, shape after N, chunks, compression)
        "source": ("float32", (4, 16, 16), (1, 4, 16, 16), "gzip"),
        "fused": ("float32", (1, 16, 16), (1, 1, 16, 16), "gzip"),
        "label": ("uint8", (16, 16), (1, 16, 16), "gzip"),
        "case_id": ("object", (), (256,), None),
        "slice_index": ("int32", (), (256,), None),
        "spacing": ("float32", (3,), (256, 3), None),
        "text": ("object", (), (256,), None),
    }
    with h5py.File(package / "brats_fuse.h5", "r") as h5:
        assert h5.attrs["format_version"] == 2 and h5.attrs["slice_size"] == 16 and h5.attrs["volumes"] == 0
        assert h5.attrs["text"] == 1
        assert sorted(h5.attrs) == ["builder_version", "created", "format_version", "fusion_inputs", "fusion_method",
                                    "label_scheme", "slice_size", "source_dataset", "text", "volumes"]
        assert sorted(h5) == ["test", "train", "val"]  # no /volumes without --volumes
        for split in ("train", "val", "test"):
            group = h5[split]
            assert sorted(group) == sorted(expected)
            for name, (dtype, shape, chunks, compression) in expected.items():
                data = group[name]
                assert (str(data.dtype), data.shape[1:], data.chunks, data.compression) == (
                    dtype, shape, chunks, compression), name
            assert group["source"].compression_opts == 1
            assert h5py.check_string_dtype(group["case_id"].dtype).encoding == "utf-8"


def test_croissant_fields_and_card_follow_the_declaration(package: Path) -> None:
    """croissant.json's description of the HDF5 file and the card's file list state the declared types, in order."""
    meta = json.loads((package / "croissant.json").read_text())
    assert meta["recordSet"] == []  # mlcroissant cannot read HDF5: the Parquet export adds the record sets
    (h5,) = [d for d in meta["distribution"] if d["@id"] == "brats_fuse.h5"]
    fields = h5["description"].split("along their first axis: ", 1)[1].split(". Read it")[0].split(" | ")
    assert [f.split(":")[0] for f in fields] == ["source", "fused", "label", "case_id", "slice_index", "spacing",
                                                 "text"]
    descriptions = [f.split(": ", 1)[1] for f in fields]
    assert descriptions[0].startswith("(4, H, W) float32 in [0, 1]: t1, t1ce, t2, flair")
    assert descriptions[2].startswith("(H, W) uint8 in {0, 1, 2, 3}: ")
    assert descriptions[3].startswith("UTF-8 string: ")
    assert descriptions[4].startswith("int32 >= 0: ")
    assert descriptions[5].startswith("(3,) float32 in mm (> 0): ")
    assert descriptions[6].startswith("UTF-8 string (at most 4096 bytes): a description of the slice")
    card = (package / "README.md").read_text()
    assert "- `brats_fuse.h5` (HDF5 format 2): groups `train`, `val`, `test`" in card
    assert "  - `label` (N, H, W) uint8 in {0, 1, 2, 3}: " in card
    assert "  - `format_version` (2: " in card and "  - `fusion_inputs` (t1ce, flair: " in card


@pytest.fixture(scope="module")
def format_1(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as format 1 wrote it: format_version 1, no slice_size attribute, no spacing; hashes updated."""
    copy = tmp_path_factory.mktemp("v1") / "package"
    shutil.copytree(package, copy)
    with h5py.File(copy / "brats_fuse.h5", "r+") as h5:
        h5.attrs["format_version"] = 1
        del h5.attrs["slice_size"]
        for split in ("train", "val", "test"):
            del h5[split]["spacing"]
    croissant = json.loads((copy / "croissant.json").read_text())
    for entry in croissant["distribution"]:
        if entry["contentUrl"] == "brats_fuse.h5":
            entry["sha256"] = sha256_file(copy / "brats_fuse.h5")
            entry["contentSize"] = f"{(copy / 'brats_fuse.h5').stat().st_size} B"
    (copy / "croissant.json").write_text(json.dumps(croissant))
    return copy


def test_format_1_is_refused_with_a_rebuild_hint(format_1: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """verify, the Dataset (lazy and cached) and benchmark_info refuse a format-1 file with one line naming it
    and saying how to rebuild; the CLI prints that line after `error: ` and exits 1."""
    path = format_1 / "brats_fuse.h5"
    for check in (lambda: verify(format_1), lambda: BraTSFuse(format_1, "train"),
                  lambda: open_split(format_1, "train", cache=True), lambda: benchmark_info(format_1)):
        with pytest.raises(DataError) as caught:
            check()
        assert str(caught.value) == f"{path}: {REBUILD}"
    assert main(["verify", str(format_1)]) == 1
    assert capsys.readouterr().err == f"error: {path}: {REBUILD}\n"


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_cached_items_equal_lazy_items(package: Path, split: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """cache=True holds the split in memory with byte-identical items (also with modalities and a transform)
    and the same spacing; a split over CACHE_MAX_BYTES is read lazily instead."""
    lazy, cached = BraTSFuse(package, split), BraTSFuse(package, split, cache=True)
    assert cached.cached and not lazy.cached and len(cached) == len(lazy) > 0
    np.testing.assert_array_equal(cached.spacing, lazy.spacing)
    assert cached.spacing.shape == (len(lazy), 3) and cached.spacing.dtype == np.float64
    pairs = [(lazy, cached),
             (BraTSFuse(package, split, modalities="flair,t1ce", transform=A.HorizontalFlip(p=1.0)),
              BraTSFuse(package, split, modalities="flair,t1ce", transform=A.HorizontalFlip(p=1.0), cache=True))]
    for a, b in pairs:
        for i in range(-1, len(a)):
            x, y = a[i], b[i]
            assert x.keys() == y.keys()
            for key in ("source", "fused", "label"):
                assert x[key].dtype == y[key].dtype and x[key].shape == y[key].shape
                torch.testing.assert_close(x[key], y[key], atol=0, rtol=0)
            assert (x["case_id"], x["slice_index"]) == (y["case_id"], y["slice_index"])
            assert type(y["slice_index"]) is int and type(y["case_id"]) is str
    monkeypatch.setattr(dataset, "CACHE_MAX_BYTES", 100)
    assert not BraTSFuse(package, split, cache=True).cached
