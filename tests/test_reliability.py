"""Nothing lost, nothing half-written: --overwrite only replaces fuse4seg's own outputs, after success; one writer
per output; full disks and signals are one clean line; kill -9 leaves no orphan and no debris, and a rerun or
--resume gives byte-identical packages and bit-identical weights.

(Crafted HDF5 packages: tests/test_reliability_h5.py; crafted NIfTI files and option bounds:
tests/test_reliability_inputs.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import one_line, run

from fuse4seg.cli import main
from fuse4seg.io import MARKER, output_lock

TRAIN = ["--steps", "6", "--seg-width", "4", "--seg-depth", "2", "--fusion-width", "4", "--batch-size", "2",
         "--eval-slices", "2", "--eval-every", "2", "--checkpoint-every", "1", "--no-progress", "--threads", "1"]






def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (hidden files too) by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def debris(folder: Path) -> list[str]:
    """Temporaries and lock files of fuse4seg left directly in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".partial", ".old", ".lock")))


@pytest.fixture(scope="module")
def made(phantom_release: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 48 px benchmark of the phantom release and a 6-step bilevel run on it."""
    root = tmp_path_factory.mktemp("reliability")
    bench, run_dir = root / "bench", root / "run"
    assert main(["build-benchmark", "--out", str(bench), "--brats", str(phantom_release), "--size", "48",
                 "--slices-per-case", "3", "--split", "0.5,0.25,0.25"]) == 0
    assert main(["train", "--benchmark", str(bench), "--out", str(run_dir), *TRAIN]) == 0
    return {"release": phantom_release, "bench": bench, "run": run_dir, "root": root}


# ---- --overwrite replaces only what fuse4seg made --------------------------------------------------------------


def test_fuse_out_may_not_overlap_the_case_the_release_or_the_run(made: dict[str, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    release, run_dir = made["release"], made["run"]
    case = next(p for p in sorted(release.iterdir()) if p.is_dir())
    before = {"release": tree(release), "run": tree(run_dir)}
    for out in (case, release, run_dir, run_dir / "fused", case / "out", release / ".." / release.name):
        code, err = run(["fuse", "--run", str(run_dir), "--case", str(case), "--out", str(out), "--overwrite"], capsys)
        one_line(code, err, "could destroy it")
    assert {"release": tree(release), "run": tree(run_dir)} == before
    out = tmp_path / "fused"
    assert run(["fuse", "--run", str(run_dir), "--case", str(case), "--out", str(out)], capsys)[0] == 0
    assert json.loads((out / MARKER).read_text()) == {"kind": "fuse"}
    assert run(["fuse", "--run", str(run_dir), "--case", str(case), "--out", str(out), "--overwrite"], capsys)[0] == 0


@pytest.mark.parametrize("command", ["build-benchmark", "phantom", "fuse", "train"])
def test_overwrite_never_replaces_a_folder_fuse4seg_did_not_make(made: dict[str, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture, command: str) -> None:
    """A user's folder (with a config.json, even with a marker of another kind) survives --overwrite."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("irreplaceable")
    (out / MARKER).write_text('{"kind": "something else"}')
    case = next(p for p in sorted(made["release"].iterdir()) if p.is_dir())
    argv = {"build-benchmark": ["build-benchmark", "--brats", str(made["release"]), "--size", "16"],
            "phantom": ["phantom", "--cases", "1", "--scale", "0.2"],
            "fuse": ["fuse", "--run", str(made["run"]), "--case", str(case)],
            "train": ["train", "--benchmark", str(made["bench"]), *TRAIN]}[command]
    before = tree(out)
    code, err = run([*argv, "--out", str(out), "--overwrite"], capsys)
    one_line(code, err, "refusing to")
    assert tree(out) == before and debris(tmp_path) == []


def test_train_overwrite_keeps_the_old_run_until_the_new_one_succeeds(made: dict[str, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from fuse4seg.train.loop import Trainer

    old = tmp_path / "run"
    assert run(["train", "--benchmark", str(made["bench"]), "--out", str(old), *TRAIN[:1], "2", *TRAIN[2:]],
               capsys)[0] == 0
    before = tree(old)
    real = Trainer.one_step

    def failing(self: Trainer, fit: dict, hold: dict | None) -> object:
        """The real step until step 3, then a crash (after checkpoints were written)."""
        if self.step == 3:
            raise RuntimeError("simulated crash")
        return real(self, fit, hold)

    monkeypatch.setattr(Trainer, "one_step", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["train", "--benchmark", str(made["bench"]), "--out", str(old), *TRAIN, "--overwrite"])
    assert tree(old) == before and debris(tmp_path) == []
    monkeypatch.setattr(Trainer, "one_step", real)
    assert run(["train", "--benchmark", str(made["bench"]), "--out", str(old), *TRAIN, "--overwrite"], capsys)[0] == 0
    assert torch.load(old / "last.pt", weights_only=True)["step"] == 6 and debris(tmp_path) == []


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(made: dict[str, Path], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A late failure (first step) removes the new run folder, and a bad TOML table creates nothing; a rerun works."""
    from fuse4seg.train.loop import Trainer

    out = tmp_path / "run"
    bad = tmp_path / "bad.toml"
    bad.write_text("[fusion_loss_weights]\nbogus = 1.0\n")
    code, err = run(["train", "--benchmark", str(made["bench"]), "--out", str(out), "--config", str(bad), *TRAIN],
                    capsys)
    one_line(code, err, "bogus")
    assert not out.exists()

    def broken(self: Trainer, fit: dict, hold: dict | None) -> object:
        """A failure at the very first step."""
        raise RuntimeError("first step fails")

    monkeypatch.setattr(Trainer, "one_step", broken)
    with pytest.raises(RuntimeError):
        main(["train", "--benchmark", str(made["bench"]), "--out", str(out), *TRAIN])
    assert not out.exists() and debris(tmp_path) == []
    monkeypatch.undo()
    (out / "tb").mkdir(parents=True)  # what a run killed (-9) before its first checkpoint leaves
    (out / MARKER).write_text('{"kind": "run"}')
    assert run(["train", "--benchmark", str(made["bench"]), "--out", str(out), *TRAIN], capsys)[0] == 0


def test_a_second_writer_of_one_output_is_refused(made: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "pkg"
    for argv in (["build-benchmark", "--brats", str(made["release"]), "--size", "16"],
                 ["phantom", "--cases", "1", "--scale", "0.2"],
                 ["train", "--benchmark", str(made["bench"]), *TRAIN]):
        with output_lock(out):  # another process holding the lock: flock conflicts across open files too
            code, err = run([*argv, "--out", str(out)], capsys)
        one_line(code, err, "another fuse4seg process is writing")
        assert not out.exists()


# ---- full disks, signals ---------------------------------------------------------------------------------------

LIMITED = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from fuse4seg.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def limited(limit: int, argv: list[str]) -> subprocess.CompletedProcess:
    """Run the command line in a subprocess that cannot write files over ``limit`` bytes (a full disk)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), *argv], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoints(made: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "--benchmark", str(made["bench"]), "--out", str(run_dir), *TRAIN[:1], "2", *TRAIN[2:]]) == 0
    before = tree(run_dir)
    size = (run_dir / "last.pt").stat().st_size
    done = limited(size // 2, ["train", "--out", str(run_dir), "--resume", "--steps", "4", "--no-progress"])
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: cannot write") and "Traceback" not in done.stderr, done.stderr
    after = tree(run_dir)
    for name in ("best.pt", "last.pt"):  # config.json is rewritten by --resume (its new --steps)
        assert after[name] == before[name], name
    assert debris(run_dir) == []
    case = next(p for p in sorted(made["release"].iterdir()) if p.is_dir())
    for argv in (["phantom", "--out", str(tmp_path / "release"), "--cases", "1", "--scale", "0.3"],
                 ["fuse", "--run", str(made["run"]), "--case", str(case), "--out", str(tmp_path / "fused")]):
        done = limited(20_000, argv)
        assert done.returncode == 1 and done.stderr.startswith("error: cannot write"), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


SWALLOWED = textwrap.dedent("""
    import os, signal, sys, time, weakref
    import fuse4seg.cli as cli
    cli.UNWIND_SECONDS = 1.0
    cli._handle_signals()
    class Thing: pass
    thing = Thing()
    # The SystemExit of the handler fires inside a weakref callback, where Python prints and swallows it.
    ref = weakref.ref(thing, lambda r: os.kill(os.getpid(), signal.SIGTERM))
    del thing
    print("survived the first delivery", flush=True)
    time.sleep(30)
    sys.exit(0)
""")


def test_a_sigterm_swallowed_by_a_weakref_callback_still_stops_the_process() -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SWALLOWED], capture_output=True, text=True, timeout=60,
                          check=False)
    assert "survived the first delivery" in done.stdout  # the first one was indeed swallowed
    assert done.returncode == -signal.SIGTERM and time.monotonic() - started < 20


# ---- kill -9 at random points: no orphans, no debris, identical results after a rerun ---------------------------


def kill_at(argv: list[str], delay: float) -> bool:
    """Start the command line in its own process group, SIGKILL its main process after ``delay`` s (if still
    running), and wait until no process of the group is left (workers must follow their parent); returns
    whether it was killed."""
    proc = subprocess.Popen([sys.executable, "-m", "fuse4seg", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        proc.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        killed = True
    deadline = time.monotonic() + 15
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return killed
        assert time.monotonic() < deadline, "processes of the killed command are still alive (orphans)"
        time.sleep(0.1)


@pytest.mark.slow
def test_kill_9_during_build_then_rerun_gives_the_identical_package(made: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while replacing a package (the old one must survive whole) or while writing a new one (nothing
    may appear); the rerun's package is byte-identical to an uninterrupted build."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # the card's date; the subprocesses inherit it
    out = tmp_path / "pkg"
    argv = ["build-benchmark", "--brats", str(made["release"]), "--size", "48", "--slices-per-case", "3",
            "--split", "0.5,0.25,0.25", "--workers", "2", "--out", str(out)]
    assert main(argv) == 0
    reference = tree(out)
    rng, kills = np.random.default_rng(0), []
    for seed in range(4):
        replacing = seed % 2 == 0
        if not replacing:
            shutil.rmtree(out)
        kills.append(kill_at([*argv, "--overwrite"], float(rng.uniform(0.5, 4.0))))
        assert (tree(out) == reference) if out.exists() else not replacing, seed
        assert main([*argv, "--overwrite"]) == 0
        assert tree(out) == reference, seed
        assert debris(tmp_path) == [], seed
    assert any(kills), "no build was killed while running: lengthen the command or shorten the delays"


@pytest.mark.slow
def test_kill_9_during_training_then_resume_gives_bit_identical_weights(made: dict[str, Path], tmp_path: Path) -> None:
    reference = torch.load(made["run"] / "last.pt", weights_only=True)
    rng, kills = np.random.default_rng(1), []
    for seed in range(3):
        out = tmp_path / f"run{seed}"
        kills.append(kill_at(["train", "--benchmark", str(made["bench"]), "--out", str(out), *TRAIN],
                             float(rng.uniform(2.0, 8.0))))
        # kill -9 allows no cleanup: the lock file may stay (it locks nothing) until the next write of RUN
        assert [name for name in debris(tmp_path) if not name.endswith(".lock")] == []
        if (out / "last.pt").exists():
            code = main(["train", "--out", str(out), "--resume", "--no-progress"])
        else:  # killed before the first checkpoint: a plain rerun
            code = main(["train", "--benchmark", str(made["bench"]), "--out", str(out), *TRAIN])
        assert code == 0, seed
        resumed = torch.load(out / "last.pt", weights_only=True)
        assert resumed["step"] == reference["step"] == 6
        for net, tensors in reference["models"].items():
            for name, value in tensors.items():
                assert torch.equal(value, resumed["models"][net][name]), (seed, net, name)
        assert debris(tmp_path) == []
    assert any(kills), "no run was killed while training: lengthen the command or shorten the delays"


def test_deeply_nested_toml_and_config_json_are_one_line(made: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """tomllib and json recurse per nesting level: 10^5 levels are a one-line error, not a RecursionError."""
    toml = tmp_path / "deep.toml"
    toml.write_text("fusion_loss_weights = " + "[" * 100_000 + "]" * 100_000 + "\n")
    code, err = run(["train", "--benchmark", str(made["bench"]), "--out", str(tmp_path / "run"), "--config",
                     str(toml), *TRAIN], capsys)
    one_line(code, err, "nested too deeply")
    fake = tmp_path / "fake_run"
    fake.mkdir()
    shutil.copy(made["run"] / "best.pt", fake / "best.pt")
    (fake / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    case = next(p for p in sorted(made["release"].iterdir()) if p.is_dir())
    code, err = run(["fuse", "--run", str(fake), "--case", str(case), "--out", str(tmp_path / "fused")], capsys)
    one_line(code, err, "nested too deeply")
    assert not (tmp_path / "run").exists()
