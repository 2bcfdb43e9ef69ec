"""Imported first by :func:`fuse4seg.parallel.ordered_map`'s forkserver (a preload module, imported nowhere else):
the forkserver is killed by the kernel the moment the command that started it dies (``kill -9`` included), and
with it, through their own parent-death signal, the pool workers it forked."""

from __future__ import annotations

import os

from fuse4seg.parallel import PARENT_VARIABLE, exit_with_parent

if os.environ.get(PARENT_VARIABLE, "").isdigit():
    exit_with_parent(int(os.environ[PARENT_VARIABLE]))
