"""Hostile inputs: NIfTI headers that claim more than the file holds, and option values out of bounds.

Each is refused before anything large is allocated or anything is written: a one-line DataError or
ConfigError naming the file or the option (on the command line: exit status 1, one ``error:`` line with
the flag, no traceback; a value the parser cannot read as an integer is its usage error, status 2).
"""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import FIXTURE_SHAPE, write_case

from fuse4seg.bilevel import parse_options
from fuse4seg.cli import main
from fuse4seg.data.release.brats import find_case, load_case
from fuse4seg.data.release.nifti import MAX_HEADER_BYTES, MAX_SLICE_PIXELS, MAX_VOLUME_VOXELS, load_nifti
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.metrics.fusion_files import pixel_limit, read_slice
from fuse4seg.options import MAX_SEED, check_seed

#: Most memory (bytes, as tracemalloc counts it) refusing a file may take: the header and one read chunk.
REFUSAL_BUDGET = 50 << 20
BILLION = (1000, 1000, 1000)


def patch_header(path: Path, **fields: tuple[str, object]) -> None:
    """Rewrite raw NIfTI-1 header fields of ``path`` (.nii or .nii.gz, re-gzipped) in place: name ->
    (struct format, value) at the field's byte offset (dim: offset 40, 8 int16; datatype: 70; vox_offset: 108)."""
    offsets = {"dim": 40, "datatype": 70, "vox_offset": 108, "extension": 348}
    gz = path.name.endswith(".gz")
    raw = bytearray(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    for name, (fmt, value) in fields.items():
        values = value if isinstance(value, tuple) else (value,)
        raw[offsets[name]:offsets[name] + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))


def claim_dims(path: Path, shape: tuple[int, ...]) -> None:
    """Make the header of ``path`` claim ``shape`` (the file keeps its small data)."""
    patch_header(path, dim=("<8h", (len(shape), *shape, *[1] * (7 - len(shape)))))


def small_nifti(path: Path, data: np.ndarray | None = None, image: type = nib.Nifti1Image) -> Path:
    """Write ``data`` (default: a 12 x 10 x 8 int16 ramp) as a NIfTI file at ``path``; returns the path."""
    data = np.arange(np.prod(FIXTURE_SHAPE), dtype=np.int16).reshape(FIXTURE_SHAPE) if data is None else data
    nib.save(image(data, np.diag([-1.0, -1.0, 1.0, 1.0])), path)
    return path


def refused(read: Callable[[], object]) -> str:
    """The DataError message of ``read()``, after checking it is one line and cost under REFUSAL_BUDGET."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as caught:
            read()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < REFUSAL_BUDGET, f"refusing took {peak / 2**20:.0f} MiB"
    message = str(caught.value)
    assert "\n" not in message
    return message


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit status, stderr) of ``fuse4seg ARGV`` run in-process; never a traceback."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def one_error_line(code: int, err: str) -> str:
    """The single ``error: ...`` line of a refused command (exit status 1), without the prefix."""
    lines = [line.split("\r")[-1] for line in err.strip().splitlines()]  # a progress bar may precede it
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0].removeprefix("error: ")


# ---- NIfTI headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_header_claiming_a_billion_voxels_is_refused_before_reading(tmp_path: Path, ext: str) -> None:
    """A few-KB file whose header claims 1000^3 voxels (2 GB of int16) costs no allocation to refuse."""
    path = small_nifti(tmp_path / f"big{ext}")
    claim_dims(path, BILLION)
    message = refused(lambda: load_nifti(path, ndim=3, max_voxels=MAX_VOLUME_VOXELS))
    assert message == (f"{path} is too large: its header claims 1000 x 1000 x 1000 = 1000000000 voxels, over the "
                       f"limit of {MAX_VOLUME_VOXELS}")


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_header_claim_within_the_limit_but_beyond_the_file_is_truncation(tmp_path: Path, ext: str) -> None:
    """A claim under the voxel limit that the file does not hold: the .nii by its size, the .nii.gz after
    decompressing what it has (memory follows the bytes present, not the 1 GiB claim)."""
    path = small_nifti(tmp_path / f"claim{ext}")
    claim_dims(path, (512, 512, 512))
    patch_header(path, datatype=("<h", 64))  # float64: 1 GiB claimed
    message = refused(lambda: load_nifti(path, ndim=3, max_voxels=MAX_VOLUME_VOXELS, what="case: t1 file x"))
    assert message.startswith("case: t1 file x is corrupt or unreadable (truncated: ")
    assert message.endswith("header's 512 x 512 x 512 voxels from byte 352 need 1073742176)")


def test_truncated_nii_is_refused_by_its_size(tmp_path: Path) -> None:
    path = small_nifti(tmp_path / "cut.nii")
    path.write_bytes(path.read_bytes()[:-100])
    assert refused(lambda: load_nifti(path, ndim=3, max_voxels=MAX_VOLUME_VOXELS)) == (
        f"{path} is corrupt or unreadable (truncated: 2172 bytes, but its header's 12 x 10 x 8 voxels from byte 352 "
        "need 2272)")


@pytest.mark.parametrize(("data", "label"), [
    (np.ones((4, 4, 4), np.complex64), "complex64"),
    (np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), "RGB"),
])
def test_non_numeric_voxel_types_are_refused(tmp_path: Path, data: np.ndarray, label: str) -> None:
    path = small_nifti(tmp_path / "odd.nii.gz", data)
    assert refused(lambda: load_nifti(path, ndim=3, max_voxels=MAX_VOLUME_VOXELS)) == (
        f"{path} has voxel type {label}; only integer and real voxels are read (not complex, RGB or binary)")


@pytest.mark.parametrize(("dims", "reason"), [
    ((3, 0, 10, 8), "header dimensions (0, 10, 8): each must be >= 1"),
    ((3, -5, 10, 8), "header dimensions (-5, 10, 8): each must be >= 1"),
    ((9, 12, 10, 8), "header dim[0] = 2304, not a dimension count 1-7"),  # read byte-swapped, as nibabel guesses
])
def test_impossible_dimensions_are_refused(tmp_path: Path, dims: tuple[int, ...], reason: str) -> None:
    path = small_nifti(tmp_path / "dims.nii")
    patch_header(path, dim=("<8h", (*dims, *[1] * (8 - len(dims)))))
    assert refused(lambda: load_nifti(path, ndim=3, max_voxels=MAX_VOLUME_VOXELS)) == (
        f"{path} is corrupt or unreadable ({reason})")


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_header_extensions_claiming_gigabytes_are_refused_cheaply(tmp_path: Path, ext: str) -> None:
    """nibabel allocates what an extension claims while parsing the header; the reader never lets it."""
    far = small_nifti(tmp_path / f"far{ext}")
    patch_header(far, vox_offset=("<f", 3e9), extension=("<4B", (1, 0, 0, 0)))
    assert refused(lambda: load_nifti(far, ndim=3, max_voxels=MAX_VOLUME_VOXELS)) == (
        f"{far} is corrupt or unreadable (header puts the voxel data at byte 3e+09, outside [0, {MAX_HEADER_BYTES}])")
    bomb = tmp_path / f"bomb{ext}"
    raw = nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.eye(4)).to_bytes()
    head = bytearray(raw[:352]) + struct.pack("<ii", 2**31 - 16, 0) + bytes(8)  # one 2 GiB extension, 16 bytes here
    head[108:112], head[348:352] = struct.pack("<f", 368.0), bytes([1, 0, 0, 0])
    data = bytes(head) + raw[352:]
    bomb.write_bytes(gzip.compress(data) if ext.endswith(".gz") else data)
    message = refused(lambda: load_nifti(bomb, ndim=3, max_voxels=MAX_VOLUME_VOXELS))
    assert message.startswith(f"{bomb} is corrupt or unreadable (")


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_valid_files_read_as_nibabel_reads_them(tmp_path: Path, ext: str) -> None:
    """Scaled, (X, Y, Z, 1) and NIfTI-2 files give nibabel's own arrays, header and affine."""
    ramp = np.arange(60, dtype=np.int16).reshape(3, 4, 5, 1)
    scaled = nib.Nifti1Image(ramp, np.diag([2.0, 2.0, 3.0, 1.0]))
    scaled.header.set_slope_inter(0.5, 1.0)
    nib.save(scaled, tmp_path / f"scaled{ext}")
    small_nifti(tmp_path / f"two{ext}", ramp, nib.Nifti2Image)
    for name in ("scaled", "two"):
        path = tmp_path / f"{name}{ext}"
        image, data = load_nifti(path, ndim=3, max_voxels=60)
        want = nib.load(path)
        expected = np.asanyarray(want.dataobj)[..., 0]
        assert np.array_equal(data, expected) and data.dtype == expected.dtype
        assert np.array_equal(image.affine, want.affine) and image.header.get_zooms() == want.header.get_zooms()
        assert type(image) is type(want) and data.flags.f_contiguous
    with pytest.raises(DataError, match=r"is 3-D, expected a 2-D slice \(H, W\)$"):
        load_nifti(tmp_path / f"two{ext}", ndim=2, max_voxels=60)
    with pytest.raises(DataError, match="over the limit of 59$"):
        load_nifti(tmp_path / f"two{ext}", ndim=3, max_voxels=59)


def test_brats_case_with_a_huge_claim_names_case_and_file(tmp_path: Path) -> None:
    case = write_case(tmp_path, "brats2021")
    claim_dims(case / "BraTS2021_00000_flair.nii.gz", BILLION)
    message = refused(lambda: load_case(find_case(case)))
    assert message.startswith("BraTS2021_00000: flair file BraTS2021_00000_flair.nii.gz is too large: its header "
                              "claims 1000 x 1000 x 1000")


def test_fusion_metrics_slice_over_the_pixel_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 2-D NIfTI slice claiming 100000 x 100000 pixels: read_slice refuses it, and so does the command."""
    for folder in ("fused", "a", "b"):
        (tmp_path / folder).mkdir()
        small_nifti(tmp_path / folder / "x0.nii.gz", np.ones((48, 48), np.float32))
    huge = tmp_path / "fused" / "x0.nii.gz"
    patch_header(huge, dim=("<8h", (2, 30000, 30000, 1, 1, 1, 1, 1)))
    limit = f"over the limit of {MAX_SLICE_PIXELS}"
    assert refused(lambda: read_slice(huge)).endswith(limit)
    out = tmp_path / "out.json"
    code, err = run_cli(["fusion-metrics", "--fused", str(tmp_path / "fused"), "--sources", str(tmp_path / "a"),
                         "--sources", str(tmp_path / "b"), "--out", str(out)], capsys)
    # the command's limit is lower: what 1 GiB of metrics memory allows with two sources (fusion_files.pixel_limit)
    limit = f"over the limit of {pixel_limit(2)}"
    assert one_error_line(code, err) == f"{huge} is too large: its header claims 30000 x 30000 = 900000000 voxels, {limit}"
    assert not out.exists()


def test_build_benchmark_with_a_huge_claim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for index in (1, 2, 3):
        write_case(tmp_path / "brats", "brats2021", f"BraTS2021_{index:05d}", seed=index)
    claim_dims(tmp_path / "brats" / "BraTS2021_00002" / "BraTS2021_00002_t1.nii.gz", BILLION)
    out = tmp_path / "package"
    code, err = run_cli(["build-benchmark", "--out", str(out), "--brats", str(tmp_path / "brats"), "--size", "16",
                         "--split", "0.34,0.33,0.33"], capsys)
    assert one_error_line(code, err).startswith(
        "BraTS2021_00002: t1 file BraTS2021_00002_t1.nii.gz is too large: its header claims 1000 x 1000 x 1000")
    assert not out.exists() and not list(tmp_path.glob(".package*"))


@pytest.mark.parametrize("damage", ["huge", "truncated"])
def test_score_with_a_bad_prediction(tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    write_case(tmp_path / "release", "brats2021")
    (tmp_path / "preds").mkdir()
    pred = small_nifti(tmp_path / "preds" / "BraTS2021_00000.nii", np.zeros(FIXTURE_SHAPE, np.uint8))
    if damage == "huge":
        claim_dims(pred, BILLION)
    else:
        pred.write_bytes(pred.read_bytes()[:-10])
    out = tmp_path / "s.json"
    code, err = run_cli(["score", "--pred", str(tmp_path / "preds"), "--truth", str(tmp_path / "release"),
                         "--convention", "monai", "--out", str(out)], capsys)
    expected = "is too large" if damage == "huge" else "is corrupt or unreadable (truncated: "
    assert one_error_line(code, err).startswith(f"BraTS2021_00000: prediction file BraTS2021_00000.nii {expected}")
    assert not out.exists()


# ---- option bounds -----------------------------------------------------------------------------------


def test_check_seed_accepts_32_bit_integers_only() -> None:
    assert check_seed(0) == 0 and check_seed(np.uint32(MAX_SEED)) == MAX_SEED == 2**32 - 1
    for bad in (-1, 2**32, 10**19, True, 1.0, "3"):
        with pytest.raises(ConfigError, match=r"^seed: must be an integer in \[0, 4294967295\] \(32 bits\)"):
            check_seed(bad)
    with pytest.raises(ConfigError, match="^phantom_seed: "):
        check_seed(-1, option="phantom_seed")


def test_engine_iteration_counts_are_bounded() -> None:
    for name in ("steps", "cg_iters", "neumann_terms"):
        with pytest.raises(ConfigError, match=rf"^{name}: must be <= 10000, got 1000000$"):
            parse_options({name: 10**6})
    assert parse_options({"steps": 2000}).steps == 2000  # what the reference tests run


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999"])
def test_build_benchmark_seed_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: str) -> None:
    out = tmp_path / "pkg"
    code, err = run_cli(["build-benchmark", "--out", str(out), "--phantom", "2", "--seed", seed], capsys)
    assert one_error_line(code, err) == f"--seed: must be an integer in [0, 4294967295] (32 bits), got {seed}"
    assert not out.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--seed", "99999999999999999999"], "--seed: must be an integer in [0, 4294967295] (32 bits)"),
    (["--seed", "-1"], "--seed: must be an integer in [0, 4294967295] (32 bits), got -1"),
    (["--batch-size", "100000"], "--batch-size: must be <= 512, got 100000"),
    (["--inner-steps", "1000000000"], "--inner-steps: must be <= 10000, got 1000000000"),
    (["--seg-width", "100000"], "--seg-width/--seg-depth/seg_options: width must be <= 512, got 100000"),
    (["--seg-depth", "40"], "--seg-width/--seg-depth/seg_options: depth must be <= 8, got 40"),
    (["--seg-width", "256", "--seg-depth", "4"], ("--seg-width/--seg-depth/seg_options: width 256 and depth 4 give a "
                                                  "bottleneck of 4096 channels (width * 2**depth), over the limit of 2048")),
    (["--fusion-width", "100000"], "--fusion-width/fusion_options: width must be <= 512, got 100000"),
    (["--num-workers", "999"], "--num-workers: must be <= "),
    (["--steps", "1000000000000"], "--steps: must be <= 10000000, got 1000000000000"),
    (["--threads", "1000000"], "--threads: must be <= 1024, got 1000000"),
    (["--eval-slices", "99999999999999999999"], "--eval-slices: must be <= 10000000"),
])
def test_train_options_out_of_bounds(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                     message: str) -> None:
    """Refused while the options are resolved: before the benchmark is opened or the run directory made."""
    out = tmp_path / "run"
    code, err = run_cli(["train", "--benchmark", str(tmp_path / "bench"), "--out", str(out), *args], capsys)
    assert one_error_line(code, err).startswith(message)
    assert not out.exists()


@pytest.mark.parametrize("value", ["1.5", "lots"])
def test_non_integer_option_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    code, err = run_cli(["train", "--benchmark", str(tmp_path), "--out", str(tmp_path / "run"), "--batch-size", value],
                        capsys)
    assert code == 2 and "--batch-size" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize(("toml", "message"), [
    ("batch_size = [1, 2]", "--batch-size: expected int, got [1, 2] (in "),
    ("seed = 99999999999999999999", "--seed: must be an integer in [0, 4294967295]"),
    ("seg_options = {width = [16]}", "--seg-width/--seg-depth/seg_options: width must be an integer, got [16]"),
    ('fusion_options = {layers = 100000}', "--fusion-width/fusion_options: layers must be <= 64, got 100000"),
    ('fusion_loss_weights = {ssim = "x"}', "--fusion-loss-weights: fusion loss weight 'ssim' must be a finite number"),
    ("inner_steps = 1e9", "--inner-steps: must be <= 10000, got 1000000000"),
])
def test_train_toml_values_of_the_wrong_type_or_size(tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str,
                                                      message: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml + "\n")
    out = tmp_path / "run"
    code, err = run_cli(["train", "--benchmark", str(tmp_path / "bench"), "--out", str(out), "--config", str(config)],
                        capsys)
    assert one_error_line(code, err).startswith(message)
    assert not out.exists()
