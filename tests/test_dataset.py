"""BraTSFuse: items equal the HDF5 content, DataLoader workers, joint albumentations transforms."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import albumentations as A
import h5py
import numpy as np
import pytest
import torch
from _benchmark_data import build_small_package

from fuse4seg.data import BraTSFuse
from fuse4seg.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package built from a 4-case tiny release, 16 x 16 slices."""
    return build_small_package(tmp_path_factory.mktemp("ds"))


def h5_split(package: Path, split: str) -> dict[str, np.ndarray]:
    """One split's datasets read directly with h5py (the reference)."""
    with h5py.File(package / "brats_fuse.h5", "r") as h5:
        group = h5[split]
        return {"source": group["source"][:], "fused": group["fused"][:], "label": group["label"][:],
                "case_id": group["case_id"].asstr()[:], "slice_index": group["slice_index"][:]}


def test_items_equal_the_file(package: Path) -> None:
    """Every item of the 6-slice train split equals the HDF5 content read directly with h5py (dtypes
    float32/int64, case id, slice index); -1 is the last slice and index 6 is an IndexError."""
    dataset = BraTSFuse(package, "train")
    expected = h5_split(package, "train")
    assert len(dataset) == len(expected["source"]) == 6
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["source"].dtype == torch.float32 and item["label"].dtype == torch.int64
        np.testing.assert_array_equal(item["source"].numpy(), expected["source"][i])
        np.testing.assert_array_equal(item["fused"].numpy(), expected["fused"][i])
        np.testing.assert_array_equal(item["label"].numpy(), expected["label"][i])
        assert item["case_id"] == expected["case_id"][i] and item["slice_index"] == expected["slice_index"][i]
    np.testing.assert_array_equal(dataset[-1]["label"].numpy(), expected["label"][-1])
    with pytest.raises(IndexError):
        dataset[6]


def test_dataloader_with_two_workers(package: Path) -> None:
    """Pickling drops the open handle, and a 2-worker DataLoader with modalities flair,t1ce yields source
    channels [3, 1] of the file, the labels and the case ids in file order."""
    dataset = BraTSFuse(package / "brats_fuse.h5", "train", modalities="flair,t1ce")
    dataset[0]  # open a handle in the parent: workers must not inherit it through pickling
    assert pickle.loads(pickle.dumps(dataset))._h5 is None
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    expected = h5_split(package, "train")
    source = torch.cat([b["source"] for b in batches]).numpy()
    np.testing.assert_array_equal(source, expected["source"][:, [3, 1]])
    np.testing.assert_array_equal(torch.cat([b["label"] for b in batches]).numpy(), expected["label"])
    assert [c for b in batches for c in b["case_id"]] == list(expected["case_id"])
    dataset.close()


def test_transform_is_applied_jointly(package: Path) -> None:
    """An albumentations horizontal flip (or transpose) moves sources, fused image and label together: each
    equals the untransformed item flipped (or transposed)."""
    plain = BraTSFuse(package, "val")
    flipped = BraTSFuse(package, "val", transform=A.HorizontalFlip(p=1.0))
    for i in range(len(plain)):
        a, b = plain[i], flipped[i]
        np.testing.assert_array_equal(b["source"].numpy(), a["source"].numpy()[..., ::-1])
        np.testing.assert_array_equal(b["fused"].numpy(), a["fused"].numpy()[..., ::-1])
        np.testing.assert_array_equal(b["label"].numpy(), a["label"].numpy()[..., ::-1])
    rotated = BraTSFuse(package, "val", transform=A.Compose([A.Transpose(p=1.0)]))
    np.testing.assert_array_equal(rotated[0]["label"].numpy(), plain[0]["label"].numpy().T)
    np.testing.assert_array_equal(rotated[0]["source"].numpy(), plain[0]["source"].numpy().transpose(0, 2, 1))


def test_bad_arguments_and_files(package: Path, tmp_path: Path) -> None:
    """An unknown split or modality is a ConfigError; a missing file, a non-HDF5 file and a label dataset of the
    wrong shape are DataErrors naming the problem."""
    with pytest.raises(ConfigError, match="split 'dev'"):
        BraTSFuse(package, "dev")
    with pytest.raises(ConfigError, match="unknown modality"):
        BraTSFuse(package, "train", modalities="t1,pd")
    with pytest.raises(DataError, match="no such HDF5 file"):
        BraTSFuse(tmp_path, "train")
    (tmp_path / "brats_fuse.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5"):
        BraTSFuse(tmp_path, "train")
    bad = tmp_path / "bad.h5"
    with h5py.File(package / "brats_fuse.h5", "r") as src, h5py.File(bad, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for split in ("train", "val", "test"):
            src.copy(split, dst)
        del dst["test/label"]
        dst["test"].create_dataset("label", data=np.zeros((1, 16, 16), np.uint8))
    with pytest.raises(DataError, match="/test/label is uint8"):
        BraTSFuse(bad, "train")


def _copy_package(package: Path, tmp_path: Path) -> Path:
    """A private copy of the package's HDF5 file that a test may damage."""
    target = tmp_path / "brats_fuse.h5"
    shutil.copyfile(package / "brats_fuse.h5", target)
    return target


@pytest.mark.parametrize(("split", "dataset", "where", "value", "message"), [
    ("train", "source", (4, 2, 3, 5), np.nan, "source has values outside"),
    ("train", "source", (4, 0, 0, 0), 2.0, "source has values outside"),
    ("val", "fused", (1, 0, 7, 7), -0.5, "fused has values outside"),
    ("test", "label", (2, 8, 8), 9, "label 9 not in"),
    ("train", "slice_index", (5,), -1, "negative slice_index -1"),
])
def test_items_with_bad_values_name_file_split_and_index(package: Path, tmp_path: Path, split: str, dataset: str,
                                                         where: tuple[int, ...], value: float, message: str) -> None:
    """A NaN or out-of-range source/fused value, label 9 or a negative slice_index in one slice raise a
    DataError naming the file, split, index and case when that slice is read; other slices still load."""
    path = _copy_package(package, tmp_path)
    with h5py.File(path, "r+") as h5:
        h5[f"{split}/{dataset}"][where] = value
        case_id = h5[f"{split}/case_id"].asstr()[where[0]]
    data = BraTSFuse(path, split)
    with pytest.raises(DataError, match=message) as caught:
        data[where[0]]
    assert str(caught.value).startswith(f"{path}: /{split}[{where[0]}] (case {case_id}): ")
    data[where[0] - 1]  # the neighbouring slice is fine


@pytest.mark.parametrize(("split", "dataset", "where", "value", "message"), [
    ("train", "source", (4, 2, 3, 5), np.inf, "source has values outside"),
    ("val", "fused", (1, 0, 7, 7), np.nan, "fused has values outside"),
    ("test", "label", (2, 8, 8), 9, "label 9 not in"),
    ("train", "slice_index", (5,), -1, "negative slice_index -1"),
])
def test_cached_split_checks_values_at_load(package: Path, tmp_path: Path, split: str, dataset: str,
                                            where: tuple[int, ...], value: float, message: str) -> None:
    """The in-memory split (training's and evaluate's default --cache path) refuses one bad value when it
    loads, with the same DataError as BraTSFuse's per-item check (file, split, index, case); the
    undamaged package loads and equals the lazy items."""
    from fuse4seg.runkit.benchmark import open_split

    clean = open_split(package, split, cache=True)
    assert isinstance(clean, BraTSFuse) and clean.cached
    lazy = BraTSFuse(package, split)
    for name in ("source", "fused", "label"):
        torch.testing.assert_close(clean[where[0]][name], lazy[where[0]][name], atol=0, rtol=0)
    path = _copy_package(package, tmp_path)
    with h5py.File(path, "r+") as h5:
        h5[f"{split}/{dataset}"][where] = value
        case_id = h5[f"{split}/case_id"].asstr()[where[0]]
    with pytest.raises(DataError, match=message) as caught:
        open_split(tmp_path, split, cache=True)
    assert str(caught.value).startswith(f"{path}: /{split}[{where[0]}] (case {case_id}): ")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("format_version", "abc", "format_version must be one integer"),
    ("format_version", np.array([1, 2]), "format_version must be one integer"),
    ("fusion_inputs", 5, "fusion_inputs must be a 1-D array of modality names"),
])
def test_crafted_root_attributes_are_data_errors(package: Path, tmp_path: Path, key: str, value: object,
                                                 message: str) -> None:
    """Wrongly typed root attributes make the constructor raise a DataError naming the file (before the
    fix: ValueError / TypeError tracebacks)."""
    path = _copy_package(package, tmp_path)
    with h5py.File(path, "r+") as h5:
        h5.attrs[key] = value
    with pytest.raises(DataError, match=message) as caught:
        BraTSFuse(path, "train")
    assert str(caught.value).startswith(f"{path}: ")


def test_undecodable_case_id_is_a_data_error(package: Path, tmp_path: Path) -> None:
    """A /train/case_id typed UTF-8 but holding non-UTF-8 bytes raises a DataError naming file, split and
    index when the slice is read (before the fix: UnicodeDecodeError)."""
    path = _copy_package(package, tmp_path)
    with h5py.File(path, "r+") as h5:
        n = h5["train/case_id"].shape[0]
        del h5["train/case_id"]
        h5["train"].create_dataset("case_id", data=np.array([b"\xff\xfe"] * n, dtype=object),
                                   dtype=h5py.string_dtype("utf-8"), chunks=(256,), maxshape=(None,))
    with pytest.raises(DataError, match=rf"{path}: /train\[0\]: unreadable slice"):
        BraTSFuse(path, "train")[0]
