"""The training loop shared by every mode: data order, steps, skipping, logging, checkpoints, resume.

Exact resume: the batches of step s depend only on (seed, s) (fuse4seg.train.batches); a
checkpoint stores the weights, optimiser states, the bi-level inner optimiser state, every RNG
state and the step counters. Resuming from ``RUN/last.pt`` therefore reproduces, on CPU, the
weights of an uninterrupted run bit for bit, in last.pt and in best.pt (best.pt is chosen only at
the --eval-every schedule, never at the step where a call happened to stop). A resume checks that
the checkpoint belongs to the run (same options) and that the benchmark has the same content
(sha256 of brats_fuse.h5, recorded in every checkpoint and in config.json "derived").
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fuse4seg.errors import ConfigError, DataError, Fuse4SegError
from fuse4seg.io import atomic_write_text
from fuse4seg.train import modes
from fuse4seg.train.batches import split_by_case, step_loader
from fuse4seg.train.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from fuse4seg.train.config import (
    FIELD_NAMES,
    RESUMABLE_OVERRIDES,
    TrainConfig,
    build_config,
    check_relevant,
    config_from_dict,
    load_toml,
    read_config_json,
    resolve_steps,
    validate,
    write_config_json,
)
from fuse4seg.train.data import BenchmarkInfo, benchmark_identity, benchmark_info, open_split
from fuse4seg.train.device import resolve_device
from fuse4seg.train.networks import Pipeline, build_pipeline
from fuse4seg.train.scoring import validation_scores
from fuse4seg.train.tblog import TensorBoardLog


def resolve_config(overrides: dict[str, Any], toml: str | Path | None = None) -> TrainConfig:
    """The run's configuration; with ``resume`` it is RUN/config.json plus the few options allowed to change."""
    if not overrides.get("resume"):
        return build_config(overrides, toml, strict=True)
    out = overrides.get("out")
    if not out:
        raise ConfigError("--out: the run directory to resume is required")
    stored = read_config_json(Path(out) / "config.json", "--out")
    given = dict(load_toml(toml)) if toml is not None else {}
    given.update({k: v for k, v in overrides.items() if v is not None})
    values = stored.to_dict()
    probe = config_from_dict({k: v for k, v in given.items() if k in FIELD_NAMES}, " (given with --resume)")
    for name in given:
        new = getattr(probe, name)
        old = getattr(stored, name)
        if name in RESUMABLE_OVERRIDES:
            values[name] = list(new) if isinstance(new, tuple) else new
        elif new != old:
            raise ConfigError(
                f"--{name.replace('_', '-')}: {new!r} differs from the run being resumed ({old!r}); "
                "only --steps/--epochs and logging options may change on --resume"
            )
    if "steps" in given and "epochs" not in given:
        values["epochs"] = None
    if "epochs" in given and "steps" not in given:
        values["steps"] = None
    config = config_from_dict(values, f" (in {out}/config.json)")
    config.resume = True
    validate(config)
    check_relevant(config, set(given))
    return config


def prepare_run_dir(config: TrainConfig, create: bool = True) -> Path:
    """Check RUN and, with ``create``, (re)create it; an existing non-run directory is never deleted."""
    run = Path(config.out)
    if config.resume:
        if not (run / "last.pt").is_file():
            raise ConfigError(f"--resume: {run / 'last.pt'} not found; nothing to resume")
        return run
    if run.exists():
        if not run.is_dir():
            raise ConfigError(f"--out: {run} exists and is not a directory")
        if any(run.iterdir()):
            if not config.overwrite:
                raise ConfigError(f"--out: {run} already exists (pass --resume to continue it or --overwrite)")
            if not (run / "config.json").is_file():
                raise ConfigError(f"--out: {run} is not a fuse4seg run (no config.json); refusing to overwrite it")
            if create:
                shutil.rmtree(run)
    if not create:
        return run
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create {run}: {exc.strerror}") from None
    return run


class Trainer:
    """Holds the networks, optimisers, data pools and counters of one run; ``run()`` trains it."""

    def __init__(self, config: TrainConfig) -> None:
        """Open the benchmark, build networks and optimisers, and restore RUN/last.pt on --resume."""
        self.config = config
        self.device = resolve_device(config.device)
        if config.threads is not None:  # CPU threads; changing them may change the last bits of results
            torch.set_num_threads(config.threads)
        self.info: BenchmarkInfo = benchmark_info(config.benchmark)
        resumed = load_checkpoint(Path(config.out) / "last.pt", map_location=self.device) if config.resume else None
        self.identity = benchmark_identity(self.info)
        if resumed is not None:
            self._check_same_run(resumed, Path(config.out) / "last.pt")
        self.train_set = open_split(config.benchmark, "train", config.cache)
        self.val_set = open_split(config.benchmark, "val", config.cache) if self.info.counts["val"] else None
        if config.mode == "bilevel":
            self.fit_pool, self.hold_pool = split_by_case(self.info.train_case_ids, config.val_fraction, config.seed)
        else:
            self.fit_pool, self.hold_pool = list(range(self.info.counts["train"])), []
        self.total = resolve_steps(config, len(self.fit_pool))
        self.fusion_steps = 0
        if config.mode == "two-stage":
            if self.total < 2:
                raise ConfigError("--steps: two-stage training needs at least 2 steps (one per stage)")
            self.fusion_steps = config.fusion_steps if config.fusion_steps is not None else self.total // 2
            if self.fusion_steps >= self.total:
                raise ConfigError(f"--fusion-steps: must be < the total steps ({self.total})")
        self.pipeline: Pipeline = build_pipeline(config).to(self.device)
        self.opts = modes.make_optimisers(config, self.pipeline)
        self.step, self.skipped, self.bad_in_a_row = 0, 0, 0
        self.best_score, self.best_step = -math.inf, -1
        self.run_dir = Path(config.out)
        if resumed is not None:
            self._restore(resumed, self.run_dir / "last.pt")
            if self.step > self.total:
                raise ConfigError(f"--steps: the run has already completed {self.step} steps (asked for {self.total})")

    # ---- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimisers, inner state, RNG, counters."""
        return {
            "config": self.config.to_dict(),
            "step": self.step,
            "total_steps": self.total,
            "models": self.pipeline.state_dicts(),
            "optimizers": {
                "upper": None if self.opts.upper is None else self.opts.upper.state_dict(),
                "lower": None if self.opts.lower is None else self.opts.lower.state_dict(),
            },
            "inner_state": self.opts.inner_state,
            "rng": capture_rng_state(),
            "counters": {"skipped": self.skipped, "bad_in_a_row": self.bad_in_a_row},
            "best": {"score": self.best_score, "step": self.best_step},
            "benchmark": self.identity,
        }

    def _check_same_run(self, state: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint of another run (other options) or a benchmark with other content."""
        try:
            written = config_from_dict(state["config"], f" (in {path})")
        except ConfigError as exc:
            raise DataError(f"{path}: its stored options are not valid here: {exc}") from None
        for name in FIELD_NAMES:
            if name not in RESUMABLE_OVERRIDES and getattr(written, name) != getattr(self.config, name):
                raise DataError(
                    f"{path}: written by a run with --{name.replace('_', '-')} {getattr(written, name)!r}, but "
                    f"{Path(self.config.out) / 'config.json'} has {getattr(self.config, name)!r}; not this run's checkpoint"
                )
        old, new = state.get("benchmark"), self.identity
        if old is None:  # written before identities were recorded: only the same path is accepted
            if Path(written.benchmark).resolve() != Path(self.config.benchmark).resolve():
                raise ConfigError(f"--benchmark: {self.config.benchmark} differs from {written.benchmark}, and {path} "
                                  "records no benchmark checksum to prove it is the same data")
        elif old["sha256"] != new["sha256"]:
            raise ConfigError(
                f"--benchmark: {self.config.benchmark} is not the benchmark this run was trained on "
                f"(sha256 {new['sha256'][:12]}... != {old['sha256'][:12]}..., slices {new['counts']} vs "
                f"{old['counts']})"
            )

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        """Load a checkpoint written by :meth:`state` (layout checked by load_checkpoint) into this trainer."""
        try:
            self.pipeline.load_state_dicts(state["models"])
            for key in ("upper", "lower"):
                opt, saved = getattr(self.opts, key), state["optimizers"][key]
                if (opt is None) != (saved is None):
                    raise ValueError(f"optimiser {key!r} is {'absent' if saved is None else 'unexpected'}")
                if opt is not None:
                    opt.load_state_dict(saved)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise DataError(f"{path}: weights or optimiser state do not fit this run ({reason})") from None
        self.opts.inner_state = state.get("inner_state")
        self.step = int(state["step"])
        self.skipped = int(state["counters"]["skipped"])
        self.bad_in_a_row = int(state["counters"]["bad_in_a_row"])
        self.best_score, self.best_step = float(state["best"]["score"]), int(state["best"]["step"])
        restore_rng_state(state["rng"])

    def save(self, name: str) -> Path:
        """Write RUN/<name>.pt atomically."""
        return save_checkpoint(self.run_dir / f"{name}.pt", self.state())

    # ---- steps -------------------------------------------------------------------------------
    def one_step(self, fit: dict, hold: dict | None) -> modes.StepResult:
        """Dispatch the step of the configured mode."""
        mode = self.config.mode
        if mode == "bilevel":
            return modes.bilevel_step(self.pipeline, self.opts, fit, hold, self.device)
        if mode == "joint":
            return modes.joint_step(self.pipeline, self.opts, fit, self.device)
        if mode == "two-stage":
            return modes.two_stage_step(self.pipeline, self.opts, fit, self.device, self.step < self.fusion_steps)
        return modes.segmentation_step(self.pipeline, self.opts, fit, self.device)

    def _skip(self, reason: str) -> None:
        """Count a skipped step; stop the run after ``max_bad_steps`` in a row."""
        self.skipped += 1
        self.bad_in_a_row += 1
        warnings.warn(f"step {self.step}: {reason}; step skipped ({self.bad_in_a_row} in a row, "
                      f"{self.skipped} in total)", RuntimeWarning, stacklevel=2)
        if self.bad_in_a_row >= self.config.max_bad_steps:
            self.save("last")
            raise Fuse4SegError(
                f"training stopped at step {self.step}: {self.bad_in_a_row} non-finite steps in a row "
                f"(last: {reason}); lower --lr-upper/--lr-lower or check the data"
            )

    def evaluate(self, log: TensorBoardLog, select: bool = True) -> dict[str, float]:
        """Dice on the benchmark's val split; logs scalars and panels; with ``select`` updates best.pt.

        best.pt is chosen only at scheduled evaluations (every --eval-every steps; with --eval-every 0
        it is the final weights), so it does not depend on where a run was interrupted and resumed.
        """
        if self.val_set is None:
            return {}
        scores, first = validation_scores(self.pipeline, self.val_set, self.device, limit=self.config.eval_slices)
        log.scalars(self.step, {f"val/{k}": v for k, v in scores.items()})
        if first is not None:
            sources = first.source[:, self.pipeline.fusion_channels]
            log.panels(self.step, "val/panels", sources, first.fused, first.label, first.pred)
        if select and scores and (self.config.eval_every == 0 or scores["dice_mean"] > self.best_score):
            self.best_score, self.best_step = scores["dice_mean"], self.step
            self.save("best")
        return scores

    def run(self) -> dict[str, Any]:
        """Train from the current step to the total; returns a summary dict."""
        c = self.config
        write_config_json(c, self.run_dir / "config.json", self.derived())
        log = TensorBoardLog(self.run_dir, self.step)
        fit_loader = step_loader(self.train_set, self.fit_pool, c.batch_size, c.seed, self.step, self.total, "fit",
                                 c.num_workers)
        hold_iter = None
        if self.hold_pool:
            hold_iter = iter(step_loader(self.train_set, self.hold_pool, c.batch_size, c.seed, self.step, self.total,
                                         "holdout", c.num_workers))
        # disable=None: no bar when stderr is not a terminal (CI logs), as in build-benchmark.
        bar = tqdm(total=self.total, initial=self.step, disable=None if c.progress else True, desc=f"train {c.mode}",
                   unit="step", dynamic_ncols=True)
        started, scores, data_time, step_time, first_step = time.perf_counter(), {}, 0.0, 0.0, self.step
        in_step = False
        try:
            t_data = time.perf_counter()
            for fit in fit_loader:
                hold = next(hold_iter) if hold_iter is not None else None
                t0 = time.perf_counter()
                data_time += t0 - t_data
                self.pipeline.train(True)
                in_step = True
                try:
                    result = self.one_step(fit, hold)
                    self.bad_in_a_row = 0
                except modes.NonFiniteStep as exc:
                    result = None
                    self._skip(str(exc))
                in_step = False
                dt = time.perf_counter() - t0
                step_time += dt
                self.step += 1
                if result is not None and (self.step % c.log_every == 0 or self.step == self.total):
                    log.scalars(self.step, {**result.scalars, "time/step_s": dt, "train/skipped": self.skipped})
                    bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in result.scalars.items()
                                     if k.startswith("loss/")}, refresh=False)
                scheduled = bool(c.eval_every) and self.step % c.eval_every == 0
                if scheduled or self.step == self.total:  # the end of a call always reports its val Dice
                    scores = self.evaluate(log, select=scheduled or c.eval_every == 0)
                if self.step % c.checkpoint_every == 0 or self.step == self.total:
                    self.save("last")
                bar.update(1)
                t_data = time.perf_counter()
        except KeyboardInterrupt:
            if not in_step:  # mid-step the weights may be half updated: keep the last periodic checkpoint
                self.save("last")
            raise
        finally:
            bar.close()
            log.close()
        if self.best_step < 0:  # no val split: the final weights are the best we know
            self.save("best")
        return {
            "run": str(self.run_dir), "mode": c.mode, "steps": self.step, "skipped": self.skipped,
            "val": scores, "best_step": self.best_step,
            "best_dice_mean": self.best_score if math.isfinite(self.best_score) else None,
            "seconds": round(time.perf_counter() - started, 3), "step_seconds": round(step_time, 3),
            "data_seconds": round(data_time, 3), "steps_this_call": self.step - first_step,
            "tensorboard": str(self.run_dir / "tb"),
        }

    def derived(self) -> dict[str, Any]:
        """Facts resolved from the data, recorded next to the options in config.json."""
        cases = sorted({self.info.train_case_ids[i] for i in self.hold_pool})
        return {
            "total_steps": self.total, "fusion_steps": self.fusion_steps, "fit_slices": len(self.fit_pool),
            "holdout_slices": len(self.hold_pool), "holdout_cases": cases, "benchmark_counts": self.info.counts,
            "slice_height": self.info.height, "slice_width": self.info.width,
            "benchmark_fusion_method": self.info.fusion_method, "benchmark_slice_size": self.info.slice_size,
            "seg_inputs": list(self.config.seg_inputs()), "benchmark_sha256": self.identity["sha256"],
        }


def train(config: TrainConfig) -> dict[str, Any]:
    """Train one run as configured (creating or resuming RUN); returns a summary dict."""
    validate(config)
    prepare_run_dir(config, create=False)
    trainer = Trainer(config)  # opens and checks the benchmark before anything is written
    prepare_run_dir(config)
    summary = trainer.run()
    atomic_write_text(Path(config.out) / "train_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def train_from_options(values: dict[str, Any], config_file: str | Path | None = None) -> dict[str, Any]:
    """Resolve command-line style options (None = not given; see config.cli_overrides) and train."""
    from fuse4seg.train.config import cli_overrides

    return train(resolve_config(cli_overrides(values), config_file))


def format_train_summary(summary: dict[str, Any]) -> str:
    """Lines for the terminal: steps, skipped, val Dice, where the checkpoints and logs are."""
    run = summary["run"]
    val = summary.get("val") or {}
    dice = ", ".join(f"{k[5:]} {v:.3f}" for k, v in val.items() if k.startswith("dice_")) or "no val split"
    return "\n".join([
        (f"trained {summary['mode']}: {summary['steps']} steps ({summary['steps_this_call']} this call, "
        f"{summary['skipped']} skipped) in {summary['seconds']:.1f} s"),
        f"val Dice (per slice): {dice}; best step {summary['best_step']}",
        f"checkpoints: {run}/best.pt, {run}/last.pt; options: {run}/config.json",
        f"TensorBoard: tensorboard --logdir {summary['tensorboard']}",
    ])
