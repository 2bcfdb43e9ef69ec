"""The study: every way of feeding the modalities to a segmenter, rows x seeds, on one phantom release.

One command runs the grid and writes the tables and plots:

    python experiments/study.py                       # the grid of experiments/study.toml, 2 jobs
    python experiments/study.py --only bilevel direct-dual --seeds 5
    python experiments/study.py --scale large         # more cases, 128 x 128 slices (for a GPU)
    python experiments/study.py --report-only         # re-aggregate finished runs

Each (row, seed) is a sequence of ``fuse4seg`` commands run as subprocesses, one CPU thread each,
``--jobs`` of them at a time: ``train`` (options from the row's table), ``evaluate`` on the test
split, and for rows with ``retrain = true`` the usual protocol after bi-level search:
``build-benchmark --fusion-checkpoint RUN/best.pt`` (the learned fusion, frozen, stored as the
benchmark's fused image) and ``train --mode direct --inputs fused`` from scratch on it, also
evaluated. A finished (row, seed) leaves OUT/results/ROW/seed-S.json and is skipped next time,
so an interrupted study resumes. The aggregate (experiments/study_report.py) writes
experiments/results/study.{md,json} and one learning-curve PNG per row, and copies every run's
record to experiments/results/study_runs/, where a later invocation (another session, a fresh
clone) finds it and does not train that (row, seed) again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: Where the aggregate copies every finished run's record; a run found there is not trained again.
COMMITTED = HERE / "results"
REGIONS = ("WT", "TC", "ET")
#: Options of a row that the runner reads itself; all others go to ``fuse4seg train``.
RUNNER_KEYS = ("benchmark", "retrain", "seeds", "note", "reference", "against", "analysis")


def fuse4seg(*args: str, log: Path) -> None:
    """Run ``python -m fuse4seg ARGS`` with one CPU thread, appending output to ``log``; raise on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("a", encoding="utf-8") as fh:
        fh.write("$ fuse4seg " + " ".join(args) + "\n")
        fh.flush()
        done = subprocess.run([sys.executable, "-m", "fuse4seg", *args], stdout=fh, stderr=subprocess.STDOUT,
                              env=env, check=False)
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8").strip().splitlines()[-1:]
        raise RuntimeError(f"fuse4seg {args[0]} failed (exit {done.returncode}): {' '.join(tail)}")


def as_list(value: str | list[str]) -> str:
    """Comma-separated text of a TOML string or list of names."""
    return value if isinstance(value, str) else ",".join(value)


def write_toml(path: Path, options: dict[str, Any]) -> None:
    """Write a flat TOML table of training options (strings, numbers, booleans, inline tables)."""
    def value(v: Any) -> str:
        """One TOML value."""
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))
    path.write_text("".join(f"{k} = {value(v)}\n" for k, v in options.items()), encoding="utf-8")


def prepare_data(spec: dict[str, Any], out: Path, log: Path) -> dict[str, Path]:
    """Write the phantom release once (seed: [data] release_seed, else seed) and one benchmark per fusion rule in
    the spec; returns rule -> dir."""
    data = spec["data"]
    release = out / "release"
    if not (release / ".complete").is_file():
        fuse4seg("phantom", "--out", str(release), "--cases", str(data["cases"]), "--scale", str(data["scale"]),
                 "--seed", str(data.get("release_seed", data["seed"])), "--workers", "2", "--overwrite", log=log)
        (release / ".complete").write_text("", encoding="utf-8")
    benches = {}
    for rule in data["fusion_rules"]:
        bench = out / f"bench-{rule}"
        if not (bench / "brats_fuse.h5").is_file():
            fuse4seg("build-benchmark", "--brats", str(release), "--out", str(bench), "--fusion", rule,
                     "--size", str(data["size"]), "--slices-per-case", str(data["slices_per_case"]),
                     "--split", ",".join(str(x) for x in data["split"]), "--seed", str(data["seed"]),
                     "--workers", "2", "--overwrite", log=log)
        benches[rule] = bench
    return benches


def read_curve(run: Path) -> list[list[float]]:
    """[[step, val Dice mean], ...] from the run's TensorBoard log (every --eval-every steps)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    if "val/dice_mean" not in acc.Tags().get("scalars", []):
        return []
    return [[int(e.step), float(e.value)] for e in acc.Scalars("val/dice_mean")]


def scores(run: Path) -> dict[str, Any]:
    """Test-split scores of an evaluated run: Dice/HD95 per slice, Dice per case, fusion metrics."""
    m = json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))
    # 2-D runs: per-slice Dice; 3-D runs (evaluated on whole volumes) have per-case Dice only.
    per_slice = m["segmentation"].get("per_slice") or m["segmentation"]["per_case"]
    out: dict[str, Any] = {
        "dice": {r: per_slice[r]["dice"] for r in REGIONS},
        "hd95": {r: per_slice[r]["hd95"] for r in REGIONS},
        "case_dice": {case: {r: v[r]["dice"] for r in REGIONS} for case, v in sorted(m["per_case"].items())},
        "fusion": m["fusion"].get("learned") if m.get("fusion") else None,
        # the package's own fused image (the rule the benchmark was built with), scored on the same slices
        "fusion_stored": m["fusion"].get("benchmark_stored") if m.get("fusion") else None,
        "curve": read_curve(run),
    }
    out["dice"]["mean"] = sum(out["dice"][r] for r in REGIONS) / len(REGIONS)
    summary = json.loads((run / "train_summary.json").read_text(encoding="utf-8"))
    out.update(steps=summary["steps"], train_s=summary["seconds"], best_step=summary["best_step"])
    return out


def row_options(row: dict[str, Any], common: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``fuse4seg train`` options of a row: [common] (or ``common``), [common_fusion] for the modes that
    train a fusion net, then the row's own (the runner's keys left out)."""
    fusion = SPEC.get("common_fusion", {}) if row.get("mode") in SPEC["fusion_modes"] else {}
    return {**(SPEC["common"] if common is None else common), **fusion,
            **{k: v for k, v in row.items() if k not in RUNNER_KEYS}}


def build_learned(checkpoint: Path, options: dict[str, Any], release: Path, bench: Path, log: Path,
                  split: list[float] | None = None) -> Path:
    """BENCH: the release's slices fused by the frozen fusion net of ``checkpoint`` (the study's slices, size and
    seed; its split unless ``split`` is given), as ``build-benchmark --fusion-checkpoint`` writes it."""
    data = SPEC["data"]
    fuse4seg("build-benchmark", "--brats", str(release), "--out", str(bench), "--fusion-checkpoint", str(checkpoint),
             "--fusion-inputs", as_list(options.get("fusion_inputs", "t1ce,flair")),
             "--size", str(data["size"]), "--slices-per-case", str(data["slices_per_case"]),
             "--split", ",".join(str(x) for x in split or data["split"]), "--seed", str(data["seed"]),
             "--overwrite", log=log)
    return bench


def retrain(checkpoint: Path, options: dict[str, Any], extra: dict[str, Any], seed: int, work: Path, out: Path,
            log: Path, tag: str = "", common: dict[str, Any] | None = None) -> dict[str, Any]:
    """Segmentability of a learned fusion: its image, frozen, stored as a benchmark of the study's slices and
    split (WORK/bench-learned{tag}), a segmenter trained on it from scratch at the retrain budget
    (WORK/retrain{tag}; the options ``common`` (default [common]), then [retrain], then ``extra``), and that
    segmenter's test scores."""
    rebench = work / f"bench-learned{tag}"
    build_learned(checkpoint, options, out / "release", rebench, log)
    retrain_opts = {**(SPEC["common"] if common is None else common), **SPEC.get("retrain", {}), **extra,
                    "mode": "direct", "inputs": "fused"}
    write_toml(work / f"retrain{tag}.toml", retrain_opts)
    rerun = work / f"retrain{tag}"
    fuse4seg("train", "--config", str(work / f"retrain{tag}.toml"), "--benchmark", str(rebench), "--out", str(rerun),
             "--seed", str(seed), "--overwrite", log=log)
    fuse4seg("evaluate", "--run", str(rerun), "--split", "test", log=log)
    return scores(rerun)


def run_one(name: str, row: dict[str, Any], seed: int, common: dict[str, Any], benches: dict[str, Path],
            out: Path) -> Path:
    """Train, evaluate (and retrain) one (row, seed); writes and returns OUT/results/NAME/seed-S.json."""
    result = out / "results" / name / f"seed-{seed}.json"
    committed = COMMITTED / f"study{'' if out.name == 'small' else '_' + out.name}_runs" / name / result.name
    if not result.is_file() and committed.is_file():  # finished in an earlier session: its committed record
        result.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(committed, result)
    if result.is_file():
        recorded = json.loads(result.read_text(encoding="utf-8")).get("options")
        if recorded != row_options(row, common):
            print(f"warning: {name} seed {seed}: its record was made with other options than study.toml's now; "
                  f"delete {result} (and its committed copy) to run it again", file=sys.stderr)
        return result
    work = out / "runs" / name / f"seed-{seed}"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    log.write_text("", encoding="utf-8")
    bench = benches[row.get("benchmark", "laplacian")]
    options = row_options(row, common)
    write_toml(work / "options.toml", options)
    started = time.perf_counter()
    run = work / "run"
    fuse4seg("train", "--config", str(work / "options.toml"), "--benchmark", str(bench), "--out", str(run),
             "--seed", str(seed), "--overwrite", log=log)
    fuse4seg("evaluate", "--run", str(run), "--split", "test", log=log)
    record: dict[str, Any] = {"row": name, "seed": seed, "options": options, **scores(run)}
    if row.get("retrain"):
        extra = row["retrain"] if isinstance(row["retrain"], dict) else {}
        record["retrained"] = retrain(run / "best.pt", options, extra, seed, work, out, log, common=common)
    record["wall_s"] = round(time.perf_counter() - started, 1)
    write_record(result, record)
    return result


def write_record(path: Path, record: dict[str, Any]) -> None:
    """A run's JSON record, written atomically (a resumed experiment never reads a half-written one)."""
    from fuse4seg.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


SPEC: dict[str, Any] = {}


def sync_committed(results: Path, committed: Path) -> None:
    """Copy into RESULTS every committed record it lacks, so that the report covers every row ever run."""
    for path in committed.glob("*/seed-*.json"):
        target = results / path.parent.name / path.name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def run_all(fn: Callable[..., Any], jobs: list[tuple], workers: int) -> list[Any]:
    """``fn(*job)`` for every job, ``workers`` at a time (threads, each driving its fuse4seg subprocesses); the
    results in job order; the first failure raises once the running jobs are done."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [future.result() for future in [pool.submit(fn, *job) for job in jobs]]


def run_grid(fn: Callable[..., Any], jobs: list[tuple], workers: int, label: Callable[[tuple], str]) -> list[str]:
    """``fn(*job)`` for every job, ``workers`` at a time, going on past a failed job: prints
    "[i/n] LABEL: ok|FAILED (elapsed)" as each job ends (in job order) and returns the failures as
    "LABEL: reason" lines, for the caller to list at the end and to set its exit status."""
    failures, started = [], time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        for i, (job, future) in enumerate(zip(jobs, futures, strict=True), 1):
            try:
                future.result()
                status = "ok"
            except (RuntimeError, OSError, ValueError, KeyError) as exc:  # listed at the end; the grid goes on
                failures.append(f"{label(job)}: {exc}")
                status = "FAILED"
            print(f"[{i}/{len(jobs)}] {label(job)}: {status} ({time.perf_counter() - started:.0f} s)", flush=True)
    return failures


def finish_report(results: Path, name: str, summary: dict[str, Any], text: str, failures: list[str]) -> int:
    """Write RESULTS/NAME.md (``text``) and RESULTS/NAME.json (``summary``), print the tables, list the failed jobs on
    stderr; the exit status (1 if any job failed)."""
    from fuse4seg.io import atomic_write_text

    atomic_write_text(results / f"{name}.md", text)
    atomic_write_text(results / f"{name}.json", json.dumps(summary, indent=1) + "\n")
    print(text)
    for line in failures:
        print("failed:", line, file=sys.stderr)
    return 1 if failures else 0


def load_spec(path: Path, scale: str) -> dict[str, Any]:
    """The study spec with the chosen data scale's table merged into [data]."""
    spec = tomllib.loads(path.read_text(encoding="utf-8"))
    spec["data"] = {**spec["data"], **spec.get("scale", {}).get(scale, {})}
    return spec


def experiment_args(spec: Path, description: str, argv: list[str] | None = None) -> tuple[argparse.Namespace,
                                                                                            dict[str, Any], Path]:
    """The shared command line of the experiments that reuse this runner on the study's data (robustness.py,
    dims.py): (arguments, spec loaded into :data:`SPEC`, OUT/small created)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--spec", type=Path, default=spec)
    parser.add_argument("--out", type=Path, default=Path("runs/study"), help="shared with the study (same data)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    parser.add_argument("--report-only", action="store_true", help="aggregate the committed records, train nothing")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where the tables and plots go")
    args = parser.parse_args(argv)
    SPEC.clear()
    SPEC.update(tomllib.loads(args.spec.read_text(encoding="utf-8")))
    out = args.out / "small"
    out.mkdir(parents=True, exist_ok=True)
    return args, SPEC, out


def main(argv: list[str] | None = None) -> int:
    """Run the grid (resuming), then aggregate; exit 1 if any (row, seed) failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=HERE / "study.toml")
    parser.add_argument("--out", type=Path, default=Path("runs/study"))
    parser.add_argument("--jobs", type=int, default=2, help="(row, seed) pairs run at once, one thread each")
    parser.add_argument("--only", nargs="*", help="rows to run, in this order (default: all, in the spec's order)")
    parser.add_argument("--seeds", type=int, help="seeds per row (default: the row's, else the spec's)")
    parser.add_argument("--scale", default="small", help="data scale table of the spec: small or large")
    parser.add_argument("--report-only", action="store_true", help="aggregate finished runs, train nothing")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where the tables and plots go")
    args = parser.parse_args(argv)
    SPEC.update(load_spec(args.spec, args.scale))
    out = args.out / args.scale
    out.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(args.only or ()) - set(SPEC["rows"]))
    if unknown:
        parser.error(f"--only: no row named {', '.join(unknown)} in {args.spec}")
    rows = {k: SPEC["rows"][k] for k in args.only} if args.only else SPEC["rows"]  # --only: in the order given
    failures = []
    if not args.report_only:
        benches = prepare_data(SPEC, out, out / "data_log.txt")
        jobs = [(name, row, seed, SPEC["common"], benches, out) for name, row in rows.items()
                for seed in range(args.seeds or row.get("seeds", SPEC["seeds"]))]
        failures = run_grid(run_one, jobs, args.jobs, lambda job: f"{job[0]} seed {job[2]}")
    from study_report import write_report

    sync_committed(out / "results", COMMITTED / f"study{'' if args.scale == 'small' else '_' + args.scale}_runs")
    suffix = "" if args.scale == "small" else f"_{args.scale}"
    tables = write_report(out / "results", SPEC, args.results, suffix)
    print(tables)
    for line in failures:
        print("failed:", line, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
