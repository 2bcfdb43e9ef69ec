"""The tutorials (tutorials/*.py, percent-format scripts) run end to end on tiny data, each as a subprocess
with small sizes from environment variables, and write their key outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
#: tutorial -> (small sizes, outputs relative to TUTORIAL_DIR that must exist, lines stdout must contain)
CASES = {
    "01_package.py": ({"TUTORIAL_CASES": "4", "TUTORIAL_SIZE": "32"},
                      ["package/brats_fuse.h5", "package/parquet/train-00000-of-00001.parquet"],
                      ["{'parquet-train': "]),
    "02_custom_fusion.py": ({"TUTORIAL_CASES": "4", "TUTORIAL_SIZE": "32", "TUTORIAL_STEPS": "4"},
                            ["run/best.pt", "run/eval/metrics.json"], ["soft-select", "trained bilevel: 4 steps"]),
    "03_bilevel_beyond_imaging.py": ({"TUTORIAL_SAMPLES": "400", "TUTORIAL_OUTER": "8"}, ["validation_loss.png"],
                                     ["implicit-cg vs TorchOpt", "unrolled vs higher"]),
}


def test_every_tutorial_is_tested() -> None:
    """Each script in tutorials/ has a case here."""
    assert sorted(p.name for p in TUTORIALS.glob("[0-9]*.py")) == sorted(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_tutorial_runs(name: str, tmp_path: Path) -> None:
    """The script exits 0 within a minute and leaves its outputs."""
    pytest.importorskip("sklearn" if name.startswith("03") else "datasets")
    sizes, outputs, printed = CASES[name]
    env = {**os.environ, **sizes, "TUTORIAL_DIR": str(tmp_path / "work"), "OMP_NUM_THREADS": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(TUTORIALS / name)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    for output in outputs:
        assert (tmp_path / "work" / output).is_file(), output
    for text in printed:
        assert text in done.stdout, done.stdout[-2000:]
