"""Score a directory of BraTS predictions against a release under a named convention (``fuse4seg score``).

Predictions use the BraTS submission naming: one ``<case id>.nii.gz`` (or ``.nii``) per case of the
release, labels in the release's scheme (2020/2021: 1, 2, 4; 2023+: 1, 2, 3). Cases are found, read
and mapped to canonical labels by :mod:`fuse4seg.data.release.brats`; voxel spacing is the truth file's.
A missing or extra prediction, a shape or affine mismatch with the truth, or a label outside the
scheme stops everything with a DataError naming the case. The result (written atomically as JSON
and as a CSV next to it, NaN as null / empty) is::

    {"convention", "challenge",
     "cases": [{"case": ID, "regions": {"WT": {"dice", "hd95", "lesion_dice", "lesion_hd95", "tp", "fp",
                                               "fn", "f1", "sensitivity", "specificity"}, "TC": ..., "ET": ...}}],
     "summary": {region: {metric: {"mean", "sd", "median", "q25", "q75"}}}}

Every field is present for every convention; those a convention does not define
(:data:`fuse4seg.metrics.conventions.METRICS`) are null. The summary covers the convention's metrics
over the cases where they are not NaN (brats2025 leaves cases with both masks empty out); sd is the
sample standard deviation (n - 1, as pandas and brats-evaluation's parser), quartiles by linear
interpolation.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuse4seg.conventions import REGIONS
from fuse4seg.data.release.brats import (
    AFFINE_ATOL_MM,
    CaseFiles,
    _load_volume,
    find_cases,
    to_canonical_labels,
)
from fuse4seg.errors import ConfigError, DataError
from fuse4seg.io import atomic_path, check_replaceable, csv_cell, file_output
from fuse4seg.metrics.conventions import METRICS, check_challenge, check_convention
from fuse4seg.metrics.options import ScoreOptions
from fuse4seg.metrics.segmentation import segmentation_metrics

#: Per region and case, in output order (JSON keys, CSV columns).
SCORE_FIELDS: tuple[str, ...] = ("dice", "hd95", "lesion_dice", "lesion_hd95", "tp", "fp", "fn", "f1",
                                 "sensitivity", "specificity")
SUMMARY_STATS: tuple[str, ...] = ("mean", "sd", "median", "q25", "q75")
_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")


@dataclass(frozen=True)
class ScoreJob:
    """One case to score: the release's files (with ``seg``), the prediction file, the convention and challenge."""

    case: CaseFiles
    prediction: Path
    convention: str
    challenge: str


def _prediction_files(pred_dir: Path) -> dict[str, Path]:
    """Case id -> prediction file of every ``.nii.gz`` / ``.nii`` file in ``pred_dir`` (hidden files ignored)."""
    if not pred_dir.is_dir():
        raise DataError(f"prediction directory {pred_dir} does not exist or is not a directory")
    found: dict[str, Path] = {}
    for path in sorted(pred_dir.iterdir()):
        ext = next((e for e in _EXTENSIONS if path.name.endswith(e)), None)
        if ext is None or path.name.startswith(".") or not path.is_file():
            continue
        case_id = path.name[:-len(ext)]
        if case_id in found:
            raise DataError(f"{case_id}: both {found[case_id].name} and {path.name} are in {pred_dir}; keep one")
        found[case_id] = path
    return found


def pair_predictions(pred_dir: str | Path, truth_dir: str | Path) -> list[tuple[CaseFiles, Path]]:
    """Each release case (sorted by id) with its prediction file; DataError for a missing or extra one."""
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    cases = find_cases(truth_dir)
    preds = _prediction_files(pred_dir)
    ids = {c.case_id for c in cases}
    extra = sorted(set(preds) - ids)
    if extra:
        raise DataError(f"{extra[0]}: prediction {preds[extra[0]].name} matches no case of {truth_dir}")
    pairs = []
    for case in cases:
        if case.case_id not in preds:
            raise DataError(f"{case.case_id}: prediction {case.case_id}.nii.gz is missing from {pred_dir}")
        if "seg" not in case.paths:
            raise DataError(f"{case.case_id}: the release has no seg file for this case, so it cannot be scored")
        pred = preds[case.case_id]
        same = next((f for f in case.paths.values() if pred.resolve() == Path(f).resolve()), None)
        if same is not None:
            raise DataError(f"{case.case_id}: prediction {pred} is the release's own file {same} (a link to it); "
                            "scoring it would measure the truth against itself")
        pairs.append((case, pred))
    return pairs


def _read_pair(job: ScoreJob) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(canonical prediction, canonical truth, spacing in mm) of one case, validated against each other."""
    case = job.case
    files = CaseFiles(case.case_id, case.scheme, case.directory, {"seg": case.paths["seg"], "prediction": job.prediction})
    truth_img, truth = _load_volume(files, "seg")
    pred_img, pred = _load_volume(files, "prediction")
    name = job.prediction.name
    if pred.shape != truth.shape:
        raise DataError(f"{case.case_id}: prediction {name} has shape {pred.shape}, the truth seg has {truth.shape}")
    if not np.allclose(pred_img.affine, truth_img.affine, rtol=0.0, atol=AFFINE_ATOL_MM):
        diff = float(np.abs(pred_img.affine - truth_img.affine).max())
        raise DataError(f"{case.case_id}: prediction {name} has a different affine from the truth seg "
                        f"(max difference {diff:.4g} mm)")
    labels = []
    for what, volume in ((f"prediction {name}", pred), (f"seg file {case.paths['seg'].name}", truth)):
        try:
            labels.append(to_canonical_labels(volume, case.scheme))
        except DataError as exc:
            raise DataError(f"{case.case_id}: {what}: {exc}") from None
    zooms = truth_img.header.get_zooms()[:3]
    return labels[0], labels[1], (float(zooms[0]), float(zooms[1]), float(zooms[2]))


def case_scores(case_id: str, pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float],
                convention: str, challenge: str) -> dict:
    """{"case": id, "regions": {region: {field: value}}} of canonical (X, Y, Z) label volumes, spacing in mm;
    every :data:`SCORE_FIELDS` present, NaN where the convention does not define it."""
    metrics = segmentation_metrics(pred, truth, spacing, convention=convention, challenge=challenge)
    regions = {region: {field: metrics[region].get(field, math.nan) for field in SCORE_FIELDS}
               for region in REGIONS}
    return {"case": case_id, "regions": regions}


def score_case(job: ScoreJob) -> dict:
    """:func:`case_scores` of one prediction file against its truth; DataError on bad input."""
    pred, truth, spacing = _read_pair(job)
    return case_scores(job.case.case_id, pred, truth, spacing, job.convention, job.challenge)


def _scored_in_order(jobs: list[ScoreJob], workers: int, progress: bool) -> Iterator[dict]:
    """Yield :func:`score_case` results in case order, computed by ``workers`` processes."""
    from fuse4seg.parallel import ordered_map

    return ordered_map(score_case, jobs, workers, desc="scoring", progress=progress,
                       preload=("fuse4seg.metrics.scoring",))


def _stats(values: list[float]) -> dict[str, float]:
    """mean, sample sd, median, q25, q75 of the non-NaN ``values`` (NaN where there are too few)."""
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return dict.fromkeys(SUMMARY_STATS, math.nan)
    q25, median, q75 = np.percentile(arr, [25, 50, 75])
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
            "median": float(median), "q25": float(q25), "q75": float(q75)}


def summarise(cases: list[dict], convention: str) -> dict[str, dict[str, dict[str, float]]]:
    """{region: {metric: {"mean", "sd", "median", "q25", "q75"}}} over cases for the convention's metrics."""
    return {region: {metric: _stats([float(c["regions"][region][metric]) for c in cases])
                     for metric in METRICS[convention]} for region in REGIONS}


def nulls(value: object) -> object:
    """``value`` with every NaN float replaced by None (JSON null), recursively; numpy numbers as Python ones."""
    if isinstance(value, dict):
        return {k: nulls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nulls(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _csv_header() -> list[str]:
    """The header row of the per-case CSV."""
    return ["case", "region", *SCORE_FIELDS]


def csv_text(cases: list[dict]) -> str:
    """One CSV row per case x region: case, region, then :data:`SCORE_FIELDS` (NaN as an empty cell)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_csv_header())
    for case in cases:
        for region, values in case["regions"].items():
            writer.writerow([csv_cell(case["case"]), csv_cell(region),
                             *("" if values[f] is None else values[f] for f in SCORE_FIELDS)])
    return buffer.getvalue()


def score_directory(pred: str | Path, truth: str | Path, out: str | Path, convention: str, challenge: str = "gli",
                    workers: int = 1, progress: bool = True, overwrite: bool = False) -> dict:
    """Score every case of the release ``truth`` against ``pred``; writes ``out`` (.json) and its .csv; returns the JSON.

    ``convention``: monai, brats2023 or brats2025; ``challenge``: gli, ssa, ped, men or met (the
    brats2023 lesion-wise settings; recorded for every convention). An existing ``out`` is replaced only
    with ``overwrite`` and only when fuse4seg wrote it.
    """
    convention, challenge = check_convention(convention), check_challenge(challenge)
    if int(workers) < 1:
        raise ConfigError(f"must be at least 1, got {workers}", option="workers")
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise ConfigError(f"must be a .json file (the .csv is written next to it), got {str(out)!r}", option="out")
    companion = (out.with_suffix(".csv"), ",".join(_csv_header()))  # replaced only when it is our CSV
    check_replaceable(out, overwrite, {"convention", "cases"}, companions=(companion,))
    pairs = pair_predictions(pred, truth)
    with file_output(out, companion[0]):  # one writer: a second run on ``out`` is refused at once
        check_replaceable(out, overwrite, {"convention", "cases"}, companions=(companion,))  # now under the lock
        jobs = [ScoreJob(case, path, convention, challenge) for case, path in pairs]
        cases = list(_scored_in_order(jobs, int(workers), progress))
        result = nulls({"convention": convention, "challenge": challenge, "cases": cases,
                         "summary": summarise(cases, convention)})
        assert isinstance(result, dict)
        with atomic_path(out) as tmp_json, atomic_path(companion[0]) as tmp_csv:
            tmp_csv.write_text(csv_text(result["cases"]), encoding="utf-8")
            tmp_json.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return result


def summary_lines(result: dict) -> list[str]:
    """Terminal lines of a scoring result: the convention, case count, and per region the means of its main metrics."""
    metrics = [m for m in ("dice", "hd95", "lesion_dice", "lesion_hd95", "f1") if m in METRICS[result["convention"]]]
    head = (f"scored {len(result['cases'])} cases ({result['convention']} convention, challenge "
            f"{result['challenge']}); mean over cases:")
    lines = [head, f"{'region':<7}" + "".join(f"{m:>13}" for m in metrics)]
    for region, stats in result["summary"].items():
        cells = ("n/a" if stats[m]["mean"] is None else f"{stats[m]['mean']:.4f}" for m in metrics)
        lines.append(f"{region:<7}" + "".join(f"{c:>13}" for c in cells))
    return lines


def format_score_summary(result: dict, out: str | Path) -> str:
    """:func:`summary_lines` and the files ``fuse4seg score`` wrote."""
    lines = summary_lines(result)
    out = Path(out)
    lines.append(f"wrote {out} and {out.with_suffix('.csv')}")
    return "\n".join(lines)


def score_from_options(options: ScoreOptions) -> dict:
    """``fuse4seg score``: :func:`score_directory` with the command's declared options."""
    o = options
    return score_directory(o.pred, o.truth, o.out, convention=o.convention, challenge=o.challenge, workers=o.workers,
                           overwrite=o.overwrite)
