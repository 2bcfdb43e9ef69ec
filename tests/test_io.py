"""Atomic outputs (complete under their final name or absent, also when the process is killed), file hashes,
one-line error text."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuse4seg.errors import ConfigError, Fuse4SegError
from fuse4seg.io import (
    MARKER,
    PARTIAL,
    atomic_dir,
    atomic_path,
    atomic_paths,
    atomic_write_text,
    check_separate,
    one_line,
    sha256_file,
    write_marker,
)


def _leftovers(folder: Path) -> list[str]:
    """Names of temporary siblings (``.NAME.*.partial`` / ``.old``, lock files) left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_dir_success_renames_with_umask_permissions_and_a_marker(tmp_path: Path) -> None:
    """The finished directory appears under its name with 0777 minus the umask and its kind's marker, no temp
    sibling and no lock file."""
    with atomic_dir(tmp_path / "out", "test") as tmp:
        (tmp / "a.txt").write_text("x")
    assert (tmp_path / "out" / "a.txt").read_text() == "x"
    assert json.loads((tmp_path / "out" / MARKER).read_text()) == {"kind": "test"}
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask
    assert _leftovers(tmp_path) == []


def test_atomic_dir_failure_leaves_nothing_not_even_created_parents(tmp_path: Path) -> None:
    """An error inside the block removes the temp dir and the parent folders the call created."""
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "deep" / "a" / "b" / "out", "test") as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_an_output_of_the_same_kind_and_only_after_success(tmp_path: Path) -> None:
    """Existing output: refused without overwrite; with it, replaced only when empty or marked with the same
    kind (or recognised by ``legacy``), and only after success."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(Fuse4SegError, match="already exists"), atomic_dir(out, "test"):
        pass
    with pytest.raises(Fuse4SegError, match="is not a fuse4seg test .* refusing to replace it"), \
            atomic_dir(out, "test", overwrite=True):
        pass
    (out / MARKER).write_text('{"kind": "other"}')
    with pytest.raises(Fuse4SegError, match="is not a fuse4seg test"), atomic_dir(out, "test", overwrite=True):
        pass
    assert (out / "mine.txt").read_text() == "user data"
    (out / MARKER).unlink()
    with pytest.raises(RuntimeError), atomic_dir(out, "test", overwrite=True,
                                                 legacy=lambda d: (d / "mine.txt").is_file()) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    with atomic_dir(out, "test", overwrite=True, legacy=lambda d: (d / "mine.txt").is_file()) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "new.txt"]
    with atomic_dir(out, "test", overwrite=True) as tmp:  # now marked: no legacy rule needed
        (tmp / "newer.txt").write_text("newer")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "newer.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty, "test", overwrite=True) as tmp:
        (tmp / "a").write_text("a")
    assert _leftovers(tmp_path) == []


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_dir(out, "test") as tmp:
        with pytest.raises(Fuse4SegError, match="another fuse4seg process is writing"), atomic_dir(out, "test"):
            pass
        (tmp / "a").write_text("a")
    assert (out / "a").read_text() == "a" and _leftovers(tmp_path) == []


def test_stale_temporaries_of_fuse4seg_are_swept_and_nothing_else(tmp_path: Path) -> None:
    """What a killed writer left (marked .partial/.old folders, .partial files named as atomic_path names them)
    is removed by the next write of that output; look-alikes without a marker or of another name stay."""
    stale_dir = tmp_path / ".out.abcd1234.partial"
    stale_dir.mkdir()
    write_marker(stale_dir, PARTIAL)
    stale_old = tmp_path / ".out.zz_99999.old"
    stale_old.mkdir()
    write_marker(stale_old, PARTIAL)
    stale_file = tmp_path / ".out.q1w2e3r4.partial"
    stale_file.write_text("half")
    user_dir = tmp_path / ".out.abcd9999.partial"  # same pattern, no marker: not ours
    user_dir.mkdir()
    other = tmp_path / ".other.abcd1234.partial"
    other.mkdir()
    write_marker(other, PARTIAL)
    with atomic_dir(tmp_path / "out", "test"):
        pass
    assert _leftovers(tmp_path) == sorted([user_dir.name, other.name])


def test_full_disk_is_one_line_and_atomic_paths_keep_the_previous_pair(tmp_path: Path) -> None:
    """ENOSPC inside the block is a one-line Fuse4SegError; a pair written with atomic_paths is renamed only after
    both files are written, so a failure on the second keeps both old files."""
    with pytest.raises(Fuse4SegError, match=r"^cannot write .*out: No space left on device$") as info, \
            atomic_dir(tmp_path / "out", "test"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert "\n" not in str(info.value) and _leftovers(tmp_path) == []
    first, second = tmp_path / "best.pt", tmp_path / "last.pt"
    first.write_text("old best")
    second.write_text("old last")
    with pytest.raises(Fuse4SegError, match="No space left on device"), atomic_paths(first, second) as (a, b):
        a.write_text("new best")
        raise OSError(errno.ENOSPC, "No space left on device", str(b))
    assert (first.read_text(), second.read_text()) == ("old best", "old last")
    with atomic_paths(first, second) as (a, b):
        a.write_text("new best")
        b.write_text("new last")
    assert (first.read_text(), second.read_text()) == ("new best", "new last")
    assert _leftovers(tmp_path) == []


def test_check_separate_refuses_overlapping_outputs(tmp_path: Path) -> None:
    case = tmp_path / "release" / "case"
    case.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "release")
    for out in (case, tmp_path / "release", tmp_path / "link", case / "sub", tmp_path / "release" / "x" / ".."):
        with pytest.raises(ConfigError, match="could destroy it"):
            check_separate(out, {"case": case})
    check_separate(tmp_path / "elsewhere", {"case": case, "run": None})


def test_atomic_path_and_text(tmp_path: Path) -> None:
    """A file is written whole or not at all; a failure keeps the previous content."""
    target = tmp_path / "f.txt"
    atomic_write_text(target, "one")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("two")
        raise RuntimeError("boom")
    assert target.read_text() == "one"
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_during_a_command_leaves_no_partial_output(tmp_path: Path) -> None:
    """A command killed with SIGTERM exits 143 and leaves neither its output nor a temp sibling."""
    out = tmp_path / "release"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fuse4seg", "phantom", "--out", str(out), "--cases", "200", "--scale", "0.25"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no temporary output appeared"
        time.sleep(0.05)
    time.sleep(0.3)  # let it write a case or two into the temporary directory
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_sha256_file_and_one_line(tmp_path: Path) -> None:
    """sha256_file reads in blocks (3-byte blocks here) and gives the known digest of b"abc" repeated; one_line folds
    whitespace and falls back to the exception's type name."""
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert sha256_file(path, block=2) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert one_line(OSError("unable to open\n  file:  x")) == "unable to open file: x"
    assert one_line(ValueError()) == "ValueError"
