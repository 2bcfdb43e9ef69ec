"""tools/preview_package.py: draws the stored slices of a package, refuses bad input in one line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest
from _benchmark_data import write_release
from PIL import Image

from fuse4seg.data.build.builder import build_benchmark

TOOL = Path(__file__).resolve().parents[1] / "tools" / "preview_package.py"


def _tool():
    """Import the tool script as a module."""
    spec = importlib.util.spec_from_file_location("preview_package", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preview_draws_sources_fused_and_labels(tmp_path: Path) -> None:
    """The PNG's tiles equal the stored arrays: t1 tile = round(255 t1), label tile coloured where label > 0."""
    package = tmp_path / "pkg"
    build_benchmark(package, brats=write_release(tmp_path / "rel", 3), size=32, slices_per_case=2,
                    split=(0.34, 0.33, 0.33), progress=False)
    out = tmp_path / "p.png"
    assert _tool().main([str(package), "--split", "train", "--rows", "1", "--out", str(out)]) == 0
    image = np.asarray(Image.open(out))
    assert image.shape == (32, 6 * 32 + 5 * 2, 3)
    with h5py.File(package / "brats_fuse.h5") as f:
        t1, label = f["train/source"][0, 0], f["train/label"][0]
    np.testing.assert_array_equal(image[:, :32, 0], (np.clip(t1, 0, 1) * 255 + 0.5).astype(np.uint8))
    label_tile = image[:, 5 * 34:, :].astype(int)
    assert ((label_tile[..., 0] != label_tile[..., 1]) == (label > 0)).all()


def test_preview_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing package gives exit 1 and one `error:` line; no PNG is written."""
    out = tmp_path / "p.png"
    assert _tool().main([str(tmp_path / "missing"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not out.exists()
