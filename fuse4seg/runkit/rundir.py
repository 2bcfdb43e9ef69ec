"""A run folder's life, for ``train`` (RUN) and ``pretrain`` (PRE): checked, created, locked, trained into, cleaned.

- Everything is checked before anything is written: the folder first, then the runner is built (it opens and
  checks the data), and only then is the parent created and the folder locked (fuse4seg.io.output_lock).
- Under the lock the stale temporaries of killed writers are swept and the folder is checked again.
- A new run trains in place, so --resume can continue it after a kill; it is removed again (or emptied, when
  the folder existed) if it fails before its first checkpoint (last.pt), so a failed start leaves no debris.
- --overwrite of an earlier run trains beside it in a staging folder and swaps it in only after success.
- A folder trained in place carries the output marker of its kind.

What differs between the two commands is how an existing folder is judged (:attr:`RunFolder.check`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fuse4seg.io import (
    make_parent,
    marker_kind,
    output_lock,
    remove_empty,
    staged_dir,
    sweep_stale,
    write_marker,
)

Runner = TypeVar("Runner")
Result = TypeVar("Result")

#: The checkpoints a run folder holds (RUN/best.pt, RUN/last.pt): what --checkpoint may name.
CHECKPOINTS: tuple[str, ...] = ("best", "last")


@dataclass(frozen=True)
class RunFolder:
    """Where a run writes and how an existing folder there is judged."""

    path: Path
    kind: str  # the output marker's kind: "run" (train) or "pretrain"
    resume: bool  # --resume: the folder holds the run to continue
    # ConfigError when the folder may not be used; True: train in place (new, empty or resumed), False: an earlier
    # run that --overwrite replaces (trained beside it, swapped in after success).
    check: Callable[[], bool]
    legacy: Callable[[Path], bool] | None = None  # whether an unmarked folder is a run of this kind (older runs)


def run_in_folder(folder: RunFolder, build: Callable[[], Runner],
                  train: Callable[[Runner, Path], Result]) -> Result:
    """Check ``folder``, ``build()`` the runner, then lock the folder and ``train(runner, directory)`` into it (the
    folder itself, or a staging folder swapped in after success); returns what ``train`` returns."""
    folder.check()
    runner = build()  # opens and checks the data before anything is written
    out = folder.path
    _, created = make_parent(out)
    try:
        with output_lock(out):
            sweep_stale(out)
            if not folder.check():  # checked again under the lock: another process may have written meanwhile
                with staged_dir(out, folder.kind, overwrite=True, legacy=folder.legacy) as tmp:
                    return train(runner, tmp)
            return _train_in_place(folder, runner, train)
    except BaseException:
        if not out.exists():
            remove_empty(created)  # after the lock file is gone
        raise


def _train_in_place(folder: RunFolder, runner: Runner, train: Callable[[Runner, Path], Result]) -> Result:
    """Train into the folder itself (created or emptied unless resumed; marked), leaving no debris when the run
    fails before its first checkpoint; the caller holds the lock."""
    out = folder.path
    fresh = not out.exists()
    if not fresh and not folder.resume:
        empty_dir(out)  # empty, or what a run killed before its first checkpoint left
    out.mkdir(exist_ok=True)
    if marker_kind(out) is None:
        write_marker(out, folder.kind)
    try:
        return train(runner, out)
    except BaseException:
        if not folder.resume and not (out / "last.pt").exists():  # nothing to resume: leave no debris
            if fresh:
                shutil.rmtree(out, ignore_errors=True)
            else:
                empty_dir(out)
        raise


def empty_dir(directory: Path) -> None:
    """Remove everything inside ``directory`` (a run folder holding no checkpoint)."""
    for path in directory.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
