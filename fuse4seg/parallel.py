"""Process-parallel work with results in input order and a progress bar (build-benchmark, score)."""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fuse4seg.errors import Fuse4SegError

#: Most pool workers (--workers of phantom, build-benchmark, robustness, score, fusion-metrics): each is a process
#: holding its own interpreter, imports and one case's arrays (100s of MB); 256 is more cores than the machines
#: this runs on have, so a larger value (a mistyped extra digit) only exhausts memory and process slots.
MAX_WORKERS: int = 256
#: Seconds between a pool worker's checks that the process that started the pool is alive.
WATCH_SECONDS = 0.5
#: Environment variable naming the command's pid while it starts the forkserver (read by fuse4seg.pool_guard).
PARENT_VARIABLE = "FUSE4SEG_POOL_PARENT"
#: prctl(2) option: the signal the kernel sends this process when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere
    nothing), and exit at once if the parent is no longer ``parent`` (it died before the request was made)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # no prctl here
        return
    if os.getppid() != parent:
        os._exit(1)


def _loader_worker_dies_with(parent: int, worker_id: int) -> None:
    """A DataLoader ``worker_init_fn`` (see :func:`loader_worker_init`): :func:`exit_with_parent` of ``parent``."""
    exit_with_parent(parent)


def loader_worker_init() -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` making each worker die with this process (the kernel SIGKILLs it when this
    process dies, ``kill -9`` included: :func:`exit_with_parent`), so a killed ``train --num-workers N`` leaves no
    worker behind. It draws no random number and sets no seed: what the workers compute is unchanged."""
    return functools.partial(_loader_worker_dies_with, os.getpid())


def die_with_parent(parent: int) -> None:
    """Pool worker initialiser: exit as soon as process ``parent`` (which started the pool) is gone, or this
    worker is re-parented, so a ``kill -9`` of the command leaves no orphaned workers (the kernel kills the
    worker when the forkserver, its parent, dies: :func:`exit_with_parent`; a thread polls ``parent`` too)."""
    ppid = os.getppid()
    exit_with_parent(ppid)

    def watch() -> None:
        """Poll the parent; os._exit, because the interpreter's shutdown would wait for the pool's queues."""
        while True:
            time.sleep(WATCH_SECONDS)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # the pid now belongs to another user's process: ours is gone
                os._exit(1)
            if os.getppid() != ppid:
                os._exit(1)

    threading.Thread(target=watch, name="fuse4seg-parent-watch", daemon=True).start()


def start_forkserver(context: Any, preload: Sequence[str]) -> None:
    """Start ``context``'s forkserver (and multiprocessing's resource tracker) if not running, preloading
    :mod:`fuse4seg.pool_guard` and ``preload``: with stdin, stdout and stderr on /dev/null, so that no helper
    holds the caller's pipes (a caller reading the command's output sees its end when the command ends, even
    after ``kill -9``), and dying with this process (``pool_guard``)."""
    from multiprocessing import forkserver

    context.set_forkserver_preload(["fuse4seg.pool_guard", *preload])
    saved: dict[int, int | None] = {}
    null = os.open(os.devnull, os.O_RDWR)
    os.environ[PARENT_VARIABLE] = str(os.getpid())
    try:
        for fd in (0, 1, 2):
            try:
                saved[fd] = os.dup(fd)
            except OSError:  # not open in this process
                saved[fd] = None
            os.dup2(null, fd)
        forkserver.ensure_running()
    finally:
        for fd, copy in saved.items():
            if copy is None:
                os.close(fd)
            else:
                os.dup2(copy, fd)
                os.close(copy)
        os.close(null)
        os.environ.pop(PARENT_VARIABLE, None)


def _kill_workers(pool: ProcessPoolExecutor, seconds: float = 10.0) -> None:
    """SIGKILL the worker processes of ``pool`` and wait (up to ``seconds`` each) until they are gone."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.kill()
    for process in processes:
        process.join(seconds)


def ordered_map(fn: Callable[..., Any], items: Sequence[Any], workers: int, *, preload: Sequence[str] = (),
                desc: str = "", unit: str = "case", progress: bool = True, **kwargs: Any) -> Iterator[Any]:
    """Yield ``fn(item, **kwargs)`` for each item, in input order, computed by ``workers`` processes
    (in this process when ``workers`` is 1); ``preload``: modules the worker server imports once."""
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI), so errors stay one clean line.
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=None if progress else True, leave=False)
    try:
        if workers == 1 or len(items) <= 1:
            for item in items:
                yield fn(item, **kwargs)
                bar.update()
            return
        # forkserver, not fork: the parent may hold OpenCV/OpenMP/torch thread pools that a forked
        # child would inherit in an undefined state. Preloaded modules make each worker start in milliseconds.
        context = multiprocessing.get_context("forkserver")
        start_forkserver(context, preload)
        with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=context,
                                 initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(fn, item, **kwargs): i for i, item in enumerate(items)}
            done: dict[int, Any] = {}
            next_index = 0
            try:
                for future in as_completed(futures):
                    done[futures[future]] = future.result()
                    bar.update()
                    while next_index in done:  # hand results on in input order: deterministic outputs
                        yield done.pop(next_index)
                        next_index += 1
            except BrokenProcessPool:
                raise Fuse4SegError(
                    "a worker process died (out of memory, or the calling script re-runs the work when imported: "
                    "guard it with `if __name__ == \"__main__\":`); retry with fewer workers", option="workers") from None
            except BaseException:
                # Interrupted (a signal, or the consumer stopped): the running items' results are not wanted. Their
                # workers are killed rather than waited for, since one item can outlast the unwind a signal allows
                # (fuse4seg.cli.UNWIND_SECONDS), and only then does the caller remove its temporary outputs.
                _kill_workers(pool)
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        bar.close()
