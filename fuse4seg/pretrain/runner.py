"""``pretrain``: the self-supervised loop over a package's sources, with checkpoints, TensorBoard and exact resume.

    PRE/encoder.pt      {"encoder": the shared encoder's state dict, "meta": width, depth, norm, dims, ...}
    PRE/last.pt         checkpoint (layout: fuse4seg.runkit.checkpoint.TrainingState; the one Adam state is
                        stored as "lower", the network trained by plain gradient steps; "upper" is None)
    PRE/config.json     {"pretrain": every option, "derived": facts read from the data}
    PRE/metrics.jsonl   one line per step: the three losses, their weighted total, the pair and masked modality
    PRE/tb/             TensorBoard scalars loss/total, loss/consistency, loss/reconstruction, loss/alignment

Exact resume: the batch of step s is a function of (seed, s) (fuse4seg.runkit.batches), so is the step's pair,
masked modality and mask (:func:`fuse4seg.pretrain.model.draw_step`); last.pt holds weights, Adam state,
RNG states and the step, so ``--resume`` reaches, on CPU, the weights of an uninterrupted run bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fuse4seg.conventions import MODALITIES
from fuse4seg.errors import ConfigError, DataError, Fuse4SegError, flag_for
from fuse4seg.io import (
    atomic_path,
    atomic_write_text,
    check_replace_dir,
    check_separate,
    full_disk_is_one_line,
    marker_kind,
    one_line,
    sha256_file,
)
from fuse4seg.pretrain.data import SourceSlices
from fuse4seg.pretrain.model import PretrainNet, draw_step
from fuse4seg.pretrain.options import RESUMABLE, PretrainOptions
from fuse4seg.runkit.batches import step_loader
from fuse4seg.runkit.checkpoint import (
    Best,
    Counters,
    Identity,
    OptimiserStates,
    TrainingState,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    to_plain,
)
from fuse4seg.runkit.device import resolve_device
from fuse4seg.runkit.pretrained import ENCODER_KIND
from fuse4seg.runkit.resume import check_same_benchmark, check_same_options
from fuse4seg.runkit.rundir import RunFolder, run_in_folder
from fuse4seg.runkit.tblog import TensorBoardLog

KIND = "pretrain"
LOSS_NAMES = ("total", "consistency", "reconstruction", "alignment")


def options_dict(options: PretrainOptions) -> dict[str, Any]:
    """Every option as JSON-ready values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}


class Pretrainer:
    """The network, optimiser, data and step counter of one pre-training run; :meth:`run` trains it."""

    def __init__(self, options: PretrainOptions) -> None:
        """Open the package, build network and optimiser, and restore PRE/last.pt on --resume (checked to be
        this run's: same options but the resumable ones, same package content)."""
        self.options = options
        self.device = resolve_device(options.device)
        self.out = Path(options.out)
        stored = _read_run(self.out) if options.resume else None
        self.data = SourceSlices(options.benchmark, options.splits)
        self.sha256 = sha256_file(self.data.path)
        bottom = [(s + (-s) % 2**options.depth) // 2**options.depth for s in self.data.size]
        if options.norm == "instance" and bottom == [1, 1]:  # torch refuses instance statistics of one pixel
            raise ConfigError(f"{options.depth} halvings leave the {self.data.size[0]} x {self.data.size[1]} slices "
                              "a 1-pixel bottleneck, too small for --norm instance; lower it", option="depth")
        if stored is not None:
            _check_same_run(stored, options, self.sha256, self.out)
        torch.manual_seed(options.seed)  # the initial weights
        self.net = PretrainNet(options.width, options.depth, options.norm, modalities=len(MODALITIES),
                               embed_dim=options.embed_dim).to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=options.lr)
        self.step = 0
        if options.resume:
            self._restore(load_checkpoint(self.out / "last.pt", map_location=self.device))
            if self.step > options.steps:
                raise ConfigError(f"the run has already completed {self.step} steps (asked for {options.steps})",
                                  option="steps")

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly, in the layout of checkpoint.TrainingState."""
        height, width = self.data.size
        return to_plain(TrainingState(
            config=options_dict(self.options), step=self.step, total_steps=self.options.steps,
            models={KIND: self.net.state_dict()}, optimizers=OptimiserStates(None, self.opt.state_dict()),
            inner_state=None, rng=capture_rng_state(), counters=Counters(), best=Best(),
            benchmark=Identity(self.sha256, {"slices": len(self.data)}, height, width),
        ))

    def _restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint written by :meth:`state`; DataError when it does not fit this network."""
        path = self.out / "last.pt"
        check_same_benchmark(state.get("benchmark"), self.sha256, lambda: ConfigError(
            f"{self.options.benchmark} is not the package {path} was trained on (sha256 differs)", option="benchmark"))
        try:
            self.net.load_state_dict(state["models"][KIND])
            self.opt.load_state_dict(state["optimizers"]["lower"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: not a checkpoint of this pre-training run ({one_line(exc)[:200]})") from None
        self.step = int(state["step"])
        restore_rng_state(state["rng"])

    def save(self, directory: Path) -> None:
        """Write directory/last.pt (atomic)."""
        save_checkpoint(directory / "last.pt", self.state())

    def write_encoder(self, directory: Path) -> Path:
        """Write directory/encoder.pt: the shared encoder's state dict (CPU) and what it is (loadable with
        torch.load(weights_only=True))."""
        meta = {**self.net.meta(), "kind": ENCODER_KIND, "steps": self.step, "seed": self.options.seed,
                "modalities": list(MODALITIES), "benchmark_sha256": self.sha256}
        payload = {"encoder": {k: v.detach().cpu().clone() for k, v in self.net.encoder.state_dict().items()},
                   "meta": meta}
        final = directory / "encoder.pt"
        with atomic_path(final) as tmp:
            torch.save(payload, tmp)
        return final

    def derived(self) -> dict[str, Any]:
        """Facts read from the package, recorded beside the options in config.json."""
        return {"slices": len(self.data), "cases": len(set(self.data.case_ids)), "slice_height": self.data.size[0],
                "slice_width": self.data.size[1], "benchmark_sha256": self.sha256, "modalities": list(MODALITIES)}

    def one_step(self, sources: torch.Tensor) -> dict[str, Any]:
        """One Adam step on (N, 4, H, W) ``sources``; returns the step's losses, pair and masked modality."""
        o = self.options
        multiple = self.net.multiple
        padded = tuple(s + (-s) % multiple for s in sources.shape[2:])
        draw = draw_step(o.seed, self.step, sources.shape[0], sources.shape[1], padded, multiple, o.mask_fraction)
        draw = draw._replace(mask=draw.mask.to(self.device))
        self.net.train(True)
        self.opt.zero_grad(set_to_none=True)
        losses = self.net.losses(sources, draw, o.temperature,
                                 (o.consistency_weight, o.reconstruction_weight, o.alignment_weight))
        values = {name: float(v.detach()) for name, v in zip(LOSS_NAMES, losses)}
        if not all(math.isfinite(v) for v in values.values()):
            raise Fuse4SegError(f"pre-training stopped at step {self.step}: non-finite loss ({values}); lower --lr "
                                "or check the data")
        losses.total.backward()
        self.opt.step()
        return {**values, "pair": [MODALITIES[i] for i in draw.pair], "masked": MODALITIES[draw.masked]}

    def run(self, directory: Path) -> dict[str, Any]:
        """Train from the current step to --steps writing into ``directory``; returns a summary dict."""
        o = self.options
        atomic_write_text(directory / "config.json",
                          json.dumps({"pretrain": options_dict(o), "derived": self.derived()}, indent=2,
                                     sort_keys=True) + "\n")
        metrics = _reopen_metrics(directory / "metrics.jsonl", self.step)
        log = TensorBoardLog(directory, self.step)
        loader = step_loader(self.data, range(len(self.data)), o.batch_size, o.seed, self.step, o.steps, "fit",
                             o.workers)
        bar = tqdm(total=o.steps, initial=self.step, disable=None if o.progress else True, desc="pretrain",
                   unit="step", dynamic_ncols=True)
        first, started, in_step, last = self.step, time.perf_counter(), False, {}
        try:
            for batch in loader:
                in_step = True
                t0 = time.perf_counter()
                last = self.one_step(batch["source"].to(self.device))
                self.step += 1
                in_step = False
                log.scalars(self.step, {**{f"loss/{k}": last[k] for k in LOSS_NAMES},
                                        "time/step_s": time.perf_counter() - t0})
                metrics.write(json.dumps({"step": self.step, **last}) + "\n")
                if self.step % o.checkpoint_every == 0 or self.step == o.steps:
                    metrics.flush()
                    self.save(directory)
                bar.update(1)
        except KeyboardInterrupt:
            if not in_step:  # mid-step the weights may be half updated: keep the last periodic checkpoint
                metrics.flush()
                self.save(directory)
            raise
        finally:
            bar.close()
            try:
                log.close()
            finally:
                metrics.close()
        if not (directory / "last.pt").exists():  # resumed at the final step: nothing trained, still resumable
            self.save(directory)
        encoder = self.write_encoder(directory)
        summary = {"out": str(o.out), "steps": self.step, "steps_this_call": self.step - first,
                   "seconds": round(time.perf_counter() - started, 3), "slices": len(self.data),
                   "final_losses": {k: last.get(k) for k in LOSS_NAMES} if last else None,
                   "encoder": str(Path(o.out) / encoder.name), "tensorboard": str(Path(o.out) / "tb")}
        atomic_write_text(directory / "pretrain_summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def _reopen_metrics(path: Path, step: int) -> MetricsFile:
    """metrics.jsonl open for appending, after dropping lines past ``step`` (a killed run's, beyond its checkpoint)
    and a last line a kill or a full disk cut short."""
    if path.exists():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                if _step_of(line) is not None and _step_of(line) <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return MetricsFile(path)


def _step_of(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a line that is not a whole record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step", 0) if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


class MetricsFile:
    """PRE/metrics.jsonl open for appending; a full disk (in a write, a flush or the close) is a one-line error
    naming it."""

    def __init__(self, path: Path) -> None:
        """Open ``path`` for appending (UTF-8)."""
        self.path = path
        with full_disk_is_one_line(path):
            self.handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def write(self, text: str) -> None:
        """Append ``text``."""
        with full_disk_is_one_line(self.path):
            self.handle.write(text)

    def flush(self) -> None:
        """Flush to the file."""
        with full_disk_is_one_line(self.path):
            self.handle.flush()

    def close(self) -> None:
        """Flush and close (the file is closed even when the flush fails)."""
        with full_disk_is_one_line(self.path):
            self.handle.close()


def _read_run(out: Path) -> dict[str, Any]:
    """The options stored in PRE/config.json of the run to resume; ConfigError when PRE is not one."""
    if not (out / "last.pt").is_file() or marker_kind(out) != KIND:
        raise ConfigError(f"{out} is not a fuse4seg pretrain run with a checkpoint (no last.pt); nothing to resume",
                          option="out")
    try:
        stored = json.loads((out / "config.json").read_text(encoding="utf-8"))["pretrain"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{out}/config.json is not a pretrain config ({one_line(exc)})", option="out") from None
    if not isinstance(stored, dict):
        raise ConfigError(f"{out}/config.json is not a pretrain config", option="out")
    return stored


def resume_values(values: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """Option values for a command line that gave only ``given`` of ``values``: with --resume, every option it did
    not give comes from the resumed run's PRE/config.json (as ``train --resume`` does), so
    ``fuse4seg pretrain --out PRE --resume`` continues a run, and ``--steps N`` extends it."""
    if not values.get("resume"):
        return values
    stored = _read_run(Path(values["out"]))
    runtime = {"resume", "overwrite", "out"}
    return {**values, **{k: v for k, v in stored.items() if k in values and k not in given and k not in runtime}}


def pretrain_given(options: PretrainOptions, given: frozenset[str] | set[str]) -> dict[str, Any]:
    """``fuse4seg pretrain``: :func:`pretrain` with the options the command line gave (``given``), the others taken
    from the resumed run with --resume (:func:`resume_values`)."""
    values = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    return pretrain(PretrainOptions(**resume_values(values, set(given))))


def _check_same_run(stored: dict[str, Any], options: PretrainOptions, sha256: str, out: Path) -> None:
    """ConfigError unless ``options`` equal the stored ones except the resumable ones (the package may move)."""
    def refuse(key: str, old: Any, new: Any) -> ConfigError:
        """The one-line refusal naming the option that changed."""
        return ConfigError(f"{new!r} differs from the run being resumed ({old!r} in {out}/config.json); only "
                           f"{', '.join(flag_for(k) for k in sorted(RESUMABLE))} may change on --resume", option=key)

    check_same_options(stored, options_dict(options), RESUMABLE | {"benchmark"}, refuse)


def pretrain(options: PretrainOptions) -> dict[str, Any]:
    """Pre-train the shared encoder as ``options`` say (creating, resuming or replacing PRE); returns a summary.

    Everything is checked before anything is written; PRE is locked while training. A new run trains in
    place (so --resume can continue it after a kill) and is removed again if it fails before its first
    checkpoint; --overwrite of an earlier run trains beside it and swaps it in only after success.
    """
    options.validate()
    out = Path(options.out)

    def check() -> bool:
        """PRE may be used: True to train in place (resumed, or new), False to replace an earlier run."""
        if options.benchmark and (Path(options.benchmark) / "brats_fuse.h5").exists():  # else the data check
            check_separate(out, {"benchmark": options.benchmark})  # not inside the package (nor containing it)
        if options.resume:  # Pretrainer checks PRE against its config.json (_read_run)
            return True
        check_replace_dir(out, KIND, options.overwrite)
        return not out.exists()

    return run_in_folder(RunFolder(out, KIND, options.resume, check), lambda: Pretrainer(options), Pretrainer.run)


def format_pretrain_summary(summary: dict[str, Any]) -> str:
    """Lines for the terminal: steps, final losses, where the encoder, checkpoint and logs are."""
    losses = summary.get("final_losses") or {}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in losses.items() if v is not None) or "no step this call"
    return "\n".join([
        (f"pre-trained {summary['steps']} steps ({summary['steps_this_call']} this call) on {summary['slices']} "
         f"slices in {summary['seconds']:.1f} s; last losses: {shown}"),
        f"encoder: {summary['encoder']}; checkpoint: {Path(summary['out']) / 'last.pt'}",
        f"TensorBoard: tensorboard --logdir {summary['tensorboard']}",
    ])
