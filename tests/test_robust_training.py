"""Augmentation and degraded inputs in training (exact resume, clean fusion-loss targets) and ``fuse4seg robustness``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_same_weights, checkpoint_weights

from fuse4seg.cli import main
from fuse4seg.runkit.batches import TrainingView, item_seed
from fuse4seg.train import steps
from fuse4seg.train.loop import train
from fuse4seg.train.resolve import build_config
from fuse4seg.train.run import resolve_config

TINY = {"seg_options": {"width": 4, "depth": 2}, "fusion_options": {"width": 4, "layers": 2}, "batch_size": 2,
        "progress": False, "eval_slices": 2, "lr_lower": 0.01}
CLI_TINY = ["--seg-width", "4", "--seg-depth", "2", "--batch-size", "2", "--eval-slices", "2", "--no-progress"]


@pytest.fixture(scope="module")
def bench(phantom_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 48 px benchmark of the 6-case phantom release (train 3 cases, val 1, test 2)."""
    out = tmp_path_factory.mktemp("robust") / "bench"
    assert main(["build-benchmark", "--out", str(out), "--brats", str(phantom_release), "--size", "48",
                 "--slices-per-case", "3", "--split", "0.5,0.17,0.33"]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bilevel", "direct"])
def test_resume_is_exact_with_augmentation_and_degraded_inputs(bench: Path, tmp_path: Path, mode: str) -> None:
    """--steps 2 then --resume to 4 equals 4 uninterrupted steps, and loader workers change nothing."""
    extra = {"mode": mode, "augment": "strong", "degrade_inputs": "noise,blur,kspace", "eval_every": 2,
             **({"inputs": "fused"} if mode == "direct" else {})}
    train(build_config({**TINY, **extra, "benchmark": str(bench), "out": str(tmp_path / "a"), "steps": 4}))
    train(build_config({**TINY, **extra, "benchmark": str(bench), "out": str(tmp_path / "b"), "steps": 2}))
    train(resolve_config({"out": str(tmp_path / "b"), "resume": True, "steps": 4, "progress": False}))
    assert_same_weights(checkpoint_weights(tmp_path / "a" / "last.pt"), checkpoint_weights(tmp_path / "b" / "last.pt"))
    train(build_config({**TINY, **extra, "benchmark": str(bench), "out": str(tmp_path / "c"), "steps": 4,
                        "num_workers": 1}))
    assert_same_weights(checkpoint_weights(tmp_path / "a" / "last.pt"), checkpoint_weights(tmp_path / "c" / "last.pt"))
    plain = tmp_path / "plain"
    train(build_config({**TINY, "mode": mode, **({"inputs": "fused"} if mode == "direct" else {}),
                        "benchmark": str(bench), "out": str(plain), "steps": 4, "eval_every": 2}))
    with pytest.raises(AssertionError):  # the options do change training
        assert_same_weights(checkpoint_weights(tmp_path / "a" / "last.pt"), checkpoint_weights(plain / "last.pt"))


def test_training_view_is_a_function_of_the_item_seed(bench: Path) -> None:
    from fuse4seg.runkit.benchmark import open_split

    dataset = open_split(bench, "train", cache=True)
    view = TrainingView(dataset, "strong", "noise,blur", None)
    key = (1, item_seed(0, "fit", 5, 1))
    a, b = view[key], view[key]
    for name in ("source", "fused", "label", "input"):
        assert torch.equal(a[name], b[name]), name
    other = view[(1, item_seed(0, "fit", 6, 1))]
    assert not torch.equal(a["input"], other["input"])
    degraded_only = TrainingView(dataset, "none", "noise", ("laplacian", [1, 3]))
    item = degraded_only[key]
    assert torch.equal(item["source"], dataset[1]["source"])  # the fusion loss's target stays clean
    assert item["input"].shape == item["source"].shape and item["input_fused"].shape == (1, 48, 48)
    assert item["input"].dtype == torch.float32


def test_fusion_loss_aims_at_clean_sources_while_the_nets_see_degraded_ones(monkeypatch: pytest.MonkeyPatch,
                                                                          bench: Path) -> None:
    """joint_step: the fusion net gets the batch's ``input``; the fusion loss compares with ``source``."""
    from fuse4seg.train.loop import Trainer

    config = build_config({**TINY, "mode": "joint", "benchmark": str(bench), "out": "unused", "steps": 1})
    trainer = Trainer(config)
    clean = torch.rand(2, 4, 48, 48)
    seen_input = torch.rand(2, 4, 48, 48)
    batch = {"source": clean, "input": seen_input, "fused": torch.rand(2, 1, 48, 48),
             "input_fused": torch.rand(2, 1, 48, 48), "label": torch.zeros(2, 48, 48, dtype=torch.long)}
    calls = {}
    real_fusion, real_loss = trainer.pipeline.fusion.forward, steps.fusion_loss

    def spy_fusion(x: torch.Tensor) -> torch.Tensor:
        calls["fusion_input"] = x.detach().clone()
        return real_fusion(x)

    def spy_loss(fused: torch.Tensor, sources: torch.Tensor, weights: object = None, **kw: object) -> object:
        calls["target"] = sources.detach().clone()
        return real_loss(fused, sources, weights, **kw)

    monkeypatch.setattr(trainer.pipeline.fusion, "forward", spy_fusion)
    monkeypatch.setattr(steps, "fusion_loss", spy_loss)
    steps.joint_step(trainer, batch, None)
    channels = trainer.pipeline.fusion_channels
    assert torch.equal(calls["fusion_input"], seen_input[:, channels])
    assert torch.equal(calls["target"], clean[:, channels])


def test_bad_augment_and_degrade_specs_are_one_line(bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for flag, value in (("--augment", "wild"), ("--degrade-inputs", "sunburn"), ("--augment", str(tmp_path / "x.yaml"))):
        capsys.readouterr()
        code = main(["train", "--benchmark", str(bench), "--out", str(tmp_path / "run"), flag, value, *CLI_TINY])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith(f"error: {flag}: ") and err.count("\n") == 1, err
        assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def two_runs(bench: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A 3-step bilevel run and a 3-step direct run on the stored fused image, then evaluated."""
    root = tmp_path_factory.mktemp("robust-runs")
    runs = [root / "bilevel", root / "direct"]
    assert main(["train", "--benchmark", str(bench), "--out", str(runs[0]), "--steps", "3", "--fusion-width", "4",
                 *CLI_TINY]) == 0
    assert main(["train", "--benchmark", str(bench), "--out", str(runs[1]), "--mode", "direct", "--inputs", "fused",
                 "--steps", "3", *CLI_TINY]) == 0
    for run in runs:
        assert main(["evaluate", "--run", str(run)]) == 0
    return runs


@pytest.mark.slow
def test_robustness_writes_tables_and_plots_and_is_deterministic(two_runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "rob"
    argv = ["robustness", *(a for r in two_runs for a in ("--run", str(r))), "--degradations", "noise,blur",
            "--levels", "2", "--fusion-slices", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads((out / "robustness.json").read_text())
    assert result["degradations"] == ["noise", "rician", "blur"] and result["severities"] == [0.0, 0.5, 1.0]
    rows = result["rows"]
    assert len(rows) == 2 * 3 * 3
    for label, run in zip(result["labels"], two_runs):
        clean = [r for r in rows if r["run"] == label and r["level"] == 0]
        assert all(r["dice_mean"] == clean[0]["dice_mean"] for r in clean)  # severity 0 is the clean split
        # Clean Dice equals evaluate's per-slice Dice on the test split (computed there independently).
        metrics = json.loads((run / "eval" / "metrics.json").read_text())["segmentation"]["per_slice"]
        for region in ("WT", "TC", "ET"):
            assert clean[0][f"dice_{region}"] == pytest.approx(metrics[region]["dice"], abs=1e-9)
        assert clean[0]["Qabf"] is not None  # both runs have a fused image (learned; re-fused stored)
        worst = next(r for r in rows if r["run"] == label and r["degradation"] == "noise" and r["level"] == 2)
        assert worst["SSIM"] < clean[0]["SSIM"]  # noise at 0.1 of the maximum: the fused image drifts from clean
    for name in ("robustness.md", "robustness.csv", "robustness_noise.png", "robustness_rician.png",
                 "robustness_blur.png"):
        assert (out / name).is_file(), name
    assert len((out / "robustness.csv").read_text().strip().splitlines()) == 1 + len(rows)
    again = tmp_path / "again"
    assert main([*argv, "--out", str(again), "--workers", "2"]) == 0
    assert json.loads((again / "robustness.json").read_text())["rows"] == rows


def test_robustness_bad_input_is_one_line(two_runs: list[Path], bench: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    base = ["robustness", "--run", str(two_runs[0]), "--out", str(tmp_path / "rob")]
    for extra, pattern in ((["--degradations", "sunburn"], "--degradations: unknown degradation 'sunburn'"),
                           (["--levels", "0"], "--levels: must be >= 1, got 0"),
                           (["--out", str(two_runs[0] / "x")], "could destroy it")):
        capsys.readouterr()
        assert main([*base, *extra]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and pattern in err and err.count("\n") == 1, err
    assert not (tmp_path / "rob").exists()


def test_robustness_refuses_a_3d_run(bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The degradations are 2-D transforms of test slices: a 3-D run is a one-line error, nothing written."""
    from fuse4seg.train.run import write_config_json

    run = tmp_path / "run3d"
    run.mkdir()
    write_config_json(build_config({"benchmark": str(bench), "out": str(run), "dims": 3, "patch": [16, 16, 16]}),
                      run / "config.json")
    capsys.readouterr()
    assert main(["robustness", "--run", str(run), "--out", str(tmp_path / "rob")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --run: ") and "is a 3-D run" in err and err.count("\n") == 1, err
    assert not (tmp_path / "rob").exists()
