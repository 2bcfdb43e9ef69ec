"""What every evaluation of a run shares: the request, the checks of another benchmark, the evaluated split, the
untrained baseline, the facts every metrics.json starts with and the RUN/eval output directory."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fuse4seg.data.package.schema import H5_NAME
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import atomic_dir
from fuse4seg.runkit.benchmark import open_split, read_benchmark_facts
from fuse4seg.train.config import TrainConfig
from fuse4seg.train.modes import MODES
from fuse4seg.train.networks import Pipeline, build_pipeline
from fuse4seg.train.run import run_derived


@dataclass
class EvalRequest:
    """One evaluation of RUN: its config, pipeline (eval mode) and checkpoint ``state``, the benchmark ``bench``
    and ``split`` scored, the first ``limit`` items (slices, or cases of a 3-D run; None: all), whether the
    untrained networks are scored too, and how many gallery rows to draw."""

    run: str | Path
    config: TrainConfig
    pipeline: Pipeline
    state: dict
    bench: Path
    split: str
    checkpoint: str
    limit: int | None
    compare_untrained: bool
    gallery: int

    @property
    def device(self) -> torch.device:
        """The device the pipeline's networks are on."""
        return next(self.pipeline.seg.parameters()).device

    def head(self) -> dict[str, Any]:
        """The facts every metrics.json starts with: run, checkpoint, step, mode, split, benchmark, inputs."""
        c = self.config
        return {"run": str(self.run), "checkpoint": self.checkpoint, "step": int(self.state["step"]), "mode": c.mode,
                "split": self.split, "benchmark": str(self.bench), "fusion_inputs": list(c.fusion_inputs),
                "seg_inputs": list(c.seg_inputs())}

    def hypergrad(self) -> str | None:
        """The run's hypergradient method, or None for a mode without hypergradients."""
        return self.config.method if MODES[self.config.mode].hypergradient else None

    def untrained(self) -> Pipeline:
        """The run's networks at their initial weights (see :func:`untrained_like`)."""
        return untrained_like(self.config, self.pipeline, self.device)

    def output_dir(self) -> AbstractContextManager[Path]:
        """RUN/eval, written atomically (a temporary directory renamed at the end), replacing an earlier one."""
        return atomic_dir(Path(self.run) / "eval", "eval", overwrite=True, legacy=is_eval_output, option=None)


def check_benchmark_matches(run: str | Path, config: TrainConfig, bench: Path) -> None:
    """ConfigError (one line) unless the benchmark ``bench`` given to evaluate RUN has the training slices'
    size (and slice_size rule, when both record it) and stores a fusion of the same inputs as the run's
    training benchmark (else the stored-fusion baseline, and a direct-mode segmenter's input, differ)."""
    derived = run_derived(run)
    other = read_benchmark_facts(bench / H5_NAME)
    trained = (int(derived["slice_height"]), int(derived["slice_width"]))
    if (other["height"], other["width"]) != trained:
        raise ConfigError(f"{bench} has {other['height']} x {other['width']} slices but the run was "
                          f"trained on {trained[0]} x {trained[1]} slices", option="benchmark")
    own = derived.get("benchmark_slice_size")
    if own is not None and own != other["slice_size"]:
        raise ConfigError(f"{bench} was built with slice_size {other['slice_size']} but the run's "
                          f"benchmark with {own} (a different crop/resize rule)", option="benchmark")
    try:
        reference = tuple(read_benchmark_facts(Path(config.benchmark) / H5_NAME)["fusion_inputs"])
    except DataError:  # the training benchmark moved away: the run's own fusion inputs are the reference
        reference = tuple(config.fusion_inputs)
    if tuple(other["fusion_inputs"]) != reference:
        raise ConfigError(f"{bench} stores a fusion of {','.join(other['fusion_inputs'])} but the run's "
                          f"benchmark fused {','.join(reference)}; its stored fusion is not comparable", option="benchmark")


def mean_fusion(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric mean over slices (plus "count")."""
    if not rows:
        return {}
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["count"] = len(rows)
    return out


def is_eval_output(directory: Path) -> bool:
    """Whether ``directory`` (inside a run) is an evaluation written before output markers (has metrics.json)."""
    return (directory / "metrics.json").is_file()


def open_evaluated_split(run: str | Path, config: TrainConfig, bench: Path, split: str) -> Dataset:
    """The slices of ``split`` of ``bench`` (cached), checked against the run's benchmark when it is another one;
    DataError for an empty split."""
    dataset = open_split(bench, split, cache=True)
    if len(dataset) == 0:
        raise DataError(f"{bench}: split {split!r} has no slices")
    if bench.resolve() != Path(config.benchmark).resolve():
        check_benchmark_matches(run, config, bench)
    return dataset


def untrained_like(config: TrainConfig, pipeline: Pipeline, device: torch.device) -> Pipeline:
    """The networks of ``config`` at their initial weights, in eval mode, reading text through ``pipeline``'s own
    (fitted, frozen) text encoder."""
    untrained = build_pipeline(config)
    untrained.text_encoder, untrained.alignment = pipeline.text_encoder, pipeline.alignment
    return untrained.to(device).train(False)
