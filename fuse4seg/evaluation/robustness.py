"""``fuse4seg robustness``: Dice and fusion quality of trained runs as MR degradations grow worse.

Every run is applied to the benchmark's test split with its source images degraded by one degradation
(:mod:`fuse4seg.data.augment.degradations`, :func:`~fuse4seg.data.augment.severity.at_severity`) at ``levels`` + 1
evenly spaced severities from 0 (clean) to 1 (the top of the degradation's range). Each slice's
degradation is seeded by (seed, degradation, level, slice) alone, so every run sees the very same
degraded images and a rerun reproduces them. A run whose segmenter reads the benchmark's stored fused
image (direct on ``fused``) gets that image re-fused from the degraded sources by the benchmark's rule.

Reported per (run, degradation, level): per-slice Dice of WT, TC, ET (BraTS empty-mask rule) averaged
over the slices, their mean, per test case the mean over its slices of the three regions' Dice
(``case_dice``, JSON only), and for runs that produce a fused image (a fusion network, or the re-fused
stored image) the fusion metrics (:func:`fuse4seg.metrics.fusion_metrics`, 0-255 scale, SSIM data_range
255) of that image against the CLEAN fusion inputs, averaged over ``fusion_slices`` slices spread over
the split (all of them with 0). Outputs, written atomically to OUT: robustness.json, robustness.csv (one
row per run, degradation and level), robustness.md (tables) and one PNG per degradation (Dice per region
and fusion metrics against severity, one line per run).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fuse4seg.conventions import REGIONS, modality_indices
from fuse4seg.errors import ConfigError
from fuse4seg.io import atomic_dir, csv_cell
from fuse4seg.runkit.benchmark import SplitArrays, read_split

#: Fusion metrics drawn in the plots (all eleven are in the JSON and CSV).
PLOTTED_FUSION = ("Qabf", "SSIM", "VIF", "MI")
#: Random stream of the robustness degradations (apart from training's streams in fuse4seg.runkit.batches).
_STREAM = 11


def expand_degradations(names: str | list[str]) -> list[str]:
    """Degradation names of a comma list of names and groups (noise,blur,kspace,motion,lowres), in order;
    ConfigError (option degradations) for an unknown one."""
    from fuse4seg.data.augment.severity import DEGRADATIONS, GROUPS

    items = [n.strip().lower() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not items:
        raise ConfigError("give at least one degradation", option="degradations")
    out: list[str] = []
    for name in items:
        if name in GROUPS:
            members = list(GROUPS[name])
        elif name in DEGRADATIONS:
            members = [name]
        else:
            raise ConfigError(f"unknown degradation {name!r}; known: {', '.join(GROUPS)} (groups) and "
                              f"{', '.join(DEGRADATIONS)}", option="degradations")
        out += [m for m in members if m not in out]
    return out


def severities(levels: int) -> list[float]:
    """``levels`` + 1 severities evenly spaced in [0, 1] (0: clean)."""
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 20:
        raise ConfigError(f"must be an integer from 1 to 20, got {levels!r}", option="levels")
    return [k / levels for k in range(levels + 1)]


def degrade(sources: np.ndarray, name: str, level_index: int, level: float, seed: int) -> np.ndarray:
    """(N, C, H, W) float32 sources in [0, 1] degraded by ``name`` at severity ``level``; slice i's draws are
    seeded by (seed, name, level_index, i) only. Level 0 returns the sources unchanged."""
    from fuse4seg.data.augment.severity import DEGRADATIONS, at_severity
    from fuse4seg.data.augment.specs import seeded

    if level == 0:
        return sources
    transform = at_severity(name, level)
    out = np.empty_like(sources)
    for i, image in enumerate(sources):  # one seeded call per slice: the images, not pixels, are the loop
        key = [int(seed), _STREAM, DEGRADATIONS.index(name), int(level_index), i]
        draw = int(np.random.SeedSequence(key).generate_state(1)[0])
        result = seeded(transform, draw, image=np.ascontiguousarray(image.transpose(1, 2, 0)))["image"]
        out[i] = np.asarray(result, dtype=np.float32).transpose(2, 0, 1)
    return out


@dataclass(frozen=True)
class Job:
    """One run under one degradation at every severity."""

    run: str
    label: str
    degradation: str
    severities: tuple[float, ...]
    split: str
    seed: int
    fusion_slices: int
    batch_size: int


def _fusion_rows(fused: np.ndarray, clean: np.ndarray, picks: np.ndarray) -> dict[str, float]:
    """Mean fusion metrics of fused (N, H, W) in [0, 1] against clean fusion inputs (N, C, H, W), over ``picks``."""
    from fuse4seg.metrics.fusion import average_fusion_metrics

    pairs = ((fused[i] * 255.0, clean[i] * 255.0) for i in picks)
    out = average_fusion_metrics(pairs)
    out.pop("count", None)
    return out


class HeldSlices(Dataset):
    """Slices held in memory as :func:`fuse4seg.train.predict.forward_batches` reads them: item i ->
    {"source": (4, H, W), "fused": (1, H, W), "label": (H, W)[, "text"]}."""

    def __init__(self, source: np.ndarray, fused: np.ndarray, label: np.ndarray, text: Sequence[str] | None) -> None:
        """(N, 4, H, W) float32 sources, (N, 1, H, W) float32 stored fused, (N, H, W) int64 labels, N texts or None."""
        self.source, self.fused, self.label, self.text = source, fused, label, text

    def __len__(self) -> int:
        """Number of slices."""
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Slice ``index`` as tensors (sharing the arrays' memory), with its text when there are texts."""
        item: dict[str, Any] = {"source": torch.from_numpy(self.source[index]),
                                "fused": torch.from_numpy(self.fused[index]), "label": torch.from_numpy(self.label[index])}
        if self.text is not None:
            item["text"] = self.text[index]
        return item


def run_job(job: Job) -> list[dict[str, Any]]:
    """Rows {run, degradation, level, severity, dice_WT, dice_TC, dice_ET, dice_mean, fusion metrics...} of one job."""
    from fuse4seg.fusion import FUSION_RULES, fuse_batch
    from fuse4seg.losses import predict_labels
    from fuse4seg.metrics.fusion_structure import VIF_MIN_SIZE
    from fuse4seg.train.predict import dice_per_slice, forward_batches
    from fuse4seg.train.run import load_run, require_segmenter

    torch.set_num_threads(1)
    config, pipeline, _ = load_run(job.run)
    require_segmenter(job.run, config, "robustness")
    data = read_split(Path(config.benchmark), job.split)
    refuse = pipeline.fusion is None and pipeline.seg_inputs == ("fused",)
    if refuse and data.fusion_method not in FUSION_RULES:
        raise ConfigError(f"{job.run} segments the benchmark's fused image, fused by {data.fusion_method!r}, which "
                          "cannot be re-applied to degraded sources", option="run")
    n = len(data.label)
    picks = np.arange(n) if job.fusion_slices == 0 else np.unique(
        np.linspace(0, n - 1, min(job.fusion_slices, n)).round().astype(int))
    has_image = (pipeline.fusion is not None or refuse) and min(data.label.shape[1:]) >= VIF_MIN_SIZE \
        and len(pipeline.fusion_inputs) >= 2
    rows = []
    for k, level in enumerate(job.severities):
        sources = degrade(data.source, job.degradation, k, level, job.seed)
        stored = data.fused
        if refuse and level > 0:
            stored = fuse_batch(sources[:, modality_indices(data.fusion_inputs)], data.fusion_method)[:, None]
        dice, fused_parts = [], []
        slices = HeldSlices(sources, stored, data.label, data.text)
        for batch, fused, logits in forward_batches(pipeline, slices, "cpu", job.batch_size):
            dice.append(dice_per_slice(predict_labels(logits, pipeline.region_based), batch["label"]))
            fused_parts.append((batch["fused"] if fused is None else fused).numpy()[:, 0])
        per_slice = torch.cat(dice).numpy()
        per_region = per_slice.mean(0).tolist()
        cases = np.array([case for case, _ in data.keys])
        row: dict[str, Any] = {"run": job.label, "degradation": job.degradation, "level": k, "severity": level,
                               **{f"dice_{r}": v for r, v in zip(REGIONS, per_region)},
                               "dice_mean": float(np.mean(per_region)),
                               "case_dice": {str(c): float(per_slice[cases == c].mean()) for c in np.unique(cases)}}
        if has_image:
            clean = data.source[:, pipeline.fusion_channels]
            row.update(_fusion_rows(np.concatenate(fused_parts), clean, picks))
        rows.append(row)
    return rows


def _labels(runs: list[str]) -> list[str]:
    """Short unique names of runs: the fewest trailing path parts that tell them apart (e.g. ``bilevel`` or
    ``rob-bilevel/seed-0/run``)."""
    parts = [Path(r).resolve().parts for r in runs]
    for keep in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-keep:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    raise ConfigError("the same run is given twice", option="run")


def check_same_split(runs: list[str], split: str) -> None:
    """ConfigError unless every run is a 2-D run whose benchmark holds the same slices and sources in ``split``."""
    from fuse4seg.train.run import read_config_json
    from fuse4seg.train.variant_facts import facts_of

    first: tuple[str, SplitArrays] | None = None
    for run in runs:
        config = read_config_json(Path(run) / "config.json")
        if not facts_of(config).slices:  # the degradations are 2-D transforms of the test slices
            raise ConfigError(f"{run} is a 3-D run; robustness evaluates runs trained on 2-D slices", option="run")
        bench = Path(config.benchmark)
        data = read_split(bench, split)
        if first is None:
            first = (run, data)
            continue
        other = first[1]
        if data.keys != other.keys or not np.array_equal(data.source, other.source):
            raise ConfigError(f"{run} was trained on {bench}, whose {split} split differs from that of {first[0]}; "
                              "robustness compares runs on the same slices", option="run")


def _csv(rows: list[dict[str, Any]]) -> str:
    """CSV text of the rows (union of their scalar keys, in first-seen order; missing cells empty)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k, v in row.items() if k not in keys and not isinstance(v, dict)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)  # no cell a spreadsheet executes
    return buffer.getvalue()


def _markdown(rows: list[dict[str, Any]], degradations: list[str], labels: list[str], meta: dict[str, Any]) -> str:
    """robustness.md: per degradation, Dice mean (and Qabf where present) per run and severity."""
    levels = sorted({r["severity"] for r in rows})
    lines = [f"# Robustness on the {meta['split']} split", "",
             (f"Per-slice Dice (mean of WT, TC, ET) and, in brackets, Qabf of the fused image against the clean "
              f"sources, as each degradation grows from severity 0 (clean) to 1. Seed {meta['seed']}; "
              f"command: `{meta['command']}`."), ""]
    for name in degradations:
        lines += [f"## {name}", "", "| run | " + " | ".join(f"{s:.2f}" for s in levels) + " |",
                  "|---" * (len(levels) + 1) + "|"]
        for label in labels:
            cells = []
            for s in levels:
                row = next(r for r in rows if r["run"] == label and r["degradation"] == name and r["severity"] == s)
                q = row.get("Qabf")
                cells.append(f"{row['dice_mean']:.3f}" + ("" if q is None or not math.isfinite(q) else f" ({q:.3f})"))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _plot(path: Path, rows: list[dict[str, Any]], name: str, labels: list[str]) -> None:
    """One PNG: Dice of WT, TC, ET and their mean (top) and the plotted fusion metrics (bottom) against severity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*(f"dice_{r}" for r in REGIONS), "dice_mean", *PLOTTED_FUSION]
    fig, axes = plt.subplots(2, 4, figsize=(14, 6.5), constrained_layout=True)
    for ax, key in zip(axes.flat, panels):
        for label in labels:
            mine = sorted((r for r in rows if r["run"] == label and r["degradation"] == name), key=lambda r: r["level"])
            values = [r.get(key) for r in mine]
            if all(v is not None for v in values):
                ax.plot([r["severity"] for r in mine], values, marker="o", label=label)
        ax.set_title(key.replace("dice_", "Dice "))
        ax.set_xlabel("severity")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{name}: test split, every run on the same degraded images")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def robustness(runs: list[str], degradations: str | list[str], levels: int, out: str | Path, split: str = "test",
               seed: int = 0, fusion_slices: int = 16, workers: int = 1, overwrite: bool = False,
               progress: bool = True, command: str = "") -> dict[str, Any]:
    """Evaluate every run under every degradation and severity; writes OUT (see the module doc); returns the JSON."""
    from fuse4seg.io import check_separate
    from fuse4seg.options import check_seed
    from fuse4seg.parallel import ordered_map

    if not runs:
        raise ConfigError("give at least one run", option="run")
    names, levels_ = expand_degradations(degradations), severities(levels)
    seed = check_seed(seed)
    if isinstance(fusion_slices, bool) or not isinstance(fusion_slices, int) or fusion_slices < 0:
        raise ConfigError(f"must be an integer >= 0, got {fusion_slices!r}", option="fusion_slices")
    if int(workers) < 1:
        raise ConfigError(f"must be at least 1, got {workers}", option="workers")
    for run in runs:
        if not Path(run).is_dir():
            raise ConfigError(f"{run} is not a directory", option="run")
        check_separate(out, {"run": run})
    check_same_split(runs, split)
    labels = _labels(runs)
    jobs = [Job(str(run), label, name, tuple(levels_), split, seed, fusion_slices, 16)
            for run, label in zip(runs, labels) for name in names]
    rows = [row for result in ordered_map(run_job, jobs, int(workers), desc="robustness", unit="job",
                                          progress=progress, preload=("fuse4seg.evaluation.robustness",))
            for row in result]
    meta = {"runs": [str(r) for r in runs], "labels": labels, "degradations": names, "severities": levels_,
            "split": split, "seed": seed, "fusion_slices": fusion_slices, "command": command}
    result = {**meta, "rows": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in row.items()} for row in rows]}
    with atomic_dir(out, "robustness", overwrite=overwrite) as tmp:
        (tmp / "robustness.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        (tmp / "robustness.csv").write_text(_csv(result["rows"]), encoding="utf-8")
        (tmp / "robustness.md").write_text(_markdown(result["rows"], names, labels, meta), encoding="utf-8")
        for name in names:
            _plot(tmp / f"robustness_{name}.png", result["rows"], name, labels)
    return result


def format_robustness(result: dict[str, Any], out: str | Path) -> str:
    """Terminal lines: Dice mean per run at the clean and the worst severity of each degradation."""
    lines = [(f"robustness of {len(result['labels'])} run(s) on the {result['split']} split "
              f"(Dice mean, clean -> severity 1):")]
    for name in result["degradations"]:
        cells = []
        for label in result["labels"]:
            mine = [r for r in result["rows"] if r["run"] == label and r["degradation"] == name]
            first, last = min(mine, key=lambda r: r["level"]), max(mine, key=lambda r: r["level"])
            cells.append(f"{label} {first['dice_mean']:.3f} -> {last['dice_mean']:.3f}")
        lines.append(f"  {name:<12} " + "; ".join(cells))
    lines.append(f"wrote {out}/robustness.md, .json, .csv and one PNG per degradation")
    return "\n".join(lines)
