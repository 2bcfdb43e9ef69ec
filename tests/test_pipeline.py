"""End to end through the command line: build-benchmark -> train --bilevel -> evaluate -> fuse."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from _bilevel_reference import independent_step

from fuse4seg.cli import main

LR_UPPER, LR_LOWER, LAMBDA = 0.5, 0.05, 2.0


@pytest.mark.slow
def test_build_train_evaluate_fuse(phantom_release: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The user's pipeline through `fuse4seg.cli.main`, checking every file and the first update."""
    from fuse4seg.runkit.checkpoint import load_checkpoint
    from fuse4seg.train.resolve import config_from_dict

    bench, run, fused_dir = tmp_path / "bench", tmp_path / "run", tmp_path / "fused"
    assert main(["build-benchmark", "--out", str(bench), "--brats", str(phantom_release), "--size", "48",
                 "--slices-per-case", "3", "--split", "0.5,0.25,0.25"]) == 0
    train_args = ["train", "--benchmark", str(bench), "--out", str(run), "--bilevel", "--hypergrad", "unrolled",
                  "--inner-steps", "1", "--inner-optimizer", "sgd", "--upper-optimizer", "sgd",
                  "--lr-upper", str(LR_UPPER), "--lr-lower", str(LR_LOWER), "--lambda-seg", str(LAMBDA),
                  "--seg-width", "4", "--seg-depth", "2", "--fusion-width", "4", "--batch-size", "2",
                  "--eval-slices", "2", "--no-progress"]
    assert main([*train_args, "--steps", "1"]) == 0
    for name in ("config.json", "last.pt", "best.pt"):
        assert (run / name).is_file()
    # The benchmark's slice geometry rule (--size 48) travels to the run, where `fuse` reads it.
    assert json.loads((run / "config.json").read_text())["derived"]["benchmark_slice_size"] == 48

    # The fusion net moved by exactly -lr_upper * hypergradient (plain SGD on the upper level), and the
    # segmenter kept its inner step: both checked against an autograd computation of step 0.
    state = load_checkpoint(run / "last.pt")
    config = config_from_dict(state["config"])
    phi0, g_fuse, g_seg, theta1 = independent_step(bench, config, LR_LOWER)
    g_phi = {k: g_fuse[k] + LAMBDA * g_seg[k] for k in g_fuse}
    assert max(float(g.abs().max()) for g in g_phi.values()) > 0
    for k, g in g_phi.items():
        torch.testing.assert_close(state["models"]["fusion"][k] - phi0[k], -LR_UPPER * g, rtol=1e-4, atol=1e-6)
    for k in theta1:
        torch.testing.assert_close(state["models"]["seg"][k], theta1[k], rtol=1e-5, atol=1e-6)

    assert main([*train_args, "--steps", "3", "--resume"]) == 0
    assert load_checkpoint(run / "last.pt")["step"] == 3

    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--compare-untrained"]) == 0
    printed = capsys.readouterr().out
    assert "Dice WT" in printed and "report:" in printed
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert (run / "eval" / "report.md").read_text().count("|") > 20
    assert (run / "eval" / "gallery.png").stat().st_size > 1000
    from fuse4seg.data import BraTSFuse

    test = BraTSFuse(bench, "test")
    labels = np.stack([test[i]["label"].numpy() for i in range(len(test))])
    assert metrics["slices"] == len(test)
    # Background everywhere scores, per slice, 1 where the region is absent and 0 where present.
    for region, values in {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}.items():
        expected = float(np.mean([not np.isin(lab, values).any() for lab in labels]))
        assert metrics["background_dice_per_slice_mean"][region] == pytest.approx(expected)
    assert set(metrics["fusion"]["learned"]) >= {"EN", "SSIM", "Qabf", "VIF"}

    case_dir = min(p for p in phantom_release.iterdir() if p.is_dir())
    assert main(["fuse", "--run", str(run), "--case", str(case_dir), "--out", str(fused_dir)]) == 0
    t1 = nib.load(next(case_dir.glob("*_t1.nii.gz")))
    fused, seg = nib.load(fused_dir / "fused.nii.gz"), nib.load(fused_dir / "seg.nii.gz")
    for img in (fused, seg):
        assert img.shape == t1.shape
        np.testing.assert_array_equal(img.affine, t1.affine)
    f = np.asarray(fused.dataobj)
    assert f.dtype == np.float32 and 0.0 <= f.min() and f.max() <= 1.0 and f.max() > 0.1
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}  # BraTS 2021 values
    assert main(["fuse", "--run", str(run), "--case", str(case_dir), "--out", str(fused_dir)]) == 1

    # The benchmark rebuilt with the trained fusion network stores that network's output.
    bench2 = tmp_path / "bench2"
    assert main(["build-benchmark", "--out", str(bench2), "--brats", str(phantom_release), "--size", "48",
                 "--slices-per-case", "3", "--split", "0.5,0.25,0.25", "--fusion-checkpoint",
                 str(run / "best.pt")]) == 0
    from fuse4seg.models import build_model

    best = load_checkpoint(run / "best.pt")
    net = build_model("fusion-cnn", in_channels=2, width=4)
    net.load_state_dict(best["models"]["fusion"])
    rebuilt = BraTSFuse(bench2, "test")
    assert "fusion-cnn trained bilevel" in rebuilt.attrs["fusion_method"]
    item = rebuilt[0]
    with torch.no_grad():
        expected = net(item["source"][[1, 3]][None])[0]
    torch.testing.assert_close(item["fused"], expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_demo_runs_end_to_end_at_tiny_size(tmp_path: Path) -> None:
    """`run_demo` (what `make demo` runs) with tiny sizes: prints the comparison table and writes the report."""
    from fuse4seg.demo import run_demo
    from fuse4seg.errors import ConfigError

    lines: list[str] = []
    out = tmp_path / "demo"
    metrics = run_demo(out, echo=lines.append,
                       benchmark_overrides={"phantom": 5, "phantom_scale": 0.25, "size": 48, "slices_per_case": 3,
                                            "split": (0.6, 0.2, 0.2)},
                       train_overrides={"steps": 2, "eval_every": 0, "batch_size": 2, "progress": False,
                                        "seg_options": {"width": 4, "depth": 2}})
    text = "\n".join(lines)
    for expected in ("trained, per slice", "untrained network, per slice", "all background, per slice",
                     "report.md", "tensorboard --logdir"):
        assert expected in text
    assert (out / "run" / "eval" / "report.md").is_file() and "untrained" in metrics
    with pytest.raises(ConfigError, match="already exists"):
        run_demo(out, echo=lines.append)
