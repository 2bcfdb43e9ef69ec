"""`evaluate`'s numbers recomputed independently from the HDF5 arrays and the networks' outputs."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fuse4seg.cli import main

REGION_VALUES = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
TRAIN = ["--mode", "joint", "--steps", "1", "--seg-width", "4", "--seg-depth", "2", "--fusion-width", "4",
         "--batch-size", "2", "--eval-slices", "2", "--no-progress"]


@pytest.fixture(scope="module")
def evaluated(phantom_release: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(benchmark, run, metrics.json) of a 1-step joint run on a 48 px, 2-cases-per-split phantom benchmark."""
    root = tmp_path_factory.mktemp("evaluate")
    bench, run = root / "bench", root / "run"
    assert main(["build-benchmark", "--out", str(bench), "--brats", str(phantom_release), "--size", "48",
                 "--slices-per-case", "3", "--split", "0.34,0.33,0.33"]) == 0
    assert main(["train", "--benchmark", str(bench), "--out", str(run), *TRAIN]) == 0
    assert main(["evaluate", "--run", str(run)]) == 0
    return bench, run, json.loads((run / "eval" / "metrics.json").read_text())


def split_arrays(bench: Path, run: Path) -> dict[str, np.ndarray]:
    """The test split's arrays from the HDF5 file plus the run's learned fused images and predicted labels."""
    from fuse4seg.runkit.checkpoint import load_checkpoint
    from fuse4seg.train.networks import build_pipeline
    from fuse4seg.train.resolve import config_from_dict

    with h5py.File(bench / "brats_fuse.h5", "r") as h5:
        g = h5["test"]
        out = {"source": g["source"][()], "stored": g["fused"][()][:, 0], "label": g["label"][()],
               "case_id": g["case_id"].asstr()[()], "z": g["slice_index"][()]}
        out["spacing"] = g["spacing"][()].astype(np.float64)
    state = load_checkpoint(run / "best.pt")
    pipeline = build_pipeline(config_from_dict(state["config"]))
    pipeline.load_state_dicts(state["models"])
    with torch.no_grad():
        fused = pipeline.fusion.eval()(torch.from_numpy(out["source"][:, [1, 3]]))  # t1ce, flair
        out["pred"] = pipeline.seg.eval()(fused).argmax(1).numpy()
    out["fused"] = fused[:, 0].numpy()
    return out


def stacked(a: dict[str, np.ndarray], case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(rows in slice order, predicted (H, W, K), true (H, W, K), median slice-index gap) of one case."""
    rows = np.flatnonzero(a["case_id"] == case)
    rows = rows[np.argsort(a["z"][rows])]
    gap = float(np.median(np.diff(a["z"][rows])))
    return rows, np.moveaxis(a["pred"][rows], 0, -1), np.moveaxis(a["label"][rows], 0, -1), gap


def numpy_dice(pred: np.ndarray, truth: np.ndarray, values: tuple[int, ...]) -> float:
    """Dice of one region over any-dimensional label maps; both empty -> 1 (BraTS rule)."""
    p, t = np.isin(pred, values), np.isin(truth, values)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else 2.0 * (p & t).sum() / total


def expected_spacing(case_dir: Path, size: int) -> np.ndarray:
    """(dy, dx, dz) mm of a case's benchmark pixels, from NIfTI alone: voxel size x brain-box side / ``size``
    in-plane (side of the square around the voxels > 0 in any modality and slice), the z voxel size along z."""
    import nibabel as nib

    images = [nib.load(p) for p in sorted(case_dir.glob("*.nii.gz")) if not p.name.endswith("_seg.nii.gz")]
    brain = np.any([np.asarray(img.dataobj) > 0 for img in images], axis=(0, 3))
    side = max(np.ptp(np.flatnonzero(brain.any(axis=1))), np.ptp(np.flatnonzero(brain.any(axis=0)))) + 1
    zooms = np.asarray(images[0].header.get_zooms()[:3], dtype=np.float64)
    return np.array([zooms[0] * side / size, zooms[1] * side / size, zooms[2]])


def test_metrics_match_an_independent_recomputation(evaluated: tuple[Path, Path, dict], phantom_release: Path
                                                    ) -> None:
    """Per-slice and per-case (slices stacked in slice order) Dice by plain NumPy, HD95 in mm with the stored pixel
    spacing and slice thickness, and the fusion metrics of the learned and stored fused images on the 0-255 scale
    all equal metrics.json (before the fix HD95 was in mixed pixel/voxel units and no unit was recorded)."""
    from fuse4seg.metrics import fusion_metrics, segmentation_metrics

    bench, run, metrics = evaluated
    a = split_arrays(bench, run)
    source, label, pred, spacing = a["source"], a["label"], a["pred"], a["spacing"]
    assert metrics["slices"] == len(label) and metrics["hd95_unit"] == "mm"
    for case, s in zip(a["case_id"], spacing):
        np.testing.assert_allclose(s, expected_spacing(phantom_release / case, 48), rtol=1e-6)

    per_slice = metrics["segmentation"]["per_slice"]
    for region, values in REGION_VALUES.items():
        dice = np.mean([numpy_dice(p, t, values) for p, t in zip(pred, label)])
        assert per_slice[region]["dice"] == pytest.approx(dice, abs=1e-12)
    hd95 = [segmentation_metrics(p, t, spacing=tuple(s[:2])) for p, t, s in zip(pred, label, spacing)]
    for region in REGION_VALUES:
        assert per_slice[region]["hd95"] == pytest.approx(np.mean([m[region]["hd95"] for m in hd95]), abs=1e-9)

    cases = sorted(set(a["case_id"]))
    assert metrics["cases"] == len(cases) >= 2
    for case in cases:
        rows, p3, t3, gap = stacked(a, case)
        expected = segmentation_metrics(p3, t3, spacing=(*spacing[rows[0], :2], gap * spacing[rows[0], 2]))
        for region, values in REGION_VALUES.items():
            got = metrics["per_case"][case][region]
            assert got["dice"] == pytest.approx(numpy_dice(p3, t3, values), abs=1e-12)
            assert got["hd95"] == pytest.approx(expected[region]["hd95"], abs=1e-9)

    for key, image in (("learned", a["fused"]), ("benchmark_stored", a["stored"])):
        rows = [fusion_metrics(image[i] * 255.0, list(source[i, [1, 3]].astype(np.float64) * 255.0))
                for i in range(len(image))]
        for name in ("EN", "SD", "SSIM", "Qabf", "MI", "SCD", "VIF", "PSNR", "CC"):
            assert metrics["fusion"][key][name] == pytest.approx(np.mean([r[name] for r in rows]), rel=1e-5), name
    report = (run / "eval" / "report.md").read_text()
    assert "HD95 WT (mm)" in report and "HD95 in mm" in report


def test_benchmark_without_spacing_is_refused(evaluated: tuple[Path, Path, dict], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """A copy of the benchmark without the spacing dataset (as format 1 wrote it): `evaluate --benchmark` stops
    with one `error:` line naming the missing dataset, exit 1, the run's eval/ untouched. (Before format 2
    such files were scored with HD95 in pixels; format 1 is no longer read.)"""
    import shutil

    bench, run, _ = evaluated
    old = tmp_path / "old"
    shutil.copytree(bench, old)
    with h5py.File(old / "brats_fuse.h5", "r+") as h5:
        for split in ("train", "val", "test"):
            del h5[split]["spacing"]
    before = (run / "eval" / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--benchmark", str(old)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "spacing" in err and "\n" not in err, err
    assert (run / "eval" / "metrics.json").read_bytes() == before


def test_evaluate_refuses_a_benchmark_that_does_not_match_the_run(
        evaluated: tuple[Path, Path, dict], phantom_release: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    """`evaluate --benchmark OTHER` with other slice sizes or another pair of fusion inputs: one `error:` line,
    exit 1, the run's eval/ untouched."""
    _, run, _ = evaluated
    before = (run / "eval" / "metrics.json").read_bytes()
    cases = [("small", ["--size", "40"], "has 40 x 40 slices but the run was trained on 48 x 48"),
             ("t1t2", ["--size", "48", "--fusion-inputs", "t1,t2"],
              "stores a fusion of t1,t2 but the run's benchmark fused t1ce,flair")]
    for name, options, message in cases:
        other = tmp_path / name
        assert main(["build-benchmark", "--out", str(other), "--brats", str(phantom_release), *options,
                     "--slices-per-case", "2", "--split", "0.34,0.33,0.33"]) == 0
        capsys.readouterr()
        assert main(["evaluate", "--run", str(run), "--benchmark", str(other)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --benchmark:") and message in err and "\n" not in err
    assert (run / "eval" / "metrics.json").read_bytes() == before
