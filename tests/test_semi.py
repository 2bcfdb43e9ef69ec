"""Training with few labels and pre-trained encoders (MICS): --init, --label-fraction (mean-teacher consistency
under a distribution shift) and --task classify, in every mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import assert_same_weights, checkpoint_weights

from fuse4seg.cli import main
from fuse4seg.losses.classification import presence_loss
from fuse4seg.pretrain.options import PretrainOptions
from fuse4seg.pretrain.runner import pretrain
from fuse4seg.runkit.batches import split_by_case
from fuse4seg.train.loop import Trainer, train
from fuse4seg.train.resolve import build_config
from fuse4seg.train.run import resolve_config
from fuse4seg.train.semi import consistency_loss, distribution_shift, ema_update_, label_pools

TINY = {"seg_options": {"width": 4, "depth": 2}, "fusion_options": {"width": 4, "layers": 2}, "batch_size": 2,
        "progress": False, "eval_slices": 2, "lr_lower": 0.01}
IDS = [f"case{c}" for c in range(10) for _ in range(3)]  # 10 patients, 3 slices each


def options(bench: Path, out: Path, **extra) -> dict:
    """Tiny training options on ``bench`` writing to ``out``."""
    return {**TINY, "benchmark": str(bench), "out": str(out), **extra}


# ---- pools, shift, loss, teacher --------------------------------------------------------------------


def test_label_pools_are_by_patient_and_keep_the_old_split_at_fraction_one() -> None:
    """Fraction 1: the fit/hold-out split is split_by_case's, nothing unlabelled. Fraction 0.3: 3 labelled
    patients (all their slices), held-out cases among them, the other 7 patients unlabelled; seeded."""
    assert label_pools(IDS, 1.0, 0, True, 0.2) == (*split_by_case(IDS, 0.2, 0), [])
    assert label_pools(IDS, 1.0, 0, False, 0.2) == (list(range(30)), [], [])
    fit, hold, unl = label_pools(IDS, 0.3, 0, True, 0.2)
    labelled = {IDS[i] for i in fit + hold}
    assert len(labelled) == 3 and not labelled & {IDS[i] for i in unl} and len(unl) == 21
    assert sorted(fit + hold + unl) == list(range(30)) and hold and {IDS[i] for i in hold} <= labelled
    assert label_pools(IDS, 0.3, 0, True, 0.2) == (fit, hold, unl)
    assert {IDS[i] for i in label_pools(IDS, 0.3, 1, True, 0.2)[2]} != {IDS[i] for i in unl}


def test_distribution_shift_is_per_slot_and_zero_at_strength_zero() -> None:
    """Each slice's shift depends on its own seed only (a shard sees the draws of the whole batch's slots);
    strength 0 is the identity; a shift changes the image."""
    x = torch.rand(3, 1, 8, 8)
    whole = distribution_shift(x, [11, 12, 13])
    parts = torch.cat([distribution_shift(x[:1], [11]), distribution_shift(x[1:], [12, 13])])
    assert torch.equal(whole, parts) and not torch.equal(whole, x)
    assert torch.equal(distribution_shift(x, [1, 2, 3], strength=0.0), x)


def test_consistency_loss_hand_worked_and_teacher_constant() -> None:
    """Softmax of (0, 0) vs (log 3, 0): probabilities (1/2, 1/2) vs (3/4, 1/4), squared differences 1/16 each, so
    the mean is 1/16; sigmoid of 0 vs log 3: (1/2 - 3/4)^2 = 1/16 too; no gradient reaches the teacher."""
    student = torch.zeros(1, 2, 1, 1, requires_grad=True)
    teacher = torch.tensor([math.log(3), 0.0]).view(1, 2, 1, 1).requires_grad_(True)
    loss = consistency_loss(student, teacher, sigmoid=False)
    assert float(loss.detach()) == pytest.approx(1 / 16)
    loss.backward()
    assert teacher.grad is None and student.grad is not None
    assert float(consistency_loss(torch.zeros(1, 1), torch.tensor([[math.log(3)]]), sigmoid=True)) == \
        pytest.approx(1 / 16)


def test_ema_update_hand_worked() -> None:
    """teacher 1, student 3, decay 0.9 -> 0.9 * 1 + 0.1 * 3 = 1.2."""
    teacher, student = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    for module, value in ((teacher, 1.0), (student, 3.0)):
        torch.nn.init.constant_(module.weight, value)
        torch.nn.init.constant_(module.bias, value)
    ema_update_(teacher, student, 0.9)
    assert float(teacher.weight.detach()) == pytest.approx(1.2) and float(teacher.bias.detach()) == pytest.approx(1.2)


def test_presence_loss_hand_worked() -> None:
    """Zero logits: every binary cross-entropy is log 2, whatever the targets."""
    label = torch.zeros(2, 4, 4, dtype=torch.long)
    label[0, 1, 1] = 3
    assert float(presence_loss(torch.zeros(2, 3), label)) == pytest.approx(math.log(2))


# ---- training -----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bilevel", "two-stage", "joint", "direct", "feature-fusion"])
def test_label_fraction_trains_in_every_mode(bench: Path, tmp_path: Path, mode: str) -> None:
    """2 of the 3 train cases keep labels; the third trains the segmenter through the consistency loss (logged);
    the mean teacher is checkpointed and differs from the student; config.json names the unlabelled case."""
    config = build_config(options(bench, tmp_path / "run", mode=mode, steps=3, label_fraction=0.5,
                                  fusion_steps=1 if mode == "two-stage" else None))
    train(config)
    derived = json.loads((tmp_path / "run" / "config.json").read_text())["derived"]
    assert len(derived["unlabelled_cases"]) == 1 and derived["unlabelled_slices"] == 3
    assert not set(derived["unlabelled_cases"]) & set(derived["holdout_cases"])
    models = checkpoint_weights(tmp_path / "run" / "last.pt")
    assert any(not torch.equal(models["teacher"][k], models["seg"][k]) for k in models["seg"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert "loss/consistency" in acc.Tags()["scalars"]


@pytest.mark.slow
def test_label_fraction_resume_is_exact(bench: Path, tmp_path: Path) -> None:
    """3 steps then --resume to 5 equals 5 steps (student, teacher, optimiser), with unlabelled batches."""
    extra = {"mode": "joint", "label_fraction": 0.5, "checkpoint_every": 1}
    train(build_config(options(bench, tmp_path / "a", steps=5, **extra)))
    train(build_config(options(bench, tmp_path / "b", steps=3, **extra)))
    train(resolve_config({"out": str(tmp_path / "b"), "resume": True, "steps": 5, "progress": False}))
    assert_same_weights(checkpoint_weights(tmp_path / "a" / "last.pt"), checkpoint_weights(tmp_path / "b" / "last.pt"))


@pytest.fixture(scope="module")
def encoder_file(bench: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PRE/encoder.pt of 2 pre-training steps at the tiny segmenter's size (width 4, depth 2)."""
    out = tmp_path_factory.mktemp("pre") / "pre"
    pretrain(PretrainOptions(benchmark=str(bench), out=str(out), steps=2, batch_size=4, width=4, depth=2,
                             embed_dim=8, progress=False))
    return out / "encoder.pt"


@pytest.mark.parametrize(("mode", "task", "slots"), [("bilevel", "segment", ["encoder"]),
                                                     ("feature-fusion", "segment", ["encoders.0", "encoders.1"]),
                                                     ("direct", "classify", ["encoders.0"])])
def test_init_copies_the_pretrained_encoder(bench: Path, tmp_path: Path, encoder_file: Path, mode: str, task: str,
                                            slots: list[str]) -> None:
    """--init puts encoder.pt into every encoder of the second network (and its mean teacher) before step 0."""
    config = build_config(options(bench, tmp_path / "run", mode=mode, task=task, init=str(encoder_file), steps=1,
                                  label_fraction=0.5))
    trainer = Trainer(config)
    saved = torch.load(encoder_file, weights_only=True)["encoder"]
    assert trainer.initialised == slots
    for net in (trainer.pipeline.seg, trainer.pipeline.teacher):
        for slot in slots:
            encoder = net.get_submodule(slot)
            assert all(torch.equal(v, saved[k]) for k, v in encoder.state_dict().items())


def test_init_and_label_fraction_errors(bench: Path, tmp_path: Path, encoder_file: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    """A pre-trained encoder of another width, a missing file, a fraction out of (0, 1] or one that labels every
    case, a 3-D classifier: one-line errors naming the option."""
    base = ["train", "--benchmark", str(bench), "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress"]
    for extra, needle in (
        (["--init", str(encoder_file), "--seg-width", "8"], "--init"),
        (["--init", str(tmp_path / "missing.pt")], "--init"),
        (["--label-fraction", "0"], "--label-fraction"),
        (["--label-fraction", "1.5"], "--label-fraction"),
        (["--label-fraction", "0.9"], "--label-fraction"),  # round(0.9 * 3) = 3 of 3 cases
        (["--task", "classify", "--dims", "3"], "--task"),
    ):
        rc = main([*base, *extra])
        err = capsys.readouterr().err.strip()
        assert rc != 0 and len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, (extra, err)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bilevel", "feature-fusion"])
def test_classify_trains_and_evaluates(bench: Path, tmp_path: Path, mode: str, capsys: pytest.CaptureFixture) -> None:
    """--task classify trains the presence classifier (validated by AUROC), evaluate writes AUROC/accuracy/F1 per
    region (WT is present in every stored slice: its AUROC is nan), and fuse refuses the run in one line."""
    run = tmp_path / "run"
    summary = train(build_config(options(bench, run, mode=mode, task="classify", steps=2)))
    assert summary["best_metric"] == "auroc_mean" and summary["best_dice_mean"] is None
    assert set(summary["val"]) == {"auroc_WT", "auroc_TC", "auroc_ET", "auroc_mean", "f1_mean", "accuracy_mean"}
    assert main(["evaluate", "--run", str(run)]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    table = metrics["classification"]
    assert metrics["task"] == "classify" and set(table) == {"WT", "TC", "ET", "macro"}
    assert math.isnan(table["WT"]["auroc"]) and table["WT"]["support"] == metrics["slices"]
    assert 0 <= table["TC"]["accuracy"] <= 1 and "auroc" in (run / "eval" / "report.md").read_text()
    capsys.readouterr()
    rc = main(["fuse", "--run", str(run), "--case", str(bench), "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "classify" in err and len(err.splitlines()) == 1
