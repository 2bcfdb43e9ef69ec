"""``fuse4seg fusion-metrics``: images read from disk and matched by name give the metrics of the arrays written."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fuse4seg.cli import main
from fuse4seg.metrics.fusion import FUSION_METRIC_NAMES, fusion_metrics

SIZE = (48, 56)


def smooth_image(seed: int) -> np.ndarray:
    """(48, 56) uint8 image with structure at several scales."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(SIZE), 2.0) + 0.2 * rng.random(SIZE)
    field = (field - field.min()) / (field.max() - field.min())
    return np.round(field * 255).astype(np.uint8)


def write_folders(root: Path, names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """fused/, a/, b/ of 8-bit greyscale PNGs named ``names``; returns folder -> name -> array."""
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for k, folder in enumerate(("fused", "a", "b")):
        (root / folder).mkdir(parents=True)
        arrays[folder] = {}
        for i, name in enumerate(names):
            image = smooth_image(10 * i + k)
            assert cv2.imwrite(str(root / folder / f"{name}.png"), image)
            arrays[folder][name] = image
    return arrays


def cli(root: Path, *extra: str) -> list[str]:
    """The fusion-metrics command line over root/fused, root/a, root/b."""
    return ["fusion-metrics", "--fused", str(root / "fused"), "--sources", str(root / "a"), "--sources",
            str(root / "b"), "--out", str(root / "out.json"), *extra]


def test_rows_and_mean_equal_the_metrics_of_the_written_arrays(tmp_path: Path) -> None:
    names = ["case1_slice040", "case1_slice060", "case2_slice050"]
    arrays = write_folders(tmp_path, names)
    assert main(cli(tmp_path, "--data-range", "2", "--workers", "2")) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert [r["name"] for r in result["images"]] == sorted(names)
    assert result["data_range"] == 2.0 and result["metrics"] == list(FUSION_METRIC_NAMES)
    for row in result["images"]:
        name = row["name"]
        want = fusion_metrics(arrays["fused"][name].astype(float),
                              [arrays["a"][name].astype(float), arrays["b"][name].astype(float)], data_range=2.0)
        for key in FUSION_METRIC_NAMES:
            assert row[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), (name, key)
    for key in FUSION_METRIC_NAMES:
        assert result["mean"][key] == pytest.approx(np.mean([r[key] for r in result["images"]]), rel=1e-12)
    assert result["mean"]["count"] == 3


def test_colour_png_is_read_as_its_luma(tmp_path: Path) -> None:
    arrays = write_folders(tmp_path, ["x"])
    rgb = np.stack([smooth_image(1), smooth_image(2), smooth_image(3)], axis=-1)
    assert cv2.imwrite(str(tmp_path / "fused" / "x.png"), rgb[..., ::-1])  # OpenCV writes BGR
    assert main(cli(tmp_path)) == 0
    row = json.loads((tmp_path / "out.json").read_text())["images"][0]
    luma = rgb @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as COLOR_BGR2GRAY
    want = fusion_metrics(luma, [arrays["a"]["x"].astype(float), arrays["b"]["x"].astype(float)])
    for key in ("SD", "SF", "AG", "CC", "SCD", "SSIM", "VIF"):
        assert row[key] == pytest.approx(want[key], rel=1e-4), key


def test_nifti_slices_in_unit_range_are_scaled_and_matched_across_extensions(tmp_path: Path) -> None:
    images = [smooth_image(k).astype(np.float32) / 255.0 for k in range(3)]
    for folder, image, shape, ext in (("fused", images[0], SIZE, ".nii.gz"), ("a", images[1], SIZE, ".nii"),
                                      ("b", images[2], (*SIZE, 1), ".nii.gz")):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(image.reshape(shape), np.eye(4)), tmp_path / folder / f"slice_7{ext}")
    assert main(cli(tmp_path, "--scale", "255")) == 0
    row = json.loads((tmp_path / "out.json").read_text())["images"][0]
    want = fusion_metrics(images[0].astype(float) * 255, [images[1].astype(float) * 255, images[2].astype(float) * 255])
    assert row["name"] == "slice_7"
    for key in FUSION_METRIC_NAMES:
        assert row[key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), key


@pytest.mark.parametrize("damage, message", [
    ("missing", "x0: fused image x0.png has no source image named x0.* in"),
    ("small", "x0: fusion metrics need images of at least 41x41"),
    ("corrupt", "corrupt or unreadable image"),
    ("one-source", "--sources: fusion metrics need at least two source folders, got 1"),
    ("shape", "x0: source"),
])
def test_bad_input_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture, damage: str,
                                       message: str) -> None:
    write_folders(tmp_path, ["x0", "x1"])
    argv = cli(tmp_path)
    if damage == "missing":
        (tmp_path / "b" / "x0.png").unlink()
    elif damage == "small":
        for folder in ("fused", "a", "b"):
            cv2.imwrite(str(tmp_path / folder / "x0.png"), smooth_image(0)[:30, :30])
    elif damage == "corrupt":
        (tmp_path / "a" / "x1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif damage == "one-source":
        argv = ["fusion-metrics", "--fused", str(tmp_path / "fused"), "--sources", str(tmp_path / "a"),
                "--out", str(tmp_path / "out.json")]
    elif damage == "shape":
        cv2.imwrite(str(tmp_path / "a" / "x0.png"), smooth_image(0)[:, :50])
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "out.json").exists()


def test_existing_output_is_kept_unless_it_is_ours(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_folders(tmp_path, ["x0"])
    notes = tmp_path / "out.json"
    notes.write_text('{"my": "notes"}')
    assert main(cli(tmp_path)) == 1
    assert main(cli(tmp_path, "--overwrite")) == 1
    assert "was not written by fuse4seg" in capsys.readouterr().err
    assert notes.read_text() == '{"my": "notes"}'
    notes.unlink()
    assert main(cli(tmp_path)) == 0
    assert main(cli(tmp_path, "--overwrite")) == 0
