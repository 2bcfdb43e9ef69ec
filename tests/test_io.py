"""Atomic outputs (complete under their final name or absent, also when the process is killed), file hashes,
one-line error text."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuse4seg.errors import Fuse4SegError
from fuse4seg.io import atomic_dir, atomic_path, atomic_write_text, one_line, sha256_file


def _leftovers(folder: Path) -> list[str]:
    """Names of temporary siblings (``.NAME.*.partial`` / ``.old``) left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_dir_success_renames_with_umask_permissions(tmp_path: Path) -> None:
    """The finished directory appears under its name with 0777 minus the umask, no temp sibling."""
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("x")
    assert (tmp_path / "out" / "a.txt").read_text() == "x"
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask
    assert _leftovers(tmp_path) == []


def test_atomic_dir_failure_leaves_nothing_not_even_created_parents(tmp_path: Path) -> None:
    """An error inside the block removes the temp dir and the parent folders the call created."""
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "deep" / "a" / "b" / "out") as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing_without_overwrite_and_keeps_old_on_failure(tmp_path: Path) -> None:
    """Existing output: refused without overwrite; with overwrite, replaced only after success."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(Fuse4SegError, match="already exists"), atomic_dir(out):
        pass
    with pytest.raises(RuntimeError), atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert _leftovers(tmp_path) == []


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
