"""Training loop: every mode runs, checkpoints load safely, resume is exact, non-finite steps are skipped."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_same_weights, checkpoint_weights

from fuse4seg.cli import main
from fuse4seg.errors import Fuse4SegError
from fuse4seg.train import steps
from fuse4seg.train.loop import Trainer, train
from fuse4seg.train.modes import MODES
from fuse4seg.train.networks import build_pipeline
from fuse4seg.train.resolve import build_config
from fuse4seg.train.run import resolve_config

TINY = {"seg_options": {"width": 4, "depth": 2}, "fusion_options": {"width": 4, "layers": 2}, "batch_size": 2,
        "progress": False, "eval_slices": 2, "lr_lower": 0.01}


def options(bench: Path, out: Path, **extra) -> dict:
    """Tiny training options on ``bench`` writing to ``out``."""
    return {**TINY, "benchmark": str(bench), "out": str(out), **extra}


def tensorboard_tags(directory: Path) -> dict[str, list[str]]:
    """Scalar tags (as a set) and image tags written to a TensorBoard log directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {"scalars": set(acc.Tags()["scalars"]), "images": acc.Tags()["images"]}


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
def test_resume_equals_uninterrupted(bench: Path, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """--steps 3 then --resume --steps 6 gives bitwise the last.pt and best.pt of one --steps 6 run.

    The val score is made a known function of the step (peaking at the interruption point, step 3,
    which is not on the --eval-every 2 schedule), so best.pt must come from step 4 in both runs.
    """
    from fuse4seg.train import variants

    seen = {"step": -1}
    real_step = Trainer.one_step

    def counting(self: Trainer, fit: dict, hold: dict | None) -> steps.StepResult:
        """The real step, remembering which step ran last."""
        seen["step"] = self.step
        return real_step(self, fit, hold)

    def scores(*args: object, **kwargs: object) -> tuple[dict[str, float], None]:
        """Val 'Dice' of the weights after step s: 0.1, 0.9, 0.5, 0.2, 0.3 for s = 2, 3, 4, 5, 6."""
        value = {2: 0.1, 3: 0.9, 4: 0.5, 5: 0.2, 6: 0.3}[seen["step"] + 1]
        return {"dice_WT": value, "dice_mean": value}, None

    monkeypatch.setattr(Trainer, "one_step", counting)
    monkeypatch.setattr(variants, "validation_scores", scores)  # what segment-2d validates with
    extra = {"mode": mode, "inner_optimizer": "adam" if mode == "bilevel" else None, "eval_every": 2}
    train(build_config(options(bench, tmp_path / "a", steps=6, **extra)))
    train(build_config(options(bench, tmp_path / "b", steps=3, **extra)))
    summary = train(resolve_config({"out": str(tmp_path / "b"), "resume": True, "steps": 6, "progress": False}))
    assert summary["steps"] == 6 and summary["steps_this_call"] == 3
    assert_same_weights(checkpoint_weights(tmp_path / "a" / "last.pt"), checkpoint_weights(tmp_path / "b" / "last.pt"))
    best_a = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    best_b = torch.load(tmp_path / "b" / "best.pt", weights_only=True)
    assert best_a["step"] == best_b["step"] == 4 and best_a["best"] == best_b["best"] == {"score": 0.5, "step": 4}
    assert_same_weights(best_a["models"], best_b["models"])
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

    def dying(self: Trainer, fit: dict, hold: dict | None) -> steps.StepResult:
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
    assert_same_weights(checkpoint_weights(tmp_path / "a" / "last.pt"), checkpoint_weights(tmp_path / "b" / "last.pt"))


def test_nonfinite_step_is_skipped_and_counted(bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One NaN loss skips that step (weights untouched) with a warning; the run goes on."""
    from fuse4seg.train import variants

    real = variants.segmentation_loss  # what Pipeline.task_loss calls (through the run variant)
    calls = {"n": 0}

    def nan_once(logits: torch.Tensor, label: torch.Tensor, region_based: bool = False, **kw) -> torch.Tensor:
        """The real loss, except NaN on the second call (= step 1 of direct training)."""
        calls["n"] += 1
        loss = real(logits, label, region_based, **kw)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(variants, "segmentation_loss", nan_once)
    config = build_config(options(bench, tmp_path / "run", mode="direct", steps=3, eval_every=0))
    with pytest.warns(RuntimeWarning, match="step 1: non-finite segmentation loss"):
        summary = train(config)
    assert summary["skipped"] == 1 and summary["steps"] == 3


def test_many_nonfinite_steps_stop_the_run(bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """max_bad_steps non-finite hypergradients in a row stop training with a Fuse4SegError."""
    real = steps.fusion_loss

    def nan_fusion(fused: torch.Tensor, sources: torch.Tensor, weights=None, **kw):
        """The real fusion loss times NaN: every hypergradient becomes non-finite."""
        total, parts = real(fused, sources, weights, **kw)
        return total * float("nan"), parts

    monkeypatch.setattr(steps, "fusion_loss", nan_fusion)
    config = build_config(options(bench, tmp_path / "run", steps=10, max_bad_steps=3))
    with pytest.warns(RuntimeWarning), pytest.raises(Fuse4SegError, match="3 non-finite steps in a row"):
        train(config)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["counters"]["skipped"] == 3


@pytest.fixture(scope="module")
def two_runs(bench: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step bilevel run and a 2-step joint run (same widths) in one directory."""
    root = tmp_path_factory.mktemp("runs")
    train(build_config(options(bench, root / "bilevel", steps=2)))
    train(build_config(options(bench, root / "joint", mode="joint", steps=2)))
    return root


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run directory (each test edits its own)."""
    shutil.copytree(src, dst)
    return dst


def test_resume_refuses_a_benchmark_with_other_content(bench: Path, two_runs: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """A moved copy of the same package resumes; one with a changed slice is a one-line --benchmark error."""
    import h5py

    moved = shutil.copytree(bench, tmp_path / "moved")
    run = copy_run(two_runs / "bilevel", tmp_path / "run")
    assert json.loads((run / "config.json").read_text())["derived"]["benchmark_sha256"] == hashlib.sha256(
        (bench / "brats_fuse.h5").read_bytes()).hexdigest()
    summary = train(resolve_config({"out": str(run), "resume": True, "steps": 3, "benchmark": str(moved),
                                    "progress": False}))
    assert summary["steps"] == 3
    with h5py.File(moved / "brats_fuse.h5", "r+") as h5:
        h5["train/fused"][0, 0, 0, 0] = 0.5  # same shapes and counts, other content
    before = (run / "last.pt").read_bytes()
    rc = main(["train", "--out", str(run), "--resume", "--steps", "4", "--benchmark", str(moved), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: --benchmark: {moved} is not the benchmark this run was trained on (sha256 ")
    assert (run / "last.pt").read_bytes() == before


def test_resume_refuses_a_foreign_checkpoint(two_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A joint run's last.pt copied into a bilevel run is refused with one line naming the file and option."""
    run = copy_run(two_runs / "bilevel", tmp_path / "run")
    shutil.copy(two_runs / "joint" / "last.pt", run / "last.pt")
    rc = main(["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {run / 'last.pt'}: written by a run with --mode 'joint'"), err


@pytest.mark.parametrize("key", ["rng", "counters", "optimizers"])
def test_resume_from_a_checkpoint_missing_an_entry(two_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   key: str) -> None:
    """last.pt without an entry the loop restores: one `error:` line naming the file and the key, no traceback."""
    run = copy_run(two_runs / "bilevel", tmp_path / "run")
    state = torch.load(run / "last.pt", weights_only=True)
    del state[key]
    torch.save(state, run / "last.pt")
    rc = main(["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err == f"error: {run / 'last.pt'} is not a fuse4seg checkpoint (it lacks {key!r})", err


def test_resume_with_weights_of_other_shapes(two_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A checkpoint whose tensors do not fit the run's networks is a DataError naming the file."""
    run = copy_run(two_runs / "bilevel", tmp_path / "run")
    state = torch.load(run / "last.pt", weights_only=True)
    name = next(iter(state["models"]["seg"]))
    state["models"]["seg"][name] = torch.zeros(1)
    torch.save(state, run / "last.pt")
    rc = main(["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {run / 'last.pt'}: weights or optimiser state do not fit this run ("), err


def test_dice_per_slice_hand_worked() -> None:
    """(N, 3) WT/TC/ET Dice per slice on 1x4 label maps worked by hand; both-empty regions score 1."""
    from fuse4seg.train.predict import dice_per_slice

    pred = torch.tensor([[[1, 2, 0, 0]], [[0, 0, 0, 0]]])
    truth = torch.tensor([[[1, 3, 3, 0]], [[0, 0, 0, 3]]])
    # slice 0: WT p={0,1} t={0,1,2} -> 2*2/5; TC p={0} t={0,1,2} -> 2/4; ET p={} t={1,2} -> 0
    # slice 1: WT p={} t={3} -> 0; TC the same; ET the same
    expected = torch.tensor([[0.8, 0.5, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(dice_per_slice(pred, truth), expected)
    torch.testing.assert_close(dice_per_slice(pred[1:], pred[1:]), torch.ones(1, 3, dtype=torch.float64))
