"""A BraTS-Fuse package is self-contained and its sizes are checked before anything is allocated: links,
virtual datasets, external storage, foreign filters or chunking, unstored chunks, oversized headers and
strings, corrupt chunks under the cache and deeply nested JSON/YAML are each one `error:` line and exit 1."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from _benchmark_data import build_small_package
from test_package import rehash

from fuse4seg.cli import main
from fuse4seg.data import BraTSFuse
from fuse4seg.data.package.h5format import open_validated
from fuse4seg.data.package.schema import MAX_SLICE_SIDE, MAX_SLICES, MAX_TEXT_BYTES
from fuse4seg.data.package.verify import verify
from fuse4seg.errors import DataError
from fuse4seg.runkit.benchmark import open_split

Edit = Callable[[h5py.File, Path], None]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package built from a 4-case tiny release: 16 x 16 slices, 3 per case, train 6 slices."""
    return build_small_package(tmp_path_factory.mktemp("reliability"))


@pytest.fixture
def copy(package: Path, tmp_path: Path) -> Path:
    """A private copy of the package that a test may damage."""
    return Path(shutil.copytree(package, tmp_path / "copy"))


def edited(copy: Path, edit: Edit, outside: Path) -> Path:
    """Apply ``edit(h5, outside)`` to the copy's brats_fuse.h5 (``outside``: a folder beyond the package for
    files the edit points at) and update croissant.json, so verify reaches the HDF5 checks; returns the file."""
    path = copy / "brats_fuse.h5"
    outside.mkdir(exist_ok=True)
    with h5py.File(path, "r+") as h5:
        edit(h5, outside)
    rehash(copy)
    return path


def assert_cli_refuses(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> str:
    """``fuse4seg ARGV`` exits 1 with a single stderr line `error: ...` matching ``message``; returns it."""
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert re.search(message, err), err
    return err


def _recreate(h5: h5py.File, name: str, **options: object) -> None:
    """Replace dataset ``name`` by a copy of its values created with h5py ``options`` (by default chunked and
    resizable as the writer makes it)."""
    old = h5[name]
    data, dtype, chunks = old[()], old.dtype, old.chunks
    del h5[name]
    h5.create_dataset(name, data=data, dtype=dtype, **{"chunks": chunks, "maxshape": (None, *data.shape[1:]),
                                                       **options})


def _external_storage(h5: h5py.File, outside: Path) -> None:
    """/train/slice_index with its bytes in a raw file outside the package (HDF5 external storage)."""
    values = h5["train/slice_index"][()]
    (outside / "slice_index.raw").write_bytes(values.tobytes())
    del h5["train/slice_index"]
    h5["train"].create_dataset("slice_index", shape=values.shape, dtype=values.dtype,
                               external=[(str(outside / "slice_index.raw"), 0, values.nbytes)])


def _external_link(h5: h5py.File, outside: Path) -> None:
    """/val/label as an external link to a file outside the package holding the same labels."""
    with h5py.File(outside / "labels.h5", "w") as other:
        other["label"] = h5["val/label"][()]
    del h5["val/label"]
    h5["val/label"] = h5py.ExternalLink(str(outside / "labels.h5"), "/label")


def _soft_link(h5: h5py.File, outside: Path) -> None:
    """/test/fused as a soft link to /train/fused."""
    del h5["test/fused"]
    h5["test/fused"] = h5py.SoftLink("/train/fused")


def _virtual(file: str) -> Edit:
    """An edit making /train/fused a virtual dataset over ``file`` outside the package ('' = a file that
    exists there and holds the same values; otherwise a missing file, which reads as zeros)."""
    def edit(h5: h5py.File, outside: Path) -> None:
        """See :func:`_virtual`."""
        values = h5["train/fused"][()]
        target = outside / (file or "fused.h5")
        if not file:
            with h5py.File(target, "w") as other:
                other["fused"] = values
        layout = h5py.VirtualLayout(shape=values.shape, dtype=values.dtype)
        layout[:] = h5py.VirtualSource(str(target), "fused", shape=values.shape)
        del h5["train/fused"]
        h5["train"].create_virtual_dataset("fused", layout, fillvalue=0)
    return edit


def _missing_chunks(h5: h5py.File, outside: Path) -> None:
    """/train/label of the right shape and storage with only its first slice written (the others would read
    as 0)."""
    labels = h5["train/label"]
    first, shape = labels[:1], labels.shape
    del h5["train/label"]
    h5["train"].create_dataset("label", shape=shape, maxshape=(None, *shape[1:]), dtype="uint8",
                               chunks=(1, *shape[1:]), compression="gzip", compression_opts=1)
    h5["train/label"][:1] = first


def _compressed(name: str, **options: object) -> Edit:
    """An edit recreating dataset ``name`` with other filters (``options`` for h5py create_dataset)."""
    return lambda h5, outside: _recreate(h5, name, **options)


STORAGE = {  # id: (edit, expected message)
    "external-storage": (_external_storage, "/train/slice_index stores its data in external files"),
    "external-link": (_external_link, r"/val/label is an external link \(to /label in file .*labels.h5\)"),
    "soft-link": (_soft_link, r"/test/fused is a soft link \(to /train/fused\)"),
    "virtual-missing-file": (_virtual("missing.h5"), "/train/fused is a virtual dataset"),
    "virtual-existing-file": (_virtual(""), "/train/fused is a virtual dataset"),
    "extra-root-object": (lambda h5, outside: h5.create_group("notes"),
                          r"unexpected object /notes \(expected only train, val, test\)"),
    "extra-split-object": (lambda h5, outside: h5["val"].create_dataset("weights", data=np.ones(3)),
                           "unexpected object /val/weights"),
    "lzf": (_compressed("train/source", compression="lzf"), r"/train/source has filters \(lzf\), expected gzip"),
    "shuffle-gzip": (_compressed("train/source", compression="gzip", shuffle=True),
                     r"/train/source has filters \(shuffle, deflate\), expected gzip only"),
    "gzip-on-raw": (_compressed("train/slice_index", compression="gzip"),
                    r"/train/slice_index has filters \(deflate\), expected none"),
    "chunk-shape": (_compressed("train/label", chunks=(2, 16, 16), compression="gzip"),
                    r"/train/label is chunked as \(2, 16, 16\), expected chunks \(1, 16, 16\)"),
    "contiguous": (_compressed("train/label", chunks=None, maxshape=None),
                   r"/train/label is not chunked, expected chunks \(1, 16, 16\)"),
    "missing-chunks": (_missing_chunks, r"/train/label stores 1 of its 6 chunks"),
}


@pytest.mark.parametrize(("edit", "message"), STORAGE.values(), ids=STORAGE.keys())
def test_storage_outside_the_schema_is_refused(copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               edit: Edit, message: str) -> None:
    """External storage, external and soft links, virtual datasets (over a missing or an existing file),
    extra objects, lzf / shuffle+gzip / gzip on a raw dataset, another chunk shape, a contiguous layout and
    unstored chunks are refused by open_validated (every reader) and by `fuse4seg verify` with one line
    naming the file and the object (before the fix the first five passed verify and read outside bytes)."""
    path = edited(copy, edit, tmp_path / "outside")
    with pytest.raises(DataError, match=message) as caught:
        open_validated(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)
    assert_cli_refuses(["verify", str(copy)], f"^error: {re.escape(str(path))}: .*{message}", capsys)


def _declare_slices(n: int) -> Edit:
    """An edit resizing every /train dataset to ``n`` slices without writing any (free on disk)."""
    def edit(h5: h5py.File, outside: Path) -> None:
        """See :func:`_declare_slices`."""
        for dataset in h5["train"].values():
            dataset.resize(n, axis=0)
    return edit


def test_a_header_declaring_a_billion_slices_is_refused_at_once(copy: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A file whose /train declares 10**9 slices (nothing stored) is refused from its header by
    open_validated, BraTSFuse(cache=True), the training/evaluation opener and `fuse4seg verify`, each in well
    under a second, naming the limit (before the fix: 7-11 GiB allocations and a 12-minute verify)."""
    path = edited(copy, _declare_slices(10**9), tmp_path / "outside")
    assert path.stat().st_size < 10**6
    message = f"/train/source declares 1000000000 slices, over the limit of {MAX_SLICES} per split"
    for check in (lambda: open_validated(path), lambda: BraTSFuse(copy, "train", cache=True),
                  lambda: open_split(copy, "val", cache=True)):
        start = time.perf_counter()
        with pytest.raises(DataError, match=message):
            check()
        assert time.perf_counter() - start < 1.0
    start = time.perf_counter()
    assert_cli_refuses(["verify", str(copy)], message, capsys)
    assert time.perf_counter() - start < 1.0


def test_just_over_the_slice_limit_is_refused_and_under_it_unstored_chunks_are(copy: Path, tmp_path: Path) -> None:
    """MAX_SLICES + 1 declared slices are over the limit; MAX_SLICES declared but not stored are refused as
    unstored chunks, from the chunk index, before verify would scan them."""
    path = edited(copy, _declare_slices(MAX_SLICES + 1), tmp_path / "outside")
    with pytest.raises(DataError, match=f"declares {MAX_SLICES + 1} slices, over the limit"):
        open_validated(path)
    path = edited(copy, _declare_slices(MAX_SLICES), tmp_path / "outside")
    with pytest.raises(DataError, match=rf"/train/source stores 6 of its {MAX_SLICES} chunks"):
        open_validated(path)


@pytest.mark.parametrize("side", [MAX_SLICE_SIDE + 1, 0])
def test_slices_wider_than_the_limit_are_refused(copy: Path, tmp_path: Path, side: int) -> None:
    """An empty /train/source declaring (0, 4, side, side) slices over MAX_SLICE_SIDE (or of zero pixels) is
    refused from its header, naming the size and the limit."""
    def edit(h5: h5py.File, outside: Path) -> None:
        """Replace /train/source by an empty dataset of side x side slices."""
        del h5["train/source"]
        h5["train"].create_dataset("source", shape=(0, 4, side, side), maxshape=(None, 4, None, None),
                                   dtype="float32", chunks=(1, 4, max(side, 1), max(side, 1)))

    path = edited(copy, edit, tmp_path / "outside")
    with pytest.raises(DataError, match=f"/train/source declares {side} x {side} pixel slices; the limit is "
                                        f"1 to {MAX_SLICE_SIDE} pixels per side"):
        open_validated(path)


def _corrupt_first_chunk(path: Path, name: str, span: tuple[int, int]) -> None:
    """Invert bytes ``span`` (start, stop) of the first stored chunk of dataset ``name`` (a damaged disk block)."""
    with h5py.File(path, "r") as h5:
        info = h5[name].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    for i in range(info.byte_offset + span[0], info.byte_offset + min(info.size, span[1])):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("name", "span"), [("source", (2, 40)), ("fused", (2, 40)), ("label", (2, 40)),
                                            ("case_id", (4, 12))])  # case_id: the first string's heap address
def test_a_corrupt_chunk_under_the_cache_is_one_line(copy: Path, capsys: pytest.CaptureFixture[str], name: str,
                                                     span: tuple[int, int]) -> None:
    """A corrupt stored chunk of /train/<name> makes BraTSFuse(cache=True) (the default in-memory read of
    train and evaluate) and `fuse4seg verify` (hashes updated) fail with one line naming the file and the
    dataset."""
    path = copy / "brats_fuse.h5"
    _corrupt_first_chunk(path, f"train/{name}", span)
    rehash(copy)
    with pytest.raises(DataError, match=rf"/train/{name}: unreadable data \(OSError: ") as caught:
        BraTSFuse(copy, "train", cache=True)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)
    assert_cli_refuses(["verify", str(copy)], rf"{re.escape(str(path))}: /train/{name}(\[0:6\])?: unreadable data",
                       capsys)


def test_a_string_declaring_gigabytes_is_refused_before_reading(copy: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A case id whose stored length says 4 GiB (HDF5 would allocate it before finding the string missing) is
    refused from the chunk's raw bytes by the validator, naming MAX_TEXT_BYTES."""
    def edit(h5: h5py.File, outside: Path) -> None:
        """Set the stored length of /train/case_id[0] to 2**32 - 16 bytes."""
        raw = bytearray(h5["train/case_id"].id.read_direct_chunk((0,))[1])
        raw[:4] = (2**32 - 16).to_bytes(4, "little")
        h5["train/case_id"].id.write_direct_chunk((0,), bytes(raw))

    path = edited(copy, edit, tmp_path / "outside")
    message = f"/train/case_id holds a string of {2**32 - 16} bytes, over the limit of {MAX_TEXT_BYTES}"
    for check in (lambda: open_validated(path), lambda: BraTSFuse(copy, "train", cache=True)):
        with pytest.raises(DataError, match=message):
            check()
    assert_cli_refuses(["verify", str(copy)], message, capsys)


def test_deeply_nested_croissant_and_citation_are_one_line(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """croissant.json nesting 100000 lists makes `fuse4seg verify`, and CITATION.cff nesting as deep makes
    `fuse4seg cite`, exit 1 with one line naming the file (before the fix: RecursionError tracebacks)."""
    deep = "[" * 100_000 + "]" * 100_000
    (copy / "croissant.json").write_text('{"distribution": ' + deep + "}")
    assert_cli_refuses(["verify", str(copy)], r"croissant.json: not valid Croissant JSON \(nested too deeply\)",
                       capsys)
    (copy / "CITATION.cff").write_text("title: " + deep + "\n")
    assert_cli_refuses(["cite", str(copy)], r"CITATION.cff: not a valid CITATION.cff \(RecursionError", capsys)


def test_a_long_croissant_value_is_shown_short(copy: Path) -> None:
    """A huge non-object distribution entry is named in a short message (reprlib), not echoed whole."""
    (copy / "croissant.json").write_text('{"distribution": [[' + ", ".join(["1"] * 100_000) + "]]}")
    with pytest.raises(DataError, match=r"distribution\[0\] is list \[1, 1, 1, 1, 1, 1, \.\.\.\], not an object") \
            as caught:
        verify(copy)
    assert len(str(caught.value)) < 300
