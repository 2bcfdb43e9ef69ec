"""TensorBoard logging for training: scalars (losses, hypergradient norm, Dice, step time) and panels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fuse4seg.runkit.visual import panel_grid, panel_row


class TensorBoardLog:
    """Writes ``RUN/tb``; on resume, events after ``start_step`` from a killed run are purged."""

    def __init__(self, run_dir: str | Path, start_step: int = 0) -> None:
        """Open (or continue) the event files under ``run_dir/tb``."""
        from torch.utils.tensorboard import SummaryWriter

        self.directory = Path(run_dir) / "tb"
        self.writer = SummaryWriter(log_dir=str(self.directory), purge_step=start_step if start_step > 0 else None)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log each finite scalar under its tag (e.g. 'loss/upper', 'hypergrad/norm', 'time/step_s')."""
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
        self.writer.add_image(tag, panel_grid(rows), step, dataformats="HWC")

    def close(self) -> None:
        """Flush and close the event files."""
        self.writer.flush()
        self.writer.close()
