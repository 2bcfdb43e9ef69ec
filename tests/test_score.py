"""``fuse4seg score`` and fuse4seg.metrics.scoring: pairing, reading, label schemes, outputs, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _scoring_refs import random_case
from conftest import write_case

from fuse4seg.cli import main
from fuse4seg.data.release.brats import from_canonical_labels
from fuse4seg.errors import ConfigError
from fuse4seg.metrics import segmentation_metrics
from fuse4seg.metrics.scoring import SCORE_FIELDS, score_directory

SHAPE = (24, 22, 20)
IDS = {"brats2021": ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"],
       "brats2023": ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000", "BraTS-GLI-00002-000"]}
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


def make_release(root: Path, scheme: str = "brats2021") -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A 3-case release and a prediction directory (case 0 perfect, case 1 noisy, case 2 with no ET in either);
    returns (release, predictions, {case id: (canonical pred, canonical truth)})."""
    release, preds = root / "release", root / "preds"
    preds.mkdir(parents=True)
    canonical = {}
    for i, case_id in enumerate(IDS[scheme]):
        pred, truth = random_case(i, SHAPE)
        if i == 0:
            pred = truth.copy()
        if i == 2:
            pred[pred == 3], truth[truth == 3] = 1, 1
        write_case(release, scheme, case_id, shape=SHAPE, labels=from_canonical_labels(truth, scheme), affine=AFFINE)
        nib.save(nib.Nifti1Image(from_canonical_labels(pred, scheme), AFFINE), preds / f"{case_id}.nii.gz")
        canonical[case_id] = (pred, truth)
    return release, preds, canonical


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run the command line; (exit status, stdout, stderr)."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_score_json_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    release, preds, canonical = make_release(tmp_path)
    out = tmp_path / "scores" / "brats2023.json"
    code, stdout, err = run(["score", "--pred", str(preds), "--truth", str(release), "--convention", "brats2023",
                             "--challenge", "met", "--out", str(out)], capsys)
    assert code == 0, err
    assert "scored 3 cases (brats2023 convention, challenge met)" in stdout and str(out) in stdout
    result = json.loads(out.read_text())
    assert (result["convention"], result["challenge"]) == ("brats2023", "met")
    assert [c["case"] for c in result["cases"]] == IDS["brats2021"]
    for case in result["cases"]:
        pred, truth = canonical[case["case"]]
        expected = segmentation_metrics(pred, truth, convention="brats2023", challenge="met")
        for region, values in case["regions"].items():
            assert list(values) == list(SCORE_FIELDS)
            assert values["f1"] is None  # brats2025 only
            for key, value in expected[region].items():
                assert values[key] == pytest.approx(value)
    assert result["cases"][0]["regions"]["WT"]["dice"] == 1.0
    wt_dice = [c["regions"]["WT"]["dice"] for c in result["cases"]]
    summary = result["summary"]["WT"]["dice"]
    assert summary["mean"] == pytest.approx(np.mean(wt_dice)) and summary["sd"] == pytest.approx(np.std(wt_dice, ddof=1))
    assert summary["median"] == pytest.approx(np.median(wt_dice)) and summary["q25"] <= summary["q75"]
    assert set(result["summary"]["WT"]) == {"dice", "hd95", "sensitivity", "specificity", "lesion_dice", "lesion_hd95",
                                            "tp", "fp", "fn"}
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 9 and rows[0]["case"] == IDS["brats2021"][0] and rows[0]["region"] == "WT"
    assert rows[0]["f1"] == "" and float(rows[4]["lesion_hd95"]) == pytest.approx(
        result["cases"][1]["regions"]["TC"]["lesion_hd95"])


def test_brats2025_nan_is_null_and_left_out_of_means(tmp_path: Path) -> None:
    release, preds, _ = make_release(tmp_path)
    result = score_directory(preds, release, tmp_path / "s.json", convention="brats2025", progress=False)
    et = [c["regions"]["ET"] for c in result["cases"]]
    assert et[2]["dice"] is None and et[2]["hd95"] is None and et[2]["f1"] is None and et[2]["sensitivity"] is None
    assert result["summary"]["ET"]["dice"]["mean"] == pytest.approx((et[0]["dice"] + et[1]["dice"]) / 2)
    assert "null" in (tmp_path / "s.json").read_text() and "NaN" not in (tmp_path / "s.json").read_text()


def test_schemes_map_labels_and_monai_has_no_lesion_metrics(tmp_path: Path) -> None:
    r21, p21, _ = make_release(tmp_path / "a", "brats2021")
    r23, p23, _ = make_release(tmp_path / "b", "brats2023")
    a = score_directory(p21, r21, tmp_path / "a.json", convention="monai", progress=False)
    b = score_directory(p23, r23, tmp_path / "b.json", convention="monai", progress=False)
    assert [c["regions"] for c in a["cases"]] == [c["regions"] for c in b["cases"]]
    assert a["cases"][1]["regions"]["ET"]["lesion_dice"] is None and a["cases"][1]["regions"]["ET"]["tp"] is None
    assert a["cases"][1]["regions"]["ET"]["hd95"] > 0


def test_workers_give_the_same_result(tmp_path: Path) -> None:
    release, preds, _ = make_release(tmp_path)
    one = score_directory(preds, release, tmp_path / "1.json", convention="brats2025", workers=1, progress=False)
    two = score_directory(preds, release, tmp_path / "2.json", convention="brats2025", workers=2, progress=False)
    assert one == two


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    nib.save(nib.Nifti1Image(data, affine), path)


@pytest.mark.parametrize("damage,message", [
    ("missing", "BraTS2021_00001: prediction BraTS2021_00001.nii.gz is missing from"),
    ("extra", "BraTS2021_00099: prediction BraTS2021_00099.nii.gz matches no case of"),
    ("shape", "BraTS2021_00001: prediction BraTS2021_00001.nii.gz has shape (24, 22, 19), the truth seg has"),
    ("affine", "BraTS2021_00001: prediction BraTS2021_00001.nii.gz has a different affine from the truth seg"),
    ("label", "BraTS2021_00001: prediction BraTS2021_00001.nii.gz: unknown label values 3 (the brats2021 scheme"),
    ("twice", "BraTS2021_00001: both BraTS2021_00001.nii and BraTS2021_00001.nii.gz are in"),
])
def test_bad_predictions_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture, damage: str,
                                             message: str) -> None:
    release, preds, _ = make_release(tmp_path)
    target = preds / "BraTS2021_00001.nii.gz"
    data = np.asarray(nib.load(target).dataobj)
    if damage == "missing":
        target.unlink()
    elif damage == "extra":
        _save(preds / "BraTS2021_00099.nii.gz", data)
    elif damage == "shape":
        _save(target, data[..., :-1])
    elif damage == "affine":
        _save(target, data, np.diag([-1.0, -1.0, 2.0, 1.0]))
    elif damage == "label":
        _save(target, np.where(data == 4, 3, data).astype(np.uint8))
    else:
        _save(preds / "BraTS2021_00001.nii", data)
    out = tmp_path / "s.json"
    code, _, err = run(["score", "--pred", str(preds), "--truth", str(release), "--convention", "brats2025",
                       "--out", str(out)], capsys)
    assert code == 1 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not out.exists() and not out.with_suffix(".csv").exists()


def test_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    release, preds, _ = make_release(tmp_path)
    base = ["score", "--pred", str(preds), "--truth", str(release), "--out", str(tmp_path / "s.json")]
    code, _, err = run([*base, "--convention", "brats2019"], capsys)
    assert code == 1 and err.startswith("error: --convention: must be one of monai, brats2023, brats2025")
    code, _, err = run([*base, "--convention", "brats2023", "--challenge", "lgg"], capsys)
    assert code == 1 and err.startswith("error: --challenge: must be one of gli, ssa, ped, men, met")
    code, _, err = run([*base, "--convention", "monai", "--workers", "0"], capsys)
    assert code == 1 and err.startswith("error: --workers: must be >= 1")
    with pytest.raises(ConfigError, match="must be a .json file"):
        score_directory(preds, release, tmp_path / "s.csv", convention="monai")
    code, _, err = run(["score", "--pred", str(tmp_path / "nowhere"), "--truth", str(release), "--convention", "monai",
                        "--out", str(tmp_path / "s.json")], capsys)
    assert code == 1 and "prediction directory" in err


def test_overwrite_replaces_only_a_score_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An existing --out is refused; --overwrite replaces a score file but never a file fuse4seg did not write."""
    release, preds, _ = make_release(tmp_path)
    out = tmp_path / "s.json"
    base = ["score", "--pred", str(preds), "--truth", str(release), "--convention", "monai", "--out", str(out)]
    assert run(base, capsys)[0] == 0
    code, _, err = run(base, capsys)
    assert code == 1 and "already exists (pass --overwrite" in err and err.count("\n") == 1, err
    assert run([*base, "--overwrite"], capsys)[0] == 0
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "notes"}')
    code, _, err = run([*base[:-1], str(mine), "--overwrite"], capsys)
    assert code == 1 and "was not written by fuse4seg" in err
    assert mine.read_text() == '{"my": "notes"}' and not mine.with_suffix(".csv").exists()
