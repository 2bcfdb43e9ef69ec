"""``fuse4seg evaluate --volumes``: whole-volume scores equal the independent references, on phantom releases of
every BraTS naming, and ``fuse4seg score`` rescores the written submission to the same values."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _scoring_refs import REGIONS, brats2023_reference, panoptica_evaluator, panoptica_scores

from fuse4seg.cli import main

TRAIN = ["--mode", "joint", "--steps", "1", "--seg-width", "4", "--seg-depth", "2", "--fusion-width", "4",
         "--batch-size", "2", "--eval-slices", "2", "--no-progress"]
#: Release label value -> canonical, written out here rather than taken from fuse4seg.
CANONICAL = {"brats2020": {0: 0, 1: 1, 2: 2, 4: 3}, "brats2021": {0: 0, 1: 1, 2: 2, 4: 3},
             "brats2023": {0: 0, 1: 1, 2: 2, 3: 3}}
SEG_SUFFIX = {"brats2020": "_seg", "brats2021": "_seg", "brats2023": "-seg"}
FIELDS = ("dice", "hd95", "lesion_dice", "lesion_hd95", "tp", "fp", "fn")


@pytest.fixture(scope="module", params=["brats2020", "brats2021", "brats2023"])
def evaluated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 6-case phantom release in one naming, a 48 px benchmark of it, a 1-step joint run, and its
    ``evaluate --volumes --write-seg`` under brats2023 (metrics.json as a dict)."""
    naming = request.param
    root = tmp_path_factory.mktemp(f"volumes-{naming}")
    release, bench, run = root / "release", root / "bench", root / "run"
    assert main(["phantom", "--out", str(release), "--cases", "6", "--naming", naming, "--scale", "0.25"]) == 0
    assert main(["build-benchmark", "--out", str(bench), "--brats", str(release), "--size", "48",
                 "--slices-per-case", "3", "--split", "0.34,0.33,0.33"]) == 0
    assert main(["train", "--benchmark", str(bench), "--out", str(run), *TRAIN]) == 0
    assert main(["evaluate", "--run", str(run), "--volumes", str(release), "--write-seg"]) == 0
    metrics = json.loads((run / "eval-volumes-test" / "metrics.json").read_text())
    return {"naming": naming, "release": release, "bench": bench, "run": run, "metrics": metrics}


def read_canonical(path: Path, naming: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(canonical labels, voxel size in mm) of a seg NIfTI, mapped with the table above."""
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.int64)
    lut = np.zeros(data.max() + 1, np.uint8)
    for value, canonical in CANONICAL[naming].items():
        if value <= data.max():
            lut[value] = canonical
    assert set(np.unique(data)) <= set(CANONICAL[naming]), path
    return lut[data], tuple(float(z) for z in img.header.get_zooms()[:3])


def region(labels: np.ndarray, name: str) -> np.ndarray:
    """Boolean mask of a BraTS region of canonical labels."""
    return np.isin(labels, REGIONS[name])


@pytest.mark.slow
def test_scores_equal_the_2023_reference_on_every_naming(evaluated: dict) -> None:
    naming, release, run, metrics = (evaluated[k] for k in ("naming", "release", "run", "metrics"))
    assert (metrics["convention"], metrics["challenge"], metrics["split"]) == ("brats2023", "gli", "test")
    assert len(metrics["cases"]) == 2  # 6 cases split 0.34/0.33/0.33
    for case in metrics["cases"]:
        cid = case["case"]
        pred, spacing = read_canonical(run / "eval-volumes-test" / "seg" / f"{cid}.nii.gz", naming)
        truth, truth_spacing = read_canonical(release / cid / f"{cid}{SEG_SUFFIX[naming]}.nii.gz", naming)
        assert pred.shape == truth.shape and spacing == truth_spacing
        brain = np.zeros(truth.shape, bool)  # every modality file of the case: background is exactly 0
        for path in (release / cid).iterdir():
            if SEG_SUFFIX[naming] not in path.name:
                brain |= np.asarray(nib.load(path).dataobj) > 0
        assert not pred[~brain].any(), "labels outside the brain"
        for name in REGIONS:
            ref = brats2023_reference(region(pred, name), region(truth, name), spacing, dilation=3, threshold=50.0)
            for field in FIELDS:
                assert case["regions"][name][field] == pytest.approx(ref[field], abs=1e-4), (cid, name, field)
    dice = [c["regions"]["WT"]["dice"] for c in metrics["cases"]]
    summary = metrics["summary"]["WT"]["dice"]
    assert summary["mean"] == pytest.approx(np.mean(dice), abs=1e-12)
    assert summary["sd"] == pytest.approx(np.std(dice, ddof=1), abs=1e-12)
    assert summary["q25"] == pytest.approx(np.percentile(dice, 25), abs=1e-12)
    out = run / "eval-volumes-test"
    assert len((out / "scores.csv").read_text().strip().splitlines()) == 1 + 3 * len(metrics["cases"])
    report = (out / "report.md").read_text()
    assert "## Leaderboard summary" in report and all(c["case"] in report for c in metrics["cases"])


def split_release(evaluated: dict, root: Path) -> Path:
    """A release of only the evaluated split's cases (symbolic links to the case directories)."""
    sub = root / "split-release"
    sub.mkdir()
    for case in evaluated["metrics"]["cases"]:
        os.symlink(evaluated["release"] / case["case"], sub / case["case"], target_is_directory=True)
    return sub


@pytest.mark.slow
def test_score_rescores_the_written_submission_to_the_same_values(evaluated: dict, tmp_path: Path) -> None:
    sub = split_release(evaluated, tmp_path)
    out = tmp_path / "score.json"
    seg = evaluated["run"] / "eval-volumes-test" / "seg"
    assert main(["score", "--pred", str(seg), "--truth", str(sub), "--convention", "brats2023",
                 "--out", str(out)]) == 0
    scored = json.loads(out.read_text())
    assert scored["cases"] == evaluated["metrics"]["cases"]
    assert scored["summary"] == evaluated["metrics"]["summary"]


@pytest.mark.slow
def test_brats2025_volumes_equal_panoptica(evaluated: dict) -> None:
    pytest.importorskip("panoptica")
    naming, release, run = evaluated["naming"], evaluated["release"], evaluated["run"]
    if naming != "brats2023":
        pytest.skip("one naming is enough for the second convention")
    assert main(["evaluate", "--run", str(run), "--volumes", str(release), "--convention", "brats2025",
                 "--write-seg"]) == 0
    metrics = json.loads((run / "eval-volumes-test" / "metrics.json").read_text())
    assert metrics["convention"] == "brats2025"
    evaluator = panoptica_evaluator()
    for case in metrics["cases"]:
        cid = case["case"]
        pred, spacing = read_canonical(run / "eval-volumes-test" / "seg" / f"{cid}.nii.gz", naming)
        truth, _ = read_canonical(release / cid / f"{cid}-seg.nii.gz", naming)
        ref = panoptica_scores(evaluator, pred, truth, spacing)
        for name in REGIONS:
            for field in (*FIELDS, "f1"):
                got, want = case["regions"][name][field], ref[name][field]
                if want is None or (isinstance(want, float) and np.isnan(want)):
                    assert got is None, (cid, name, field)
                elif field == "hd95" and want != 373.0:
                    # panoptica's global HD95 is in voxels whatever the spacing (README); the phantom's is isotropic
                    assert spacing == (spacing[0],) * 3
                    assert got == pytest.approx(want * spacing[0], abs=1e-4), (cid, name, field)
                else:
                    assert got == pytest.approx(want, abs=1e-4), (cid, name, field)


@pytest.mark.slow
def test_a_missing_case_and_misplaced_options_are_one_line_errors(evaluated: dict, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    if evaluated["naming"] != "brats2021":
        pytest.skip("errors do not depend on the naming")
    run = evaluated["run"]
    sub = split_release(evaluated, tmp_path)
    missing = evaluated["metrics"]["cases"][1]["case"]
    (sub / missing).unlink()
    before = (run / "eval-volumes-test" / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--volumes", str(sub)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {missing}: a case of the evaluated split is not in") and "\n" not in err
    assert (run / "eval-volumes-test" / "metrics.json").read_bytes() == before  # nothing replaced
    for argv, flag in ((["--convention", "brats2025"], "--convention"), (["--write-seg"], "--write-seg"),
                       (["--volumes", str(evaluated["release"]), "--max-slices", "2"], "--max-slices"),
                       (["--volumes", str(evaluated["release"]), "--convention", "brats2030"], "--convention")):
        assert main(["evaluate", "--run", str(run), *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {flag}: ") and "\n" not in err
