"""The Trainer's checkpoints: what RUN/last.pt and RUN/best.pt hold, the check that one belongs to the run, restoring.

A checkpoint (layout: fuse4seg.runkit.checkpoint.TrainingState) stores the weights, optimiser states, the
bi-level inner optimiser state, every RNG state and the step counters, so a resumed run continues exactly.
It belongs to the run when it was written with the same options (but the resumable ones) on a benchmark of
the same content (sha256 of brats_fuse.h5; fuse4seg.runkit.resume).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from fuse4seg.distributed import World
from fuse4seg.errors import ConfigError, DataError, flag_for
from fuse4seg.runkit.benchmark import BenchmarkInfo, benchmark_identity
from fuse4seg.runkit.checkpoint import (
    Best,
    Counters,
    Identity,
    OptimiserStates,
    TrainingState,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoints,
    to_plain,
)
from fuse4seg.runkit.resume import check_same_benchmark, check_same_options
from fuse4seg.train.config import OPTIONS, RESUMABLE, TrainConfig
from fuse4seg.train.networks import Pipeline
from fuse4seg.train.optimisers import Optimisers
from fuse4seg.train.resolve import config_from_dict


class Checkpointing:
    """The checkpoint half of :class:`fuse4seg.train.loop.Trainer` (mixed into it): state, check, restore, save."""

    config: TrainConfig
    world: World
    device: torch.device
    run_dir: Path
    pipeline: Pipeline
    opts: Optimisers
    identity: dict[str, Any]
    step: int
    total: int
    counters: Counters
    best: Best

    def _identify(self, info: BenchmarkInfo) -> dict[str, Any] | None:
        """Record the identity of the benchmark ``info`` describes; on --resume, RUN/last.pt checked to be this
        run's checkpoint (same options but the resumable ones, same benchmark content), else None."""
        path = self.run_dir / "last.pt"
        resumed = load_checkpoint(path, map_location=self.device) if self.config.resume else None
        self.identity = benchmark_identity(info)
        if resumed is not None:
            self._check_same_run(resumed, path)
        return resumed

    def _resume(self, resumed: dict[str, Any]) -> None:
        """Restore RUN/last.pt read by :meth:`_identify`; ConfigError when it is already past --steps."""
        self._restore(resumed, self.run_dir / "last.pt")
        if self.step > self.total:
            raise ConfigError(f"the run has already completed {self.step} steps (asked for {self.total})",
                              option="steps")

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly (the layout of checkpoint.TrainingState)."""
        return to_plain(TrainingState(
            config=self.config.to_dict(), step=self.step, total_steps=self.total,
            models=self.pipeline.state_dicts(),
            optimizers=OptimiserStates(*(None if opt is None else opt.state_dict()
                                         for opt in (self.opts.upper, self.opts.lower, self.opts.scaler))),
            inner_state=self.opts.inner_state, rng=capture_rng_state(), counters=self.counters, best=self.best,
            benchmark=Identity(**self.identity), seg_weight=self.opts.seg_weight,
        ))

    def _check_same_run(self, state: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint of another run (other options) or a benchmark with other content."""
        try:
            written = config_from_dict(state["config"], f" (in {path})")
        except ConfigError as exc:
            raise DataError(f"{path}: its stored options are not valid here: {exc}") from None

        def other_run(key: str, old: Any, new: Any) -> DataError:
            """The refusal naming the first option the checkpoint was written with otherwise."""
            return DataError(f"{path}: written by a run with {flag_for(key)} {old!r}, but "
                             f"{self.run_dir / 'config.json'} has {new!r}; not this run's checkpoint")

        check_same_options({key: d.get(written) for key, d in OPTIONS.items()},
                           {key: d.get(self.config) for key, d in OPTIONS.items()}, RESUMABLE, other_run)
        old, new = state.get("benchmark"), self.identity
        if old is None:  # written before identities were recorded: only the same path is accepted
            if Path(written.benchmark).resolve() != Path(self.config.benchmark).resolve():
                raise ConfigError(f"{self.config.benchmark} differs from {written.benchmark}, and {path} records no "
                                  "benchmark checksum to prove it is the same data", option="benchmark")
            return
        check_same_benchmark(old, new["sha256"], lambda: ConfigError(
            f"{self.config.benchmark} is not the benchmark this run was trained on "
            f"(sha256 {new['sha256'][:12]}... != {old['sha256'][:12]}..., slices {new['counts']} vs "
            f"{old['counts']})", option="benchmark"))

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        """Load a checkpoint written by :meth:`state` (layout checked by load_checkpoint) into this trainer."""
        try:
            self.pipeline.load_state_dicts(state["models"])
            for f in dataclasses.fields(OptimiserStates):
                opt, saved = getattr(self.opts, f.name), state["optimizers"].get(f.name)
                if (opt is None) != (saved is None):
                    raise ValueError(f"optimiser {f.name!r} is {'absent' if saved is None else 'unexpected'}")
                if opt is not None:
                    opt.load_state_dict(saved)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise DataError(f"{path}: weights or optimiser state do not fit this run ({reason})") from None
        self.opts.inner_state = state.get("inner_state")
        self.opts.seg_weight = state.get("seg_weight")
        self.step = int(state["step"])
        self.counters, self.best = Counters(**state["counters"]), Best(**state["best"])
        restore_rng_state(state["rng"])

    def save(self, *names: str) -> None:
        """Write RUN/<name>.pt for each name, all of this step's state, renamed together (a failure keeps the
        previous pair); rank 0 only."""
        if not self.world.is_main:
            return
        save_checkpoints([self.run_dir / f"{name}.pt" for name in names], self.state())
