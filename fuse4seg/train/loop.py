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

import dataclasses
import json
import math
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fuse4seg.conventions import modality_indices
from fuse4seg.data.package.dataset import BraTSFuse
from fuse4seg.distributed import World, init_from_env
from fuse4seg.errors import ConfigError, DataError, Fuse4SegError, flag_for
from fuse4seg.io import (
    atomic_write_text,
    make_parent,
    marker_kind,
    one_line,
    output_lock,
    remove_empty,
    staged_dir,
    sweep_stale,
    write_marker,
)
from fuse4seg.pretrain.init import load_pretrained_encoder
from fuse4seg.runkit.batches import TrainingView, step_loader
from fuse4seg.runkit.benchmark import BenchmarkInfo, benchmark_identity, benchmark_info, open_split
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
from fuse4seg.runkit.device import resolve_device
from fuse4seg.runkit.tblog import TensorBoardLog
from fuse4seg.train import modes, steps
from fuse4seg.train.config import (
    OPTIONS,
    RESUMABLE,
    TrainConfig,
    cli_overrides,
    config_from_dict,
    resolve_steps,
    validate,
)
from fuse4seg.train.networks import Pipeline, build_pipeline
from fuse4seg.train.patches import open_volumes
from fuse4seg.train.predict import classification_scores, validation_scores, volume_validation_scores
from fuse4seg.train.run import check_run_dir, is_legacy_run, resolve_config, write_config_json
from fuse4seg.train.semi import ema_update_, label_pools
from fuse4seg.train.text import prepare_text_models


def training_view(config: TrainConfig, info: BenchmarkInfo, dataset: BraTSFuse) -> BraTSFuse | TrainingView:
    """The train split as the steps see it: ``dataset`` itself, or a :class:`TrainingView` with --augment or
    --degrade-inputs (re-fusing degraded inputs by the benchmark's rule when the segmenter reads its fused image)."""
    from fuse4seg.fusion import FUSION_RULES

    if config.augment == "none" and config.degrade_inputs == "none":
        return dataset
    rule = None
    if config.degrade_inputs != "none" and "fused" in config.seg_inputs() and not modes.MODES[config.mode].has_fusion:
        if info.fusion_method not in FUSION_RULES:
            raise ConfigError(f"direct training on the benchmark's fused image with degraded inputs re-fuses them by "
                              f"its rule, but {info.path} was fused by {info.fusion_method!r}, not a classical rule "
                              f"({', '.join(FUSION_RULES)})", option="degrade_inputs")
        rule = (info.fusion_method, modality_indices(info.fusion_inputs))
    return TrainingView(dataset, config.augment, config.degrade_inputs, rule)


class NoLog:
    """The TensorBoard log of a rank that writes nothing (every rank but 0)."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Drop scalars."""

    def panels(self, *args: Any, **kwargs: Any) -> None:
        """Drop image panels."""

    def close(self) -> None:
        """Nothing to close."""


class Trainer:
    """Holds the networks, optimisers, data pools and counters of one run; ``run()`` trains it."""

    def __init__(self, config: TrainConfig, world: World | None = None) -> None:
        """Open the benchmark, build networks and optimisers, and restore RUN/last.pt on --resume; ``world``: this
        process's place under torchrun (default: a single process)."""
        self.config = config
        self.mode = modes.MODES[config.mode]
        self.world = world or World()
        self.world.check_batch(config.batch_size)
        self.device = self.world.device if self.world.active else resolve_device(config.device)
        if config.threads is not None:  # CPU threads; changing them may change the last bits of results
            torch.set_num_threads(config.threads)
        self.info: BenchmarkInfo = benchmark_info(config.benchmark)
        self.run_dir = Path(config.out)
        resumed = load_checkpoint(self.run_dir / "last.pt", map_location=self.device) if config.resume else None
        self.identity = benchmark_identity(self.info)
        if resumed is not None:
            self._check_same_run(resumed, self.run_dir / "last.pt")
        if config.dims == 3:  # items are cases (patches drawn per step), pools and the hold-out split too
            self.train_set, self.val_set = open_volumes(config, self.info)
            self.train_case_ids: tuple[str, ...] = tuple(self.train_set.volumes.case_ids)
        else:
            self.train_set = training_view(config, self.info, open_split(config.benchmark, "train", config.cache))
            self.val_set = open_split(config.benchmark, "val", config.cache) if self.info.counts["val"] else None
            self.train_case_ids = self.info.train_case_ids  # one per slice
        self.fit_pool, self.hold_pool, self.unlabelled_pool = label_pools(
            self.train_case_ids, config.label_fraction, config.seed, self.mode.holds_out, config.val_fraction)
        if config.label_fraction < 1 and not self.unlabelled_pool:
            raise ConfigError(f"keeps the labels of every one of the {len(set(self.train_case_ids))} train cases; "
                              "lower it to leave some unlabelled", option="label_fraction")
        self.total = resolve_steps(config, len(self.fit_pool))
        self.fusion_steps = self.mode.fusion_stage(config, self.total) if self.mode.fusion_stage else 0
        self.pipeline: Pipeline = build_pipeline(config).to(self.device)
        # A resumed run's weights come from last.pt: the pre-trained file is read only at the start.
        self.initialised = load_pretrained_encoder(self.pipeline.seg, config.init) if config.init and not resumed else []
        if self.pipeline.teacher is not None:  # the mean teacher starts as the (initialised) student
            self.pipeline.teacher.load_state_dict(self.pipeline.seg.state_dict())
        self.unlabelled: dict | None = None  # this step's unlabelled batch (--label-fraction < 1)
        self.text_facts: dict[str, Any] = {}
        if resumed is None:  # a resumed run's text models come with its weights (and its facts from config.json)
            base = getattr(self.train_set, "dataset", self.train_set)  # under a TrainingView
            self.text_facts = prepare_text_models(self.pipeline, base, self.val_set, config.seed, config.semantic_steps)
            if self.pipeline.alignment is not None:  # GPU backward is not bitwise deterministic: make ranks agree
                self.world.mean_(list(self.pipeline.alignment.parameters()))
        else:
            self.text_facts = {k: v for k, v in _previous_derived(self.run_dir).items() if k.startswith(TEXT_FACTS)}
        self.opts = steps.make_optimisers(config, self.pipeline)
        self.step, self.counters, self.best = 0, Counters(), Best()
        if resumed is not None:
            self._restore(resumed, self.run_dir / "last.pt")
            if self.step > self.total:
                raise ConfigError(f"the run has already completed {self.step} steps (asked for {self.total})",
                                  option="steps")

    # ---- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly (the layout of checkpoint.TrainingState)."""
        return to_plain(TrainingState(
            config=self.config.to_dict(), step=self.step, total_steps=self.total,
            models=self.pipeline.state_dicts(),
            optimizers=OptimiserStates(*(None if opt is None else opt.state_dict()
                                         for opt in (self.opts.upper, self.opts.lower, self.opts.scaler))),
            inner_state=self.opts.inner_state, rng=capture_rng_state(), counters=self.counters, best=self.best,
            benchmark=Identity(**self.identity),
        ))

    def _check_same_run(self, state: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint of another run (other options) or a benchmark with other content."""
        try:
            written = config_from_dict(state["config"], f" (in {path})")
        except ConfigError as exc:
            raise DataError(f"{path}: its stored options are not valid here: {exc}") from None
        for key, d in OPTIONS.items():
            if key not in RESUMABLE and d.get(written) != d.get(self.config):
                raise DataError(
                    f"{path}: written by a run with {flag_for(key)} {d.get(written)!r}, but "
                    f"{self.run_dir / 'config.json'} has {d.get(self.config)!r}; not this run's checkpoint"
                )
        old, new = state.get("benchmark"), self.identity
        if old is None:  # written before identities were recorded: only the same path is accepted
            if Path(written.benchmark).resolve() != Path(self.config.benchmark).resolve():
                raise ConfigError(f"{self.config.benchmark} differs from {written.benchmark}, and {path} records no "
                                  "benchmark checksum to prove it is the same data", option="benchmark")
        elif old["sha256"] != new["sha256"]:
            raise ConfigError(
                f"{self.config.benchmark} is not the benchmark this run was trained on "
                f"(sha256 {new['sha256'][:12]}... != {old['sha256'][:12]}..., slices {new['counts']} vs "
                f"{old['counts']})", option="benchmark")

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
        self.step = int(state["step"])
        self.counters, self.best = Counters(**state["counters"]), Best(**state["best"])
        restore_rng_state(state["rng"])

    def save(self, *names: str) -> None:
        """Write RUN/<name>.pt for each name, all of this step's state, renamed together (a failure keeps the
        previous pair); rank 0 only."""
        if not self.world.is_main:
            return
        save_checkpoints([self.run_dir / f"{name}.pt" for name in names], self.state())

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
        """Dice on the benchmark's val split, and whether it is a new best; logs scalars and panels; with
        ``select`` updates the best score (the caller writes best.pt).

        best.pt is chosen only at scheduled evaluations (every --eval-every steps; with --eval-every 0
        it is the final weights), so it does not depend on where a run was interrupted and resumed. Rank 0
        alone validates and tracks the best (the others report nothing).
        """
        if self.val_set is None or not self.world.is_main:
            return {}, False
        if self.pipeline.classifies:
            scores, first = classification_scores(self.pipeline, self.val_set, self.device, self.config.eval_slices), None
        elif self.config.dims == 3:
            scores, first = volume_validation_scores(self.pipeline, self.val_set, self.device, self.config.patch,
                                                     limit=self.config.eval_slices)
        else:
            scores, first = validation_scores(self.pipeline, self.val_set, self.device, limit=self.config.eval_slices)
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
    world = init_from_env(config.device)
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
    """:func:`train` on rank 0 (or the only process): check, create and lock RUN, then train into it."""
    check_run_dir(config)
    trainer = Trainer(config, world)  # opens and checks the benchmark before anything is written
    run = Path(config.out)
    _, created = make_parent(run)
    try:
        with output_lock(run):
            sweep_stale(run)
            if not check_run_dir(config):  # checked again under the lock
                with staged_dir(run, "run", overwrite=True, legacy=is_legacy_run) as tmp:
                    return _train_into(trainer, tmp)
            fresh = not run.exists()
            if not fresh and not config.resume:
                _empty(run)  # empty, or what a run killed before its first checkpoint left
            run.mkdir(exist_ok=True)
            if marker_kind(run) is None:
                write_marker(run, "run")
            try:
                return _train_into(trainer, run)
            except BaseException:
                if not config.resume and not (run / "last.pt").exists():  # nothing to resume: leave no debris
                    if fresh:
                        shutil.rmtree(run, ignore_errors=True)
                    else:
                        _empty(run)
                raise
    except BaseException:
        if not run.exists():
            remove_empty(created)  # after the lock file is gone
        raise


def _train_into(trainer: Trainer, run_dir: Path | None) -> dict[str, Any]:
    """Meet the other ranks, run ``trainer`` writing into ``run_dir`` (None: a rank that writes nothing), then
    rank 0 writes train_summary.json; returns the summary."""
    trainer.world.agree(None)
    summary = trainer.run(run_dir)
    if trainer.world.is_main:
        assert run_dir is not None
        atomic_write_text(run_dir / "train_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _empty(directory: Path) -> None:
    """Remove everything inside ``directory`` (a run folder holding no checkpoint)."""
    for path in directory.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def train_from_options(values: dict[str, Any], config_file: str | Path | None = None) -> dict[str, Any]:
    """Resolve command-line style options (None = not given; see config.cli_overrides) and train."""
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
