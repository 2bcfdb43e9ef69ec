"""The training loop shared by every mode: data order, steps, skipping, logging, checkpoints, resume.

Exact resume: the batches of step s depend only on (seed, s) (fuse4seg.runkit.batches); a
checkpoint stores the weights, optimiser states, the bi-level inner optimiser state, every RNG
state and the step counters. Resuming from ``RUN/last.pt`` therefore reproduces, on CPU, the
weights of an uninterrupted run bit for bit, in last.pt and in best.pt (best.pt is chosen only at
the --eval-every schedule, never at the step where a call happened to stop). A resume checks that
the checkpoint belongs to the run (same options) and that the benchmark has the same content
(sha256 of brats_fuse.h5, recorded in every checkpoint and in config.json "derived").

Under torchrun (fuse4seg.distributed) every rank trains its shard of each batch; rank 0 alone creates,
locks and writes RUN (config.json, checkpoints, TensorBoard, train_summary.json) and validates; the other
ranks only read (last.pt on --resume). All ranks meet once after their set-up, so a failure of any of them
before training stops them all with a one-line error, and again at the end, after rank 0 has written.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fuse4seg.distributed import World, init_from_env
from fuse4seg.errors import ConfigError, Fuse4SegError
from fuse4seg.io import atomic_write_text, one_line
from fuse4seg.runkit.batches import step_loader
from fuse4seg.runkit.benchmark import BenchmarkInfo, benchmark_info
from fuse4seg.runkit.checkpoint import Best, Counters
from fuse4seg.runkit.device import resolve_device
from fuse4seg.runkit.pretrained import load_pretrained_encoder
from fuse4seg.runkit.rundir import RunFolder, run_in_folder
from fuse4seg.runkit.tblog import TensorBoardLog
from fuse4seg.train import modes, steps
from fuse4seg.train.checkpointing import Checkpointing
from fuse4seg.train.command_line import cli_overrides
from fuse4seg.train.config import TrainConfig
from fuse4seg.train.networks import Pipeline, build_pipeline
from fuse4seg.train.optimisers import torch_optimisers
from fuse4seg.train.resolve import resolve_steps, validate
from fuse4seg.train.run import check_run_dir, is_legacy_run, resolve_config, write_config_json
from fuse4seg.train.semi import ema_update_, label_pools
from fuse4seg.train.text import prepare_text_models
from fuse4seg.train.variants import variant_of


class NoLog:
    """The TensorBoard log of a rank that writes nothing (every rank but 0)."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Drop scalars."""

    def panels(self, *args: Any, **kwargs: Any) -> None:
        """Drop image panels."""

    def close(self) -> None:
        """Nothing to close."""


class Trainer(Checkpointing):
    """Holds the networks, optimisers, data pools and counters of one run; ``run()`` trains it."""

    def __init__(self, config: TrainConfig, world: World | None = None) -> None:
        """Open the benchmark, build networks and optimisers, and restore RUN/last.pt on --resume; ``world``: this
        process's place under torchrun (default: a single process)."""
        self.config, self.mode = config, modes.MODES[config.mode]
        self._join(world)
        self.info: BenchmarkInfo = benchmark_info(config.benchmark)
        self.run_dir = Path(config.out)
        resumed = self._identify(self.info)
        # the run variant's items (slices, or cases whose patches are drawn per step): pools and hold-out split too
        self.train_set, self.val_set, self.train_case_ids = variant_of(config).open_data(config, self.info)
        self._draw_pools()
        self._build_networks(resumed)
        self.unlabelled: dict | None = None  # this step's unlabelled batch (--label-fraction < 1)
        self.opts = torch_optimisers(config, self.pipeline)
        self.step, self.counters, self.best = 0, Counters(), Best()
        if resumed is not None:
            self._resume(resumed)

    def _join(self, world: World | None) -> None:
        """Take this process's place under torchrun (``world``; None: a single process), its device and threads."""
        self.world = world or World()
        self.world.check_batch(self.config.batch_size)
        self.device = self.world.device if self.world.active else resolve_device(self.config.device)
        if self.config.threads is not None:  # CPU threads; changing them may change the last bits of results
            torch.set_num_threads(self.config.threads)

    def _draw_pools(self) -> None:
        """Split the train items into the fitting, held-out and unlabelled pools; resolve the steps from them."""
        c = self.config
        self.fit_pool, self.hold_pool, self.unlabelled_pool = label_pools(
            self.train_case_ids, c.label_fraction, c.seed, self.mode.holds_out, c.val_fraction)
        if c.label_fraction < 1 and not self.unlabelled_pool:
            raise ConfigError(f"keeps the labels of every one of the {len(set(self.train_case_ids))} train cases; "
                              "lower it to leave some unlabelled", option="label_fraction")
        self.total = resolve_steps(c, len(self.fit_pool))
        self.fusion_steps = self.mode.fusion_stage(c, self.total) if self.mode.fusion_stage else 0
        if self.mode.hypergradient and self.fusion_steps + c.seg_warmup >= self.total:
            raise ConfigError(f"must leave bi-level steps: below the total steps ({self.total}, from --steps or "
                              f"--epochs) minus --fusion-steps ({self.fusion_steps}), got {c.seg_warmup}",
                              option="seg_warmup")

    def _build_networks(self, resumed: dict[str, Any] | None) -> None:
        """The pipeline on the device; at the start of a run (``resumed`` None) with the pre-trained encoders and
        the prepared text models (a resumed run's come with its weights in last.pt)."""
        c = self.config
        self.pipeline: Pipeline = build_pipeline(c).to(self.device)
        # A resumed run's weights come from last.pt: the pre-trained file is read only at the start.
        self.initialised = load_pretrained_encoder(self.pipeline.seg, c.init) if c.init and not resumed else []
        if self.pipeline.teacher is not None:  # the mean teacher starts as the (initialised) student
            self.pipeline.teacher.load_state_dict(self.pipeline.seg.state_dict())
        self.text_facts: dict[str, Any] = {}
        if resumed is None:  # a resumed run's text models come with its weights (and its facts from config.json)
            base = getattr(self.train_set, "dataset", self.train_set)  # under a TrainingView
            self.text_facts = prepare_text_models(self.pipeline, base, self.val_set, c.seed, c.semantic_steps)
            if self.pipeline.alignment is not None:  # GPU backward is not bitwise deterministic: make ranks agree
                self.world.mean_(list(self.pipeline.alignment.parameters()))
        else:
            self.text_facts = {k: v for k, v in _previous_derived(self.run_dir).items() if k.startswith(TEXT_FACTS)}

    # ---- steps -------------------------------------------------------------------------------
    def one_step(self, fit: dict, hold: dict | None) -> steps.StepResult:
        """The step of the configured mode."""
        return steps.STEPS[self.mode.step](self, fit, hold)

    def _skip(self, reason: str) -> None:
        """Count a skipped step; stop the run after ``max_bad_steps`` in a row."""
        self.counters.skipped += 1
        self.counters.bad_in_a_row += 1
        warnings.warn(f"step {self.step}: {reason}; step skipped ({self.counters.bad_in_a_row} in a row, "
                      f"{self.counters.skipped} in total)", RuntimeWarning, stacklevel=3)
        if self.counters.bad_in_a_row >= self.config.max_bad_steps:
            self.save("last")
            raise Fuse4SegError(
                f"training stopped at step {self.step}: {self.counters.bad_in_a_row} non-finite steps in a row "
                f"(last: {reason}); lower --lr-upper/--lr-lower or check the data"
            )

    def evaluate(self, log: TensorBoardLog, select: bool = True) -> tuple[dict[str, float], bool]:
        """The run variant's scores on the benchmark's val split (Dice, or a classifier's AUROC), and whether they
        are a new best; logs scalars and panels; with ``select`` updates the best score (the caller writes best.pt).

        best.pt is chosen only at scheduled evaluations (every --eval-every steps; with --eval-every 0
        it is the final weights), so it does not depend on where a run was interrupted and resumed. Rank 0
        alone validates and tracks the best (the others report nothing).
        """
        if self.val_set is None or not self.world.is_main:
            return {}, False
        scores, first = self.pipeline.variant.score(self.pipeline, self.val_set, self.device, self.config)
        log.scalars(self.step, {f"val/{k}": v for k, v in scores.items()})
        if first is not None:
            sources = first.source[:, self.pipeline.fusion_channels]
            log.panels(self.step, "val/panels", sources, first.fused, first.label, first.pred)
        value = scores.get(self.pipeline.selection_metric, math.nan)
        better = math.isfinite(value) and value > self.best.score
        if select and scores and (self.config.eval_every == 0 or better):
            self.best = Best(value if math.isfinite(value) else -math.inf, self.step)
            return scores, True
        return scores, False

    # ---- the loop, in named parts --------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[dict, dict | None, dict | None]]:
        """(fitting batch, held-out batch or None, unlabelled batch or None) of each remaining step; the batches of
        step s depend only on (seed, s), so a resumed run sees what an uninterrupted one would."""
        c, shard = self.config, self.world.shard(self.config.batch_size)
        fit = step_loader(self.train_set, self.fit_pool, c.batch_size, c.seed, self.step, self.total, "fit",
                          c.num_workers, shard)
        others = [iter(step_loader(self.train_set, pool, c.batch_size, c.seed, self.step, self.total, stream,
                                   c.num_workers, shard)) if pool else None
                  for pool, stream in ((self.hold_pool, "holdout"), (self.unlabelled_pool, "unlabelled"))]
        return ((batch, *(next(it) if it is not None else None for it in others)) for batch in fit)

    def _progress_bar(self) -> tqdm:
        """The progress bar (disable=None: none when stderr is not a terminal, as in build-benchmark)."""
        shown = self.config.progress and self.world.is_main
        return tqdm(total=self.total, initial=self.step, disable=None if shown else True,
                    desc=f"train {self.config.mode}", unit="step", dynamic_ncols=True)

    def _train_step(self, fit: dict, hold: dict | None) -> tuple[steps.StepResult | None, float]:
        """One step (None when skipped as non-finite) and its seconds; the step counter advances either way."""
        t0 = time.perf_counter()
        self.pipeline.train(True)
        self.in_step = True
        try:
            result = self.one_step(fit, hold)
            self.counters.bad_in_a_row = 0
            if self.pipeline.teacher is not None:
                ema_update_(self.pipeline.teacher, self.pipeline.seg, self.config.ema_decay)
        except steps.NonFiniteStep as exc:
            result = None
            self._skip(str(exc))
        self.in_step = False
        seconds = time.perf_counter() - t0
        self.step += 1
        return result, seconds

    def _log(self, log: TensorBoardLog, bar: tqdm, result: steps.StepResult | None, seconds: float) -> None:
        """TensorBoard scalars every --log-every steps (and at the last), and the bar's loss read-out."""
        if result is not None and (self.step % self.config.log_every == 0 or self.step == self.total):
            log.scalars(self.step, {**result.scalars, "time/step_s": seconds, "train/skipped": self.counters.skipped})
            bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in result.scalars.items()
                             if k.startswith("loss/")}, refresh=False)

    def _evaluate_and_save(self, log: TensorBoardLog) -> dict[str, float] | None:
        """Val Dice at the --eval-every schedule and at the end of a call (then also best.pt), last.pt every
        --checkpoint-every steps and at the end; returns the val scores when evaluated."""
        c, scores, names = self.config, None, []
        scheduled = bool(c.eval_every) and self.step % c.eval_every == 0
        if scheduled or self.step == self.total:  # the end of a call always reports its val Dice
            scores, improved = self.evaluate(log, select=scheduled or c.eval_every == 0)
            names += ["best"] if improved else []
        if self.step % c.checkpoint_every == 0 or self.step == self.total:
            names.append("last")
        if names:
            self.save(*names)
        return scores

    def run(self, run_dir: Path | None = None) -> dict[str, Any]:
        """Train from the current step to the total, writing into ``run_dir`` (default RUN; a staging folder
        when --overwrite replaces an earlier run); returns a summary dict."""
        if run_dir is not None:
            self.run_dir = Path(run_dir)
        if self.world.is_main:
            write_config_json(self.config, self.run_dir / "config.json", self.derived())
        log = TensorBoardLog(self.run_dir, self.step) if self.world.is_main else NoLog()
        batches, bar = self._batches(), self._progress_bar()
        first_step, started, data_time, step_time, scores = self.step, time.perf_counter(), 0.0, 0.0, {}
        self.in_step = False
        try:
            t_data = time.perf_counter()
            for fit, hold, self.unlabelled in batches:
                data_time += time.perf_counter() - t_data
                result, seconds = self._train_step(fit, hold)
                step_time += seconds
                self._log(log, bar, result, seconds)
                scores = self._evaluate_and_save(log) or scores
                bar.update(1)
                t_data = time.perf_counter()
        except KeyboardInterrupt:
            if not self.in_step:  # mid-step the weights may be half updated: keep the last periodic checkpoint
                self.save("last")
            raise
        finally:
            bar.close()
            log.close()
        if self.best.step < 0:  # no val split: the final weights are the best we know
            self.save("best")
        return {
            "run": str(self.config.out), "mode": self.config.mode, "dims": self.config.dims, "steps": self.step,
            "skipped": self.counters.skipped,
            "val": scores, "best_step": self.best.step,
            "best_metric": self.pipeline.selection_metric,
            "best_score": self.best.score if math.isfinite(self.best.score) else None,
            "best_dice_mean": self.best.score if math.isfinite(self.best.score) and not self.pipeline.classifies
            else None,
            "seconds": round(time.perf_counter() - started, 3), "step_seconds": round(step_time, 3),
            "data_seconds": round(data_time, 3), "steps_this_call": self.step - first_step,
            "tensorboard": str(Path(self.config.out) / "tb"),
        }

    def derived(self) -> dict[str, Any]:
        """Facts resolved from the data, recorded next to the options in config.json."""
        cases = sorted({self.train_case_ids[i] for i in self.hold_pool})
        return {
            "total_steps": self.total, "fusion_steps": self.fusion_steps, "fit_slices": len(self.fit_pool),
            "holdout_slices": len(self.hold_pool), "holdout_cases": cases, "benchmark_counts": self.info.counts,
            "labelled_cases": len({self.train_case_ids[i] for i in self.fit_pool + self.hold_pool}),
            "unlabelled_slices": len(self.unlabelled_pool),
            "unlabelled_cases": sorted({self.train_case_ids[i] for i in self.unlabelled_pool}),
            "init_encoders": self.initialised,
            "slice_height": self.info.height, "slice_width": self.info.width,
            "benchmark_fusion_method": self.info.fusion_method, "benchmark_slice_size": self.info.slice_size,
            "seg_inputs": list(self.config.seg_inputs()), "benchmark_sha256": self.identity["sha256"],
            **self.text_facts,
        }


#: Prefixes of the text models' facts in config.json "derived" (fuse4seg.train.text.prepare_text_models).
TEXT_FACTS = ("text_", "alignment_")


def _previous_derived(run_dir: Path) -> dict[str, Any]:
    """The "derived" facts of RUN/config.json as a resumed run found it ({} when unreadable)."""
    try:
        return dict(json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("derived") or {})
    except (OSError, ValueError, AttributeError):
        return {}


def train(config: TrainConfig) -> dict[str, Any]:
    """Train one run as configured (creating, resuming or replacing RUN); returns a summary dict.

    Everything is checked before anything is written. RUN is locked while training. A new run is trained
    in place (so --resume can continue it after a kill) and removed again if it fails before its first
    checkpoint; --overwrite of an earlier run trains beside it and swaps it in only after success. Under
    torchrun, rank 0 does all of that and the other ranks train beside it without touching RUN.
    """
    validate(config)
    world = init_from_env(config.device, config.join_timeout)
    try:
        # The other ranks read RUN/last.pt on --resume and write nothing.
        summary = _train_main(config, world) if world.is_main else _train_into(Trainer(config, world), None)
        world.barrier()  # RUN is complete (staged runs swapped in) before any rank returns
        return summary
    except BaseException as exc:
        if not world.agreed:  # a set-up failure: tell the ranks waiting to start, rather than leave them hanging
            world.agree(one_line(exc) or type(exc).__name__)
        raise
    finally:
        world.close()


def _train_main(config: TrainConfig, world: World) -> dict[str, Any]:
    """:func:`train` on rank 0 (or the only process): check, create and lock RUN, then train into it
    (fuse4seg.runkit.rundir)."""
    folder = RunFolder(Path(config.out), "run", config.resume, lambda: check_run_dir(config), legacy=is_legacy_run)
    return run_in_folder(folder, lambda: Trainer(config, world), _train_into)


def _train_into(trainer: Trainer, run_dir: Path | None) -> dict[str, Any]:
    """Meet the other ranks, run ``trainer`` writing into ``run_dir`` (None: a rank that writes nothing), then
    rank 0 writes train_summary.json; returns the summary."""
    trainer.world.agree(None)
    summary = trainer.run(run_dir)
    if trainer.world.is_main:
        assert run_dir is not None
        atomic_write_text(run_dir / "train_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def train_from_options(values: dict[str, Any], config_file: str | Path | None = None) -> dict[str, Any]:
    """Resolve command-line style options (None = not given; see command_line.cli_overrides) and train."""
    return train(resolve_config(cli_overrides(values), config_file))


def format_train_summary(summary: dict[str, Any]) -> str:
    """Lines for the terminal: steps, skipped, val Dice, where the checkpoints and logs are."""
    run = summary["run"]
    val = summary.get("val") or {}
    classify = summary.get("best_metric") == "auroc_mean"
    prefix = "auroc_" if classify else "dice_"
    dice = ", ".join(f"{k[len(prefix):]} {v:.3f}" for k, v in val.items() if k.startswith(prefix)) or "no val split"
    per = "per case, whole volumes" if summary.get("dims", 2) == 3 else "per slice"
    return "\n".join([
        (f"trained {summary['mode']}: {summary['steps']} steps ({summary['steps_this_call']} this call, "
        f"{summary['skipped']} skipped) in {summary['seconds']:.1f} s"),
        f"val {'AUROC' if classify else 'Dice'} ({per}): {dice}; best step {summary['best_step']}",
        f"checkpoints: {run}/best.pt, {run}/last.pt; options: {run}/config.json",
        f"TensorBoard: tensorboard --logdir {summary['tensorboard']}",
    ])
