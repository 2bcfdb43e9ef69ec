"""`fuse4seg build-benchmark`, `verify`, `cite` end to end, and bad input through the command line."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
from _benchmark_data import write_release

from fuse4seg.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    """Exit 1 and one `error:` line (after the progress bar's carriage-return redraws), no traceback."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 1, err
    assert "Traceback" not in err and err.count("error:") == 1
    assert lines[-1].startswith("error: ") and pattern in lines[-1], lines[-1]


def hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file in ``directory``, by name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.mark.slow
def test_phantom_build_verify_cite_and_identical_rebuild(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI round trip on a 2-case phantom: the summary names the phantom and the split counts, verify exits 0,
    cite gives the dataset entry without BraTS papers, the card records the command, and --overwrite rebuilds
    byte-identical files with no temp sibling left."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "pkg"
    argv = ["build-benchmark", "--out", str(out), "--phantom", "2", "--phantom-scale", "0.25", "--size", "24",
            "--slices-per-case", "2", "--split", "0.5,0.5,0", "--fusion", "wavelet"]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "phantom release of 2 synthetic cases" in stdout and "train     1 cases       2 slices" in stdout
    first = hashes(out)
    assert run(["verify", str(out)], capsys)[0] == 0
    code, bibtex, _ = run(["cite", str(out)], capsys)
    assert code == 0 and "@misc{" in bibtex and "@article" not in bibtex  # synthetic: no BraTS papers
    card = (out / "README.md").read_text()
    assert "fuse4seg build-benchmark --out" in card and "--phantom 2 --phantom-scale 0.25" in card
    assert run([*argv, "--overwrite"], capsys)[0] == 0
    assert hashes(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A 4-case tiny BraTS 2021 release in this test's tmp_path."""
    return write_release(tmp_path / "brats", cases=4)


def bad_build(tmp_path: Path, capsys: pytest.CaptureFixture, release: Path, *extra: str,
              pattern: str) -> None:
    """Build with bad input: one-line error, and tmp_path unchanged (no DIR, no temp sibling)."""
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["build-benchmark", "--out", str(tmp_path / "pkg"), "--brats", str(release),
                        "--size", "16", *extra], capsys)
    assert_one_line_error(code, err, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no DIR, no temp sibling


@pytest.mark.parametrize(("extra", "pattern"), [
    (("--split", "0.7,0.2,0.2"), "--split: '0.7,0.2,0.2': fractions sum to 1.1"),
    (("--split", "0.7,0.3"), "expected three non-negative fractions"),
    (("--fusion", "median"), "unknown fusion method 'median'"),
    (("--fusion-inputs", "t1ce,pd"), "unknown modality 'pd'"),
    (("--workers", "0"), "--workers: must be >= 1"),
    (("--size", "100000"), "--size: must be <= 4096 pixels, got 100000"),
])
def test_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture, release: Path, extra: tuple[str, ...],
                     pattern: str) -> None:
    """Each bad option (split sum or length, fusion, fusion inputs, workers, --size above 4096) is one `error:`
    line naming the option, exit 1, and nothing written next to --out."""
    bad_build(tmp_path, capsys, release, *extra, pattern=pattern)


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path (to show a release is untouched)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("out", "brats", "pattern"), [
    ("rel", "rel", "is the --brats input"),
    ("nest", "nest/sub/rel", "contains the --brats input"),
    ("nest/sub/rel/../../", "nest/sub/rel", "contains the --brats input"),
    ("rel/pkg", "rel", "is inside the --brats input"),
    ("link", "rel", "is the --brats input"),
])
def test_out_overlapping_the_release_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture, out: str,
                                                brats: str, pattern: str) -> None:
    """--out equal to --brats, a parent of it (also via '..' or a symlink), or inside it is a one-line
    ConfigError even with --overwrite, and the release is byte-for-byte untouched (before the fix the
    build replaced the release folder with the package)."""
    release = write_release(tmp_path / brats, cases=4)
    (tmp_path / "link").symlink_to(release)
    before = _tree(tmp_path)
    code, _, err = run(["build-benchmark", "--out", str(tmp_path / out), "--brats", str(release), "--size", "16",
                        "--overwrite"], capsys)
    assert_one_line_error(code, err, pattern)
    assert _tree(tmp_path) == before and not list(tmp_path.rglob("*.partial"))


def test_fewer_cases_than_splits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two cases for three non-zero splits: a one-line error with both counts and nothing written."""
    release = write_release(tmp_path / "two", cases=2)
    bad_build(tmp_path, capsys, release, pattern="--split: needs at least 3 cases (one per non-zero split), found 2")


def test_existing_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture, release: Path) -> None:
    """An existing --out without --overwrite is refused in one line and its content is left as it was."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "keep.txt").write_text("mine")
    bad_build(tmp_path, capsys, release, pattern="already exists (pass --overwrite")
    assert (tmp_path / "pkg" / "keep.txt").read_text() == "mine"


def test_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture, release: Path) -> None:
    """--out under a regular file: one-line 'cannot create output directory' error and no folder or temp sibling
    created."""
    (tmp_path / "afile").write_text("x")
    code, _, err = run(["build-benchmark", "--out", str(tmp_path / "afile" / "pkg"), "--brats", str(release)],
                       capsys)
    assert_one_line_error(code, err, "cannot create output directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "brats"]


def test_missing_modality(tmp_path: Path, capsys: pytest.CaptureFixture, release: Path) -> None:
    """A case without its flair file: one-line error naming that case, nothing written."""
    (release / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz").unlink()
    bad_build(tmp_path, capsys, release, pattern="BraTS2021_00002")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_corrupt_nifti(tmp_path: Path, capsys: pytest.CaptureFixture, release: Path, workers: str) -> None:
    """A truncated gzip t1ce file, read in-process or by a worker process: one-line error naming the case,
    nothing written."""
    path = release / "BraTS2021_00003" / "BraTS2021_00003_t1ce.nii.gz"
    path.write_bytes(gzip.compress(b"\x00" * 100)[:-5])  # truncated gzip of garbage
    bad_build(tmp_path, capsys, release, "--workers", workers, pattern="BraTS2021_00003")


def test_not_a_brats_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An empty --brats folder: one-line error naming it, nothing written."""
    (tmp_path / "empty").mkdir()
    code, _, err = run(["build-benchmark", "--out", str(tmp_path / "pkg"), "--brats", str(tmp_path / "empty")],
                       capsys)
    assert_one_line_error(code, err, "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_verify_and_cite_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """verify on a missing folder and cite on a folder without CITATION.cff: one `error:` line each naming what
    is missing."""
    assert_one_line_error(*run(["verify", str(tmp_path / "none")], capsys)[::2], "no such package directory")
    tmp_path.joinpath("pkg").mkdir()
    assert_one_line_error(*run(["cite", str(tmp_path / "pkg")], capsys)[::2], "CITATION.cff: missing")
