"""Every writer keeps the promise of the README's "One-line errors, nothing half-written, nothing lost": a kill -9
at any moment of ``export --format parquet`` leaves a package that verifies and a rerun that succeeds; one
writer per output for ``score`` and ``fusion-metrics``; --overwrite never replaces a file fuse4seg did not write;
a full disk in train, pretrain and export is one line that keeps the previous outputs; errors in DataLoader
workers are the same one line as without workers; a distributed start-up without peers has a deadline; and
the smaller leaks (linked package files, a run folder inside the package, spreadsheet formulas in CSV cells,
a prediction that is the truth file)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _cli import one_line, run
from test_fusion_files import write_folders
from test_score import make_release

from fuse4seg.cli import main
from fuse4seg.data.package.export import export_parquet
from fuse4seg.data.package.staging import debris as export_debris
from fuse4seg.data.package.verify import verify
from fuse4seg.errors import ConfigError
from fuse4seg.io import csv_cell, output_lock, sha256_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}






def package_debris(package: Path, lock: bool = True) -> list[str]:
    """Temporaries and locks of fuse4seg inside a package or beside it (``lock`` False: the lock file beside it
    aside, which a kill -9 leaves, which locks nothing and which the next write removes)."""
    return sorted(p.name for folder in (package, package.parent) for p in folder.iterdir()
                  if p.name.endswith((".partial", ".old", ".lock"))
                  and (lock or p.name != f".{package.name}.lock"))


# ---- kill -9 during export --format parquet -------------------------------------------------------------------

#: Runs export_parquet in a child; with a count N > 0, the child dies (os._exit, as a SIGKILL would) at its
#: N-th rename or marker write: every step of the commit is hit exactly.
EXPORT_CHILD = textwrap.dedent("""
    import os, sys, time
    package, overwrite, die_at = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
    from fuse4seg.data.package.export import export_parquet
    if die_at:
        calls, real = [0], os.replace
        def replace(*args, **kwargs):
            calls[0] += 1
            if calls[0] == die_at:
                os._exit(137)
            return real(*args, **kwargs)
        os.replace = replace
    print("ready", flush=True)
    started = time.monotonic()
    export_parquet(package, overwrite=overwrite, shard_bytes=60_000)  # several shards per split
    print(f"done {time.monotonic() - started:.3f}", flush=True)
""")


def start_export(package: Path, overwrite: bool, die_at: int = 0) -> subprocess.Popen:
    """The export child, started and past its imports (it printed "ready")."""
    proc = subprocess.Popen([sys.executable, "-c", EXPORT_CHILD, str(package), "1" if overwrite else "0",
                             str(die_at)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def verify_and_rerun(package: Path, reference: dict[str, str]) -> None:
    """The package verifies as it is; a plain rerun succeeds (or, when the killed export had already committed,
    says the Parquet folder exists, and --overwrite succeeds); the result equals an uninterrupted export."""
    report = verify(package)
    assert package_debris(package, lock=False) == [], package_debris(package)
    if report["parquet"] is None:
        export_parquet(package, shard_bytes=60_000)
    else:
        with pytest.raises(ConfigError, match="already exists"):
            export_parquet(package, shard_bytes=60_000)
        export_parquet(package, overwrite=True, shard_bytes=60_000)
    verify(package)
    assert shards(package) == reference
    assert package_debris(package) == []


def shards(package: Path) -> dict[str, str]:
    """sha256 of every file in the package but the marker."""
    return {str(p.relative_to(package)): sha256_file(p) for p in sorted(package.rglob("*"))
            if p.is_file() and p.name != ".fuse4seg"}


@pytest.fixture(scope="module")
def export_reference(bench: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], float]:
    """(the session package without Parquet, its files after an uninterrupted export, the export's seconds)."""
    root = tmp_path_factory.mktemp("export-kill")
    fresh = Path(shutil.copytree(bench, root / "fresh" / "pkg"))
    done = Path(shutil.copytree(bench, root / "done" / "pkg"))
    proc = start_export(done, False)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert proc.wait() == 0 and line.startswith("done"), line
    return fresh, shards(done), float(line.split()[1])


@pytest.mark.slow
def test_kill_at_every_step_of_the_export_commit(export_reference: tuple[Path, dict[str, str], float],
                                                 tmp_path: Path) -> None:
    fresh, reference, _ = export_reference
    kills = 0
    for overwrite in (False, True):
        for die_at in range(1, 30):
            package = Path(shutil.copytree(fresh, tmp_path / f"{overwrite}-{die_at}" / "pkg"))
            if overwrite:
                export_parquet(package, shard_bytes=60_000)
            proc = start_export(package, overwrite, die_at)
            if proc.wait() == 0:  # past the last rename: every step has been hit
                break
            kills += 1
            verify_and_rerun(package, reference)
            shutil.rmtree(package.parent)
    assert kills >= 10, kills


@pytest.mark.slow
def test_kill_9_at_random_moments_of_export(export_reference: tuple[Path, dict[str, str], float],
                                            tmp_path: Path) -> None:
    fresh, reference, seconds = export_reference
    rng = random.Random(27)
    kills = 0
    # Until 24 kills have landed (a kill after the export finished counts for nothing): a loaded machine stretches
    # the export past the reference time, so some delays land after it.
    for i in range(48):
        package = Path(shutil.copytree(fresh, tmp_path / str(i) / "pkg"))
        overwrite = i % 2 == 1
        if overwrite:
            export_parquet(package, shard_bytes=60_000)
        proc = start_export(package, overwrite)
        time.sleep(rng.uniform(0, seconds))
        proc.kill()
        kills += proc.wait() == -9
        verify_and_rerun(package, reference)
        shutil.rmtree(package.parent)
        if kills >= 24:
            break
    assert kills >= 20


def test_verify_removes_an_old_versions_export_temporaries(export_reference: tuple[Path, dict[str, str], float],
                                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fresh, _, _ = export_reference
    package = Path(shutil.copytree(fresh, tmp_path / "pkg"))
    for name in (".README.md.abcd1234.partial", ".croissant.json.Xy_12345.partial", ".parquet.lock"):
        (package / name).write_text("x")
    (package / ".parquet.abcdefgh.partial").mkdir()
    (package / ".parquet.abcdefgh.partial" / ".fuse4seg").write_text('{"kind": "partial"}\n')
    (package / ".parquet.abcdefgh.partial" / "train-00000-of-00001.parquet").write_text("x")
    code, err = run(["verify", str(package)], capsys)
    assert code == 0, err
    assert export_debris(package) == []
    (package / "notes.txt").write_text("mine")  # a user's file is never taken for a temporary
    code, err = run(["verify", str(package)], capsys)
    one_line(code, err, "not listed in croissant.json: notes.txt")
    assert (package / "notes.txt").read_text() == "mine"


def test_verify_of_a_package_being_exported_says_so(export_reference: tuple[Path, dict[str, str], float],
                                                    tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fresh, _, _ = export_reference
    package = Path(shutil.copytree(fresh, tmp_path / "pkg"))
    (package / ".parquet.abcdefgh.partial").mkdir()
    (package / ".parquet.abcdefgh.partial" / ".fuse4seg").write_text('{"kind": "partial"}\n')
    with output_lock(package):  # an export at work
        code, err = run(["verify", str(package)], capsys)
    one_line(code, err, "another fuse4seg process is writing")


# ---- one writer per output: score and fusion-metrics -----------------------------------------------------------

def concurrent(argvs: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Run the command lines at the same time (each in its own process); their results."""
    procs = [subprocess.Popen([sys.executable, "-m", "fuse4seg", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV) for argv in argvs]
    results = []
    for proc, argv in zip(procs, argvs):
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return results


def score_argv(tmp_path: Path, out: Path) -> list[str]:
    """A score command line over a 3-case release, writing ``out``."""
    release, preds = tmp_path / "release", tmp_path / "preds"
    if not release.exists():
        make_release(tmp_path)
    return ["score", "--pred", str(preds), "--truth", str(release), "--convention", "monai", "--out", str(out)]


def fusion_argv(tmp_path: Path, out: Path) -> list[str]:
    """A fusion-metrics command line over three 3-image folders, writing ``out``."""
    if not (tmp_path / "fused").exists():
        write_folders(tmp_path, ["a0", "a1", "a2"])
    return ["fusion-metrics", "--fused", str(tmp_path / "fused"), "--sources", str(tmp_path / "a"), "--sources",
            str(tmp_path / "b"), "--out", str(out)]


@pytest.mark.parametrize("argv_for", [score_argv, fusion_argv], ids=["score", "fusion-metrics"])
def test_two_writers_of_one_output_one_writes_the_other_gets_one_line(argv_for: object, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out" / "same.json"
    argv = argv_for(tmp_path, out)  # type: ignore[operator]
    out.parent.mkdir()
    with output_lock(out):
        code, err = run(argv, capsys)  # another process holds the output: refused at once
    one_line(code, err, "another fuse4seg process is writing")
    assert not out.exists()
    results = concurrent([argv, argv])
    assert sorted(r.returncode for r in results) == [0, 1], [r.stderr for r in results]
    loser = next(r for r in results if r.returncode == 1)
    assert loser.stderr.startswith("error: ") and loser.stderr.count("\n") == 1, loser.stderr
    assert "another fuse4seg process is writing" in loser.stderr or "already exists" in loser.stderr, loser.stderr
    assert json.loads(out.read_text())
    out.parent.joinpath("keep").write_text("x")  # the loser removed nothing
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["keep", "same.json", "same.csv"] if argv[0] == "score" else ["keep", "same.json"])


def test_score_overwrite_never_replaces_a_foreign_csv_beside_it(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "s.json"
    argv = score_argv(tmp_path, out)
    assert run(argv, capsys)[0] == 0
    ours = out.with_suffix(".csv").read_bytes()
    assert run([*argv, "--overwrite"], capsys)[0] == 0  # our own pair is replaced
    assert out.with_suffix(".csv").read_bytes() == ours
    out.with_suffix(".csv").write_text("name,salary\nalice,1\n")  # someone's spreadsheet
    before = out.read_bytes()
    code, err = run([*argv, "--overwrite"], capsys)
    one_line(code, err, "s.csv (written beside s.json) was not written by fuse4seg")
    assert out.with_suffix(".csv").read_text() == "name,salary\nalice,1\n" and out.read_bytes() == before
    out.unlink()  # only the foreign CSV: still refused
    code, err = run([*argv, "--overwrite"], capsys)
    one_line(code, err, "was not written by fuse4seg")
    assert not out.exists()


# ---- the smaller leaks -----------------------------------------------------------------------------------------

def test_csv_cells_that_a_spreadsheet_would_execute_are_escaped() -> None:
    for text in ("=1+1", "+1", "-cmd", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(text) == "'" + text
    for value in ("BraTS2021_00000", "", 0.5, -0.5, 3, None):
        assert csv_cell(value) == value


def test_score_csv_escapes_a_formula_case_id() -> None:
    from fuse4seg.metrics.scoring import SCORE_FIELDS, csv_text

    row = {f: -0.5 for f in SCORE_FIELDS}
    text = csv_text([{"case": "=HYPERLINK(1)", "regions": {"WT": row}}])
    assert text.splitlines()[1].startswith("'=HYPERLINK(1),WT,-0.5")


def test_evaluate_and_robustness_csvs_escape_formulas(tmp_path: Path) -> None:
    from fuse4seg.evaluation.robustness import _csv
    from fuse4seg.evaluation.segment2d import write_reports_csv

    write_reports_csv(tmp_path / "reports.csv", [{"case_id": "@evil", "slice_index": 3, "score": -0.25,
                                                  "predicted_report": "=cmd|' /C calc'!A0",
                                                  "reference_report": "plain"}])
    row = (tmp_path / "reports.csv").read_text().splitlines()[1]
    assert row == "'@evil,3,-0.2500,'=cmd|' /C calc'!A0,plain", row
    assert _csv([{"degradation": "+noise", "level": -1.5}]).splitlines()[1] == "'+noise,-1.5"


def test_score_refuses_a_prediction_that_is_the_truth_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = score_argv(tmp_path, tmp_path / "s.json")
    preds = tmp_path / "preds"
    first = min(preds.iterdir())
    case_id = first.name[:-len(".nii.gz")]
    truth = next(p for p in (tmp_path / "release").rglob("*seg.nii*") if case_id in p.name)
    first.unlink()
    first.symlink_to(truth)
    code, err = run(argv, capsys)
    one_line(code, err, "is the release's own file")
    assert not (tmp_path / "s.json").exists()


def test_verify_refuses_package_files_that_are_links_out_of_the_package(
        export_reference: tuple[Path, dict[str, str], float], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fresh, _, _ = export_reference
    package = Path(shutil.copytree(fresh, tmp_path / "pkg"))
    outside = tmp_path / "elsewhere.h5"
    shutil.move(package / "brats_fuse.h5", outside)
    (package / "brats_fuse.h5").symlink_to(outside)
    code, err = run(["verify", str(package)], capsys)
    one_line(code, err, "not a regular file")


# ---- a full disk: train, pretrain, export ----------------------------------------------------------------------

TRAIN = ["--steps", "2", "--seg-width", "4", "--seg-depth", "2", "--fusion-width", "4", "--batch-size", "2",
         "--eval-slices", "2", "--eval-every", "1", "--checkpoint-every", "1", "--no-progress", "--threads", "1"]
PRETRAIN = ["--steps", "2", "--width", "4", "--depth", "2", "--embed-dim", "8", "--batch-size", "4",
            "--checkpoint-every", "1", "--no-progress"]

#: The command line in a child whose disk is full in one way: ``fsize N`` (no file may grow past N bytes),
#: ``tensorboard`` (TensorBoard's writer thread gets ENOSPC) or ``metrics`` (pretrain's metrics.jsonl is /dev/full).
FULL_DISK = textwrap.dedent("""
    import builtins, errno, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    how, arg = sys.argv[1], sys.argv[2]
    if how == "fsize":
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(arg), int(arg)))
    elif how == "tensorboard":
        from tensorboard.summary.writer import record_writer
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")
        record_writer.RecordWriter.write = write
    elif how == "metrics":
        import fuse4seg.pretrain.runner as runner
        def opened(path, *args, **kwargs):
            return builtins.open("/dev/full" if str(path).endswith("metrics.jsonl") else path, *args, **kwargs)
        runner.open = opened
    from fuse4seg.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def full_disk(how: str, arg: object, argv: list[str]) -> subprocess.CompletedProcess:
    """Run the command line with a full disk (see FULL_DISK)."""
    return subprocess.run([sys.executable, "-c", FULL_DISK, how, str(arg), *argv], capture_output=True, text=True,
                          env=ENV, timeout=300, check=False)


def disk_full_line(done: subprocess.CompletedProcess, path: Path) -> None:
    """Exit 1 and one line that says the disk is full (or the size limit) and names ``path``."""
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: cannot write ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and str(path) in done.stderr, done.stderr
    assert any(w in done.stderr for w in ("disk is full", "No space left", "File too large")), done.stderr


def files(root: Path, names: tuple[str, ...]) -> dict[str, str]:
    """sha256 of the named files under ``root``."""
    return {name: sha256_file(root / name) for name in names}


@pytest.mark.slow
def test_a_full_disk_in_train_is_one_line_and_keeps_the_checkpoints(bench: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "--benchmark", str(bench), "--out", str(run_dir), *TRAIN]) == 0
    before = files(run_dir, ("best.pt", "last.pt"))
    resume = ["train", "--out", str(run_dir), "--resume", "--steps", "4", "--no-progress"]
    done = full_disk("tensorboard", 0, resume)  # TensorBoard's writer thread: its first write fails
    disk_full_line(done, run_dir / "tb")
    assert files(run_dir, ("best.pt", "last.pt")) == before
    done = full_disk("fsize", (run_dir / "last.pt").stat().st_size // 2, resume)  # checkpoints: torch's zip writer
    disk_full_line(done, run_dir)
    assert files(run_dir, ("best.pt", "last.pt")) == before
    assert [p.name for p in run_dir.iterdir() if p.name.endswith((".partial", ".old"))] == []


@pytest.mark.slow
def test_a_full_disk_in_pretrain_is_one_line_and_keeps_the_checkpoint(bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "pre"
    assert main(["pretrain", "--benchmark", str(bench), "--out", str(out), *PRETRAIN]) == 0
    before = files(out, ("last.pt", "encoder.pt"))
    resume = ["pretrain", "--out", str(out), "--resume", "--steps", "4", "--no-progress"]
    done = full_disk("metrics", 0, resume)  # metrics.jsonl's flush (and close)
    disk_full_line(done, out / "metrics.jsonl")
    assert files(out, ("last.pt", "encoder.pt")) == before
    done = full_disk("fsize", (out / "last.pt").stat().st_size // 2, resume)
    disk_full_line(done, out)
    assert files(out, ("last.pt", "encoder.pt")) == before
    assert main(["pretrain", "--out", str(out), "--resume", "--steps", "3", "--no-progress"]) == 0  # resumable


def test_a_full_disk_in_export_is_one_line_and_keeps_the_package(
        export_reference: tuple[Path, dict[str, str], float], tmp_path: Path) -> None:
    fresh, _, _ = export_reference
    package = Path(shutil.copytree(fresh, tmp_path / "pkg"))
    before = shards(package)
    done = full_disk("fsize", 4096, ["export", str(package), "--format", "parquet"])
    disk_full_line(done, package / "parquet")
    assert shards(package) == before and package_debris(package) == []
    verify(package)
    export_parquet(package)
    exported = shards(package)
    done = full_disk("fsize", 4096, ["export", str(package), "--format", "parquet", "--overwrite"])
    disk_full_line(done, package / "parquet")
    assert shards(package) == exported and package_debris(package) == []
    verify(package)


# ---- errors in DataLoader workers ------------------------------------------------------------------------------

def test_an_error_in_a_dataloader_worker_is_the_same_one_line(bench: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    from test_reliability_h5 import _corrupt_first_chunk, rehash

    package = Path(shutil.copytree(bench, tmp_path / "pkg"))
    _corrupt_first_chunk(package / "brats_fuse.h5", "train/source", (2, 40))
    rehash(package)
    lines = {}
    for workers in ("0", "2"):
        code, err = run(["train", "--benchmark", str(package), "--out", str(tmp_path / f"run{workers}"), *TRAIN,
                         "--no-cache", "--num-workers", workers], capsys)
        one_line(code, err, "unreadable")
        lines[workers] = err.replace(f"run{workers}", "RUN")
    assert lines["0"] == lines["2"]


# ---- distributed start-up has a deadline -----------------------------------------------------------------------

@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_whose_peers_never_join_stops_with_one_line(bench: Path, tmp_path: Path, rank: int) -> None:
    from test_distributed import free_port

    env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fuse4seg", "train", "--benchmark", str(bench), "--out",
                           str(tmp_path / "run"), *TRAIN, "--join-timeout", "3"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert time.monotonic() - started < 60
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: process RANK {rank} of WORLD_SIZE 2: the other processes did not all "
                                  "join within 3 s"), done.stderr
    assert "--join-timeout" in done.stderr and not (tmp_path / "run").exists()


def test_a_run_folder_may_not_be_inside_the_benchmark_package(bench: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    package = Path(shutil.copytree(bench, tmp_path / "pkg"))
    for argv in (["train", "--benchmark", str(package), "--out", str(package / "run"), *TRAIN],
                 ["pretrain", "--benchmark", str(package), "--out", str(package / "pre"), *PRETRAIN]):
        code, err = run(argv, capsys)
        one_line(code, err, "is inside the --benchmark input")
    assert not (package / "run").exists() and not (package / "pre").exists()
    verify(package)
