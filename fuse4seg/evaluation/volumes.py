"""``fuse4seg evaluate --volumes``: a run scored on whole BraTS volumes, as the leaderboards score them.

The benchmark holds K sampled slices per case; BraTS scores whole (X, Y, Z) volumes. For every case of
the benchmark's split (its patients), the case is read from the release directory by
:mod:`fuse4seg.data.release.brats` (the reading and normalisation of ``build-benchmark``), the trained pipeline
runs on every axial slice with the benchmark's crop/resize applied and inverted
(:func:`fuse4seg.inference.fuse.predict_case`, as ``fuse4seg fuse``), and the whole prediction is
scored against the release's seg file under a named convention by
:func:`fuse4seg.metrics.scoring.case_scores`, the scorer of ``fuse4seg score`` (spacing from the NIfTI
header, mm). Outputs, written atomically to RUN/eval-volumes-SPLIT/: metrics.json (``score``'s JSON
layout plus the run's facts), scores.csv (one row per case and region), report.md (leaderboard
summary: mean, sd, median, quartiles; then one row per case) and, with ``write_seg``,
seg/<case id>.nii.gz in the release's label scheme, a BraTS submission that ``fuse4seg score`` rescores
to the same values.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from fuse4seg.conventions import REGIONS
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import atomic_dir
from fuse4seg.metrics.conventions import DEFAULT_CHALLENGE, DEFAULT_CONVENTION

#: Metrics shown per case in report.md when the convention defines them.
_CASE_COLUMNS: tuple[str, ...] = ("dice", "hd95", "lesion_dice", "lesion_hd95")


def out_dir(run: str | Path, split: str) -> Path:
    """RUN/eval-volumes-SPLIT: where a whole-volume evaluation of RUN on SPLIT is written."""
    return Path(run) / f"eval-volumes-{split}"


def split_cases(volumes: str | Path, case_ids: list[str]) -> list[Any]:
    """The release's CaseFiles of ``case_ids`` (in that order); DataError naming the first one missing."""
    from fuse4seg.data.release.brats import find_cases

    found = {c.case_id: c for c in find_cases(volumes)}
    missing = [c for c in case_ids if c not in found]
    if missing:
        raise DataError(f"{missing[0]}: a case of the evaluated split is not in {volumes} "
                        f"({len(missing)} of {len(case_ids)} missing); pass the release the benchmark was built from")
    return [found[c] for c in case_ids]


def _cell(value: float | None, metric: str) -> str:
    """A report cell: 4 decimals for Dice-like scores, 2 for distances (mm) and lesion counts, '-' for null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if "hd95" in metric or metric in ("tp", "fp", "fn") else f"{value:.4f}"


def report_markdown(result: dict[str, Any]) -> str:
    """report.md of a whole-volume evaluation: header facts, the leaderboard summary, one row per case."""
    from fuse4seg.metrics.conventions import METRICS

    convention = result["convention"]
    lines = [f"# Whole-volume evaluation of {result['run']}", "",
             f"- checkpoint {result['checkpoint']} (step {result['step']}), {result['mode']} mode",
             (f"- split {result['split']} of {result['benchmark']}: {len(result['cases'])} cases read from "
              f"{result['volumes']}"),
             (f"- convention `{convention}` (challenge {result['challenge']}); HD95 in mm; every axial slice "
              f"predicted, the benchmark's crop/resize inverted"), f"- {result['seconds']:.1f} s", "",
             "## Leaderboard summary", "", "| region | metric | mean | sd | median | q25 | q75 |",
             "|---|---|---|---|---|---|---|"]
    for region in REGIONS:
        for metric in METRICS[convention]:
            s = result["summary"][region][metric]
            lines.append(f"| {region} | {metric} | " + " | ".join(_cell(s[k], metric) for k in
                                                                 ("mean", "sd", "median", "q25", "q75")) + " |")
    columns = [m for m in _CASE_COLUMNS if m in METRICS[convention]]
    lines += ["", "## Per case", "",
              "| case | " + " | ".join(f"{m} {r}" for m in columns for r in REGIONS) + " |",
              "|---" * (1 + len(columns) * len(REGIONS)) + "|"]
    for case in result["cases"]:
        cells = (_cell(case["regions"][r][m], m) for m in columns for r in REGIONS)
        lines.append(f"| {case['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_seg(path: Path, labels: np.ndarray, case: Any) -> None:
    """Canonical (X, Y, Z) labels as a uint8 NIfTI in the case's release scheme, with its affine and header."""
    from fuse4seg.data.release.brats import from_canonical_labels

    img = nib.Nifti1Image(from_canonical_labels(labels, case.scheme).astype(np.uint8), case.affine,
                          header=case.header.copy())
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, path)


def evaluate_volumes(run: str | Path, volumes: str | Path, split: str = "test", convention: str = DEFAULT_CONVENTION,
                     challenge: str = DEFAULT_CHALLENGE, benchmark: str | Path | None = None, checkpoint: str = "best",
                     device: str = "cpu", write_seg: bool = False, progress: bool = True) -> dict[str, Any]:
    """Score RUN on the whole volumes of the split's cases in the release ``volumes``; writes
    RUN/eval-volumes-SPLIT/{metrics.json,scores.csv,report.md[,seg/]}; returns the metrics (NaN as None)."""
    from tqdm import tqdm

    from fuse4seg.data.release.brats import load_case
    from fuse4seg.evaluation.common import check_benchmark_matches
    from fuse4seg.inference.fuse import predict_case
    from fuse4seg.metrics.conventions import check_challenge, check_convention
    from fuse4seg.metrics.scoring import case_scores, csv_text, nulls, summarise
    from fuse4seg.runkit.benchmark import open_split
    from fuse4seg.train.run import load_run, require_segmenter

    convention, challenge = check_convention(convention), check_challenge(challenge)
    if not Path(volumes).is_dir():
        raise ConfigError(f"{volumes} is not a directory", option="volumes")
    started = time.perf_counter()
    config, pipeline, state = load_run(run, checkpoint, device)
    require_segmenter(run, config, "evaluate --volumes")
    dev = next(pipeline.seg.parameters()).device
    bench = Path(benchmark) if benchmark is not None else Path(config.benchmark)
    if benchmark is not None and bench.resolve() != Path(config.benchmark).resolve():
        check_benchmark_matches(run, config, bench)
    case_ids = open_split(bench, split).case_ids
    if not case_ids:
        raise DataError(f"{bench}: split {split!r} has no cases")
    cases = split_cases(volumes, case_ids)
    rows = []
    with atomic_dir(out_dir(run, split), "eval", overwrite=True, option=None) as tmp:
        if write_seg:
            (tmp / "seg").mkdir()
        for files in tqdm(cases, desc="volumes", unit="case", disable=not progress, leave=False):
            case = load_case(files, require_label=True)
            _, labels = predict_case(run, config, pipeline, case, dev)
            zooms = tuple(float(z) for z in case.header.get_zooms()[:3])
            rows.append(case_scores(case.case_id, labels, case.label, zooms, convention, challenge))
            if write_seg:
                _write_seg(tmp / "seg" / f"{case.case_id}.nii.gz", labels, case)
            del case
        result = nulls({
            "run": str(run), "checkpoint": checkpoint, "step": int(state["step"]), "mode": config.mode,
            "split": split, "benchmark": str(bench), "volumes": str(volumes), "convention": convention,
            "challenge": challenge, "hd95_unit": "mm", "cases": rows, "summary": summarise(rows, convention),
            "seconds": round(time.perf_counter() - started, 3)})
        assert isinstance(result, dict)
        (tmp / "metrics.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        (tmp / "scores.csv").write_text(csv_text(result["cases"]), encoding="utf-8")
        (tmp / "report.md").write_text(report_markdown(result), encoding="utf-8")
    return result
