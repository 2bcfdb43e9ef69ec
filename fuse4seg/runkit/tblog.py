"""TensorBoard logging for training: scalars (losses, hypergradient norm, Dice, step time) and panels."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse4seg.io import full_disk_is_one_line, out_of_space
from fuse4seg.runkit.visual import panel_grid, panel_row

#: threading.excepthook before :func:`_quiet_writer_threads` wrapped it (None until then).
_PREVIOUS_HOOK: list[Any] = []


def _quiet_writer_threads() -> None:
    """Keep TensorBoard's writer thread from printing a traceback when the disk is full: the thread keeps the
    exception, and the next write or close in the main thread raises it (TensorBoardLog makes it one line)."""
    if _PREVIOUS_HOOK:
        return
    _PREVIOUS_HOOK.append(threading.excepthook)

    def hook(args: Any) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and out_of_space(args.exc_value):
            return
        _PREVIOUS_HOOK[0](args)

    threading.excepthook = hook


class TensorBoardLog:
    """Writes ``RUN/tb``; on resume, events after ``start_step`` from a killed run are purged. A full disk, met in
    the call or earlier by TensorBoard's writer thread, is a one-line error naming ``RUN/tb``."""

    def __init__(self, run_dir: str | Path, start_step: int = 0) -> None:
        """Open (or continue) the event files under ``run_dir/tb``."""
        from torch.utils.tensorboard import SummaryWriter

        _quiet_writer_threads()
        self.directory = Path(run_dir) / "tb"
        with full_disk_is_one_line(self.directory):
            self.writer = SummaryWriter(log_dir=str(self.directory),
                                        purge_step=start_step if start_step > 0 else None)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log each finite scalar under its tag (e.g. 'loss/upper', 'hypergrad/norm', 'time/step_s')."""
        with full_disk_is_one_line(self.directory):
            for tag, value in values.items():
                if value is not None and np.isfinite(value):
                    self.writer.add_scalar(tag, float(value), step)

    def panels(self, step: int, tag: str, sources: torch.Tensor, fused: torch.Tensor | None,
               truth: torch.Tensor, pred: torch.Tensor, max_rows: int = 4) -> None:
        """Log an image grid: rows of sources (N,C,H,W) | fused (N,1,H,W) | truth | prediction (N,H,W)."""
        n = min(max_rows, sources.shape[0])
        rows = [
            panel_row(
                sources[i].detach().cpu().float().numpy(),
                None if fused is None else fused[i, 0].detach().cpu().float().numpy(),
                truth[i].detach().cpu().numpy(),
                pred[i].detach().cpu().numpy(),
            )
            for i in range(n)
        ]
        with full_disk_is_one_line(self.directory):
            self.writer.add_image(tag, panel_grid(rows), step, dataformats="HWC")

    def close(self) -> None:
        """Flush and close the event files; a full disk the writer thread met is raised here too (TensorBoard's
        own close does not report it)."""
        workers = self._workers()  # SummaryWriter.close forgets its writers
        with full_disk_is_one_line(self.directory):
            try:
                self.writer.flush()
            finally:
                self.writer.close()
            failed = next((w.exception for w in workers if isinstance(getattr(w, "exception", None), BaseException)
                           and out_of_space(w.exception)), None)
            if failed is not None:
                raise failed

    def _workers(self) -> list[Any]:
        """TensorBoard's writer threads (found through its private attributes, defensively: none where they
        differ)."""
        writers = getattr(self.writer, "all_writers", None) or {}
        workers = (getattr(getattr(getattr(w, "event_writer", None), "_async_writer", None), "_worker", None)
                   for w in writers.values())
        return [w for w in workers if w is not None]
