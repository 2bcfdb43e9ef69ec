"""The command line run in-process by the reliability tests, and the one-line error they expect."""

from __future__ import annotations

import pytest

from fuse4seg.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run the command line in this process: (exit status, stderr)."""
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def one_line(code: int, err: str, pattern: str = "", status: int = 1) -> None:
    """Exit status ``status`` and exactly one ``error: ...`` line holding ``pattern``, no traceback."""
    assert code == status, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert pattern in err, err
