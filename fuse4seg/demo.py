"""``fuse4seg demo``: phantom benchmark -> bi-level training -> evaluation, in a few minutes on 2 CPU cores.

The sizes below were tuned so that the segmentation network clearly learns within the budget on a
2-core machine (see the README for the measured Dice and runtime); the printed table puts the
trained network beside the same network untrained and beside predicting background everywhere.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fuse4seg.io import check_replace_dir, write_marker

#: Phantom benchmark of the demo: cases, grid scale, slice size, slices per case.
DEMO_BENCHMARK: dict[str, Any] = {"phantom": 12, "phantom_scale": 0.5, "size": 64, "slices_per_case": 10,
                                  "split": (0.7, 0.1, 0.2), "seed": 0}
#: Bi-level training options of the demo (every other option keeps its default).
DEMO_TRAIN: dict[str, Any] = {
    "mode": "bilevel", "hypergrad": "unrolled", "inner_steps": 1, "inner_optimizer": "adam",
    "lr_lower": 3e-3, "lr_upper": 1e-3, "batch_size": 8, "steps": 240, "eval_every": 60,
    "seg_options": {"width": 8, "depth": 3}, "fusion_options": {"width": 8, "layers": 3}, "seed": 0,
    # One torch thread: two OpenMP threads on a 2-core machine that is busy with anything else stall
    # (measured: a UNet step 20x slower under load); on an idle machine one thread costs < 2x.
    "threads": 1,
}


def _is_legacy_demo(directory: Path) -> bool:
    """Whether ``directory`` is a demo written before output markers (only benchmark/ and run/ in it)."""
    return {p.name for p in directory.iterdir()} <= {"benchmark", "run"}


def run_demo(out: str | Path = "runs/demo", overwrite: bool = False, echo: Callable[[str], Any] = print,
             train_overrides: dict[str, Any] | None = None, benchmark_overrides: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """Build OUT/benchmark, train OUT/run bi-level, evaluate on the test split; returns the metrics.

    An existing OUT is refused without ``overwrite``; a failed demo removes what it wrote.
    """
    from fuse4seg.evaluation.evaluate import evaluate_run
    from fuse4seg.evaluation.report import format_summary
    from fuse4seg.inference.build import build_benchmark
    from fuse4seg.train.loop import format_train_summary, train
    from fuse4seg.train.resolve import build_config

    out = Path(out)
    # Checked before anything is built or removed: a bad option (e.g. --seed -1) leaves an earlier demo alone.
    config = build_config({**DEMO_TRAIN, **(train_overrides or {}), "benchmark": str(out / "benchmark"),
                           "out": str(out / "run")})
    check_replace_dir(out, "demo", overwrite, legacy=_is_legacy_demo)
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    try:
        out.mkdir(parents=True)
        write_marker(out, "demo")
        echo(f"[1/3] building a phantom benchmark in {out / 'benchmark'} ...")
        bench_opts = {**DEMO_BENCHMARK, **(benchmark_overrides or {})}
        summary = build_benchmark(out / "benchmark", workers=2, progress=True, **bench_opts)
        counts = ", ".join(f"{s} {c['slices']}" for s, c in summary["splits"].items())
        echo(f"      {summary['cases']} phantom cases -> slices: {counts} ({summary['seconds']:.0f} s)")
        echo(f"[2/3] training bi-level in {out / 'run'} ...")
        result = train(config)
        echo(format_train_summary(result))
        echo("[3/3] evaluating on the test split ...")
        metrics = evaluate_run(out / "run", split="test", compare_untrained=True)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    echo("")
    echo(format_summary(metrics))
    echo("")
    echo(f"report: {out / 'run' / 'eval' / 'report.md'} (gallery: {out / 'run' / 'eval' / 'gallery.png'})")
    echo(f"TensorBoard logs: tensorboard --logdir {out / 'run' / 'tb'}")
    echo(f"demo finished in {time.perf_counter() - started:.0f} s")
    metrics["demo_seconds"] = time.perf_counter() - started
    return metrics
