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


def _was_a_rank() -> bool:
    """Whether this command ran as one rank of a torchrun process group (fuse4seg.distributed)."""
    distributed = sys.modules.get("fuse4seg.distributed")
    return distributed is not None and distributed.tore_down_a_group()


def main() -> int:
    """Install the early handlers, then import and run the command line (importing it takes a moment)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _early_signal)
    from fuse4seg import cli

    code = cli.main()
    if cli.stopped_by_signal() or _was_a_rank():
        # A KeyboardInterrupt raised inside an extension's own call into Python (cv2's import makes one) marks the
        # interpreter as interrupted, and it would then end by SIGINT rather than with this status. A torchrun rank
        # whose run has finished (outputs written and closed) can be aborted by gloo's threads while C++ objects
        # are destroyed at exit (seen once in a loaded test run: "terminate called without an active exception").
        # Either way, end here, after the exit handlers (pools, logs) have run.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
