"""The ``fuse4seg`` console script and ``python -m fuse4seg``: SIGTERM and SIGINT that arrive while the command line
is still being imported (nothing is written yet) end it with the same one line and exit status as later ones."""

from __future__ import annotations

import atexit
import os
import signal
import sys


def _early_signal(signum: int, frame: object) -> None:
    """Before :func:`fuse4seg.cli.main` installs its handlers: one line, exit 128 + signum, nothing to unwind."""
    os.write(2, b"error: interrupted\n" if signum == signal.SIGINT else b"error: terminated\n")
    os._exit(128 + signum)


def main() -> int:
    """Install the early handlers, then import and run the command line (importing it takes a moment)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _early_signal)
    from fuse4seg import cli

    code = cli.main()
    if cli.stopped_by_signal():
        # A KeyboardInterrupt raised inside an extension's own call into Python (cv2's import makes one) marks the
        # interpreter as interrupted, and it would then end by SIGINT rather than with this status: end here, after
        # the exit handlers (pools, logs) have run.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
