"""Training loop: every mode runs, checkpoints load safely, resume is exact, non-finite steps are skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fuse4seg.errors import Fuse4SegError
from fuse4seg.train import modes
from fuse4seg.train.config import MODES, build_config
from fuse4seg.train.loop import Trainer, resolve_config, train
from fuse4seg.train.networks import build_pipeline

TINY = {"seg_options": {"width": 4, "depth": 2}, "fusion_options": {"width": 4, "layers": 2}, "batch_size": 2,
        "progress": False, "eval_slices": 2, "lr_lower": 0.01}


@pytest.fixture(scope="module")
def bench(phantom_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny benchmark: 6 phantom cases, 3 slices each at 48 x 48 (train 3 cases, val 2, test 1)."""
    from fuse4seg.data.benchmark import build_benchmark

    out = tmp_path_factory.mktemp("bench") / "b"
    build_benchmark(out, brats=phantom_release, size=48, slices_per_case=3, split=(0.5, 0.25, 0.25),
                    progress=False)
    return out


def options(bench: Path, out: Path, **extra) -> dict:
    """Tiny training options on ``bench`` writing to ``out``."""
    return {**TINY, "benchmark": str(bench), "out": str(out), **extra}


def tensorboard_tags(directory: Path) -> dict[str, list[str]]:
    """Scalar tags (as a set) and image tags written to a TensorBoard log directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {"scalars": set(acc.Tags()["scalars"]), "images": acc.Tags()["images"]}


def weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Model state dicts of a checkpoint, loaded with weights_only=True."""
    return torch.load(path, weights_only=True)["models"]


def assert_same(a: dict, b: dict) -> None:
    """Every tensor of two nested state dicts is bitwise equal."""
    assert a.keys() == b.keys()
    for net, tensors in a.items():
        for name, value in tensors.items():
            assert torch.equal(value, b[net][name]), (net, name)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_trains_its_networks(bench: Path, tmp_path: Path, mode: str) -> None:
    """Three steps of each mode: files written, step count, and the trained networks' weights moved."""
    config = build_config(options(bench, tmp_path / "run", mode=mode, steps=3, fusion_steps=1 if mode == "two-stage"
                                  else None))
    initial = build_pipeline(config).state_dicts()
    summary = train(config)
    assert summary["steps"] == 3 and summary["skipped"] == 0
    for name in ("config.json", "last.pt", "best.pt", "train_summary.json"):
        assert (tmp_path / "run" / name).is_file()
    tags = tensorboard_tags(tmp_path / "run" / "tb")
    expected = {"time/step_s", "val/dice_mean", "val/dice_WT", "train/skipped"}
    expected |= {"loss/upper", "loss/fusion", "loss/seg_holdout", "hypergrad/norm"} if mode == "bilevel" else set()
    expected |= {"loss/seg"} if mode in ("direct", "feature-fusion", "joint", "two-stage") else set()
    assert expected <= tags["scalars"] and tags["images"] == ["val/panels"]
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["config"]["mode"] == mode
    final = ckpt["models"]
    assert ("fusion" in final) == (mode in ("bilevel", "two-stage", "joint"))
    for net in final:  # every network of the mode is trained by it
        moved = any(not torch.equal(initial[net][k], final[net][k]) for k in final[net])
        assert moved, f"{mode}: {net} did not change"


def test_direct_inputs_choose_channels(bench: Path, tmp_path: Path) -> None:
    """direct on stacked modalities builds a segmenter with one input channel per modality."""
    config = build_config(options(bench, tmp_path / "run", mode="direct", inputs="t1,t2,flair", steps=1))
    pipeline = build_pipeline(config)
    assert pipeline.seg.in_channels == 3 and pipeline.fusion is None
    source = torch.rand(2, 4, 48, 48)
    assert torch.equal(pipeline.seg_input(source, None, None), source[:, [0, 2, 3]])
    train(config)


def test_region_based_training_and_prediction(bench: Path, tmp_path: Path) -> None:
    """--region-based: 3 sigmoid outputs (WT, TC, ET), trained and scored through the same loop."""
    config = build_config(options(bench, tmp_path / "run", mode="direct", region_based=True, steps=2))
    assert build_pipeline(config).seg(torch.rand(1, 1, 48, 48)).shape == (1, 3, 48, 48)
    summary = train(config)
    assert set(summary["val"]) == {"dice_WT", "dice_TC", "dice_ET", "dice_mean"}


@pytest.mark.parametrize("mode", ["bilevel", "joint"])
def test_resume_equals_uninterrupted(bench: Path, tmp_path: Path, mode: str) -> None:
    """--steps 3 then --resume --steps 6 gives bitwise the weights of one --steps 6 run."""
    train(build_config(options(bench, tmp_path / "a", mode=mode, steps=6, inner_optimizer="adam")))
    train(build_config(options(bench, tmp_path / "b", mode=mode, steps=3, inner_optimizer="adam")))
    summary = train(resolve_config({"out": str(tmp_path / "b"), "resume": True, "steps": 6, "progress": False}))
    assert summary["steps"] == 6 and summary["steps_this_call"] == 3
    assert_same(weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt"))
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for key in ("upper", "lower"):
        if a["optimizers"][key] is not None:
            for idx, st in a["optimizers"][key]["state"].items():
                for name, value in st.items():
                    assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizers"][key]["state"][idx][name]))


def test_killed_run_resumes_from_last_checkpoint(bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that dies at step 5 (last.pt from step 4) resumes to the weights of an uninterrupted run."""
    train(build_config(options(bench, tmp_path / "a", steps=7)))
    real = Trainer.one_step

    def dying(self: Trainer, fit: dict, hold: dict | None) -> modes.StepResult:
        """Die like a killed process once step 5 starts (no chance to save)."""
        if self.step == 5:
            raise SystemExit("killed")
        return real(self, fit, hold)

    monkeypatch.setattr(Trainer, "one_step", dying)
    with pytest.raises(SystemExit):
        train(build_config(options(bench, tmp_path / "b", steps=7, checkpoint_every=2)))
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 4
    monkeypatch.setattr(Trainer, "one_step", real)
    train(resolve_config({"out": str(tmp_path / "b"), "resume": True, "progress": False}))
    assert_same(weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt"))


def test_nonfinite_step_is_skipped_and_counted(bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One NaN loss skips that step (weights untouched) with a warning; the run goes on."""
    real = modes.segmentation_loss
    calls = {"n": 0}

    def nan_once(logits: torch.Tensor, label: torch.Tensor, region_based: bool = False) -> torch.Tensor:
        """The real loss, except NaN on the second call (= step 1 of direct training)."""
        calls["n"] += 1
        loss = real(logits, label, region_based)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(modes, "segmentation_loss", nan_once)
    config = build_config(options(bench, tmp_path / "run", mode="direct", steps=3, eval_every=0))
    with pytest.warns(RuntimeWarning, match="step 1: non-finite segmentation loss"):
        summary = train(config)
    assert summary["skipped"] == 1 and summary["steps"] == 3


def test_many_nonfinite_steps_stop_the_run(bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """max_bad_steps non-finite hypergradients in a row stop training with a Fuse4SegError."""
    real = modes.fusion_loss

    def nan_fusion(fused: torch.Tensor, sources: torch.Tensor, weights=None):
        """The real fusion loss times NaN: every hypergradient becomes non-finite."""
        total, parts = real(fused, sources, weights)
        return total * float("nan"), parts

    monkeypatch.setattr(modes, "fusion_loss", nan_fusion)
    config = build_config(options(bench, tmp_path / "run", steps=10, max_bad_steps=3))
    with pytest.warns(RuntimeWarning), pytest.raises(Fuse4SegError, match="3 non-finite steps in a row"):
        train(config)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["counters"]["skipped"] == 3
