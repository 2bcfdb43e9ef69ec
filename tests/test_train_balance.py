"""Bi-level's best-shot options: the balanced upper objective (--seg-fraction) and the fusion warm-up."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _bilevel_reference import independent_step

from fuse4seg.cli import main
from fuse4seg.runkit.checkpoint import load_checkpoint
from fuse4seg.train.resolve import config_from_dict

LR_UPPER, LR_LOWER, FRACTION = 0.5, 0.05, 0.25


def train_args(bench: Path, run: Path, *extra: str) -> list[str]:
    """A tiny bi-level run with plain SGD at both levels (so an update is -lr x its direction)."""
    return ["train", "--benchmark", str(bench), "--out", str(run), "--bilevel", "--inner-optimizer", "sgd",
            "--upper-optimizer", "sgd", "--lr-upper", str(LR_UPPER), "--lr-lower", str(LR_LOWER),
            "--seg-width", "4", "--seg-depth", "2", "--fusion-width", "4", "--batch-size", "2",
            "--eval-slices", "2", "--no-progress", *extra]


def scalars(run: Path) -> dict[str, dict[int, float]]:
    """TensorBoard scalars of a run: tag -> {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def norm(grads: dict[str, torch.Tensor]) -> float:
    """Euclidean norm of a dict of tensors."""
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())))


def test_seg_fraction_balances_the_update(bench: Path, tmp_path: Path) -> None:
    """phi1 = phi0 - lr (g_fuse + lambda g_seg) with lambda = f |g_fuse| / |g_seg|, all recomputed by autograd."""
    run = tmp_path / "run"
    assert main([*train_args(bench, run, "--seg-fraction", str(FRACTION)), "--steps", "1"]) == 0
    state = load_checkpoint(run / "last.pt")
    phi0, g_fuse, g_seg, theta1 = independent_step(bench, config_from_dict(state["config"]), LR_LOWER)
    lam = FRACTION * norm(g_fuse) / norm(g_seg)
    assert norm(g_seg) > 0 and norm(g_fuse) > 0
    for k in phi0:
        expected = -LR_UPPER * (g_fuse[k] + lam * g_seg[k])
        torch.testing.assert_close(state["models"]["fusion"][k] - phi0[k], expected, rtol=1e-4, atol=1e-6)
    for k in theta1:
        torch.testing.assert_close(state["models"]["seg"][k], theta1[k], rtol=1e-5, atol=1e-6)
    logged = scalars(run)
    assert logged["hypergrad/lambda_seg"][1] == pytest.approx(lam, rel=1e-4)
    assert logged["hypergrad/seg_fraction"][1] == pytest.approx(FRACTION, rel=1e-4)


def test_seg_fraction_is_logged_with_a_fixed_lambda(bench: Path, tmp_path: Path) -> None:
    """With --lambda-seg 2 the logged fraction is 2 |g_seg| / |g_fuse| of the same step."""
    run = tmp_path / "run"
    assert main([*train_args(bench, run, "--lambda-seg", "2"), "--steps", "1"]) == 0
    _, g_fuse, g_seg, _ = independent_step(bench, config_from_dict(load_checkpoint(run / "last.pt")["config"]),
                                           LR_LOWER)
    assert scalars(run)["hypergrad/seg_fraction"][1] == pytest.approx(2 * norm(g_seg) / norm(g_fuse), rel=1e-3)


def test_implicit_steps_log_their_solver_work(bench: Path, tmp_path: Path) -> None:
    """implicit-neumann with 3 terms and no stopping rule: 3 HVPs logged at every step (and no tail, which is not
    estimated); implicit-cg with 2 iterations: at most 2 HVPs, a residual and a 0/1 negative-curvature flag."""
    run = tmp_path / "neumann"
    assert main([*train_args(bench, run, "--hypergrad", "implicit-neumann", "--neumann-terms", "3",
                             "--neumann-tol", "0"), "--steps", "2"]) == 0
    logged = scalars(run)
    assert logged["hypergrad/hvps"] == {1: 3.0, 2: 3.0} and "hypergrad/tail" not in logged
    run = tmp_path / "cg"
    assert main([*train_args(bench, run, "--hypergrad", "implicit-cg", "--cg-iters", "2"), "--steps", "1"]) == 0
    logged = scalars(run)
    assert 1.0 <= logged["hypergrad/hvps"][1] <= 2.0 and logged["hypergrad/residual"][1] >= 0.0
    assert logged["hypergrad/indefinite"][1] in (0.0, 1.0)


def test_warm_up_trains_the_fusion_net_alone_first(bench: Path, tmp_path: Path) -> None:
    """--fusion-steps 2: steps 1-2 are fusion-loss steps (stage 1, no inner step, no hypergradient), step 3
    is a bi-level step; the recorded derived facts say so."""
    run = tmp_path / "run"
    assert main([*train_args(bench, run, "--fusion-steps", "2"), "--steps", "3"]) == 0
    logged = scalars(run)
    assert logged["stage"] == {1: 1.0, 2: 1.0}
    assert set(logged["hypergrad/norm"]) == set(logged["loss/seg_inner"]) == {3}
    assert set(logged["loss/fusion"]) == {1, 2, 3}
    import json

    assert json.loads((run / "config.json").read_text())["derived"]["fusion_steps"] == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--seg-fraction", "0.5", "--lambda-seg", "2"], "--seg-fraction: replaces --lambda-seg: give one of them"),
    (["--seg-fraction", "0"], "--seg-fraction: must be > 0"),
    (["--mode", "joint", "--seg-fraction", "0.5"], "--seg-fraction: only used with --mode bilevel"),
    (["--fusion-steps", "3", "--steps", "3"], "--fusion-steps: must be < --steps (3)"),
    (["--fusion-steps", "99", "--epochs", "1"], "--fusion-steps: must be < the total steps"),
    (["--seg-fraction", "1", "--config", "ZERO"], "--seg-fraction: balances against the fusion loss"),
    (["--seg-warmup", "2", "--fusion-steps", "1", "--steps", "3"], "--seg-warmup: must leave bi-level steps"),
    (["--mode", "joint", "--seg-warmup", "1"], "--seg-warmup: only used with --mode bilevel"),
    (["--mode", "joint", "--seg-reset-every", "5"], "--seg-reset-every: only used with --mode bilevel"),
    (["--seg-reset-every", "-1"], "--seg-reset-every: must be"),
])
def test_bad_balance_options_are_one_line(bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                          args: list[str], message: str) -> None:
    """Each bad combination: exit 1 and one line naming the flag."""
    zero = tmp_path / "zero.toml"
    zero.write_text("fusion_loss_weights = { intensity = 0, gradient = 0, ssim = 0, frequency = 0, "
                    "spatial_gradient = 0 }\n")
    args = [str(zero) if a == "ZERO" else a for a in args]
    rc = main(["train", "--benchmark", str(bench), "--out", str(tmp_path / "r"), "--no-progress", *args])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r").exists()


def test_fusion_budget_weight_update_by_hand() -> None:
    """weight exp(-0.05 (ratio / budget - 1)), clipped to [1e-3, 1e4]: 10 % over budget -> x exp(-0.005)."""
    from fuse4seg.train.steps import adapt_seg_weight

    assert adapt_seg_weight(1.0, 1.1, 1.0) == pytest.approx(0.9950125)
    assert adapt_seg_weight(2.0, 0.5, 1.0) == pytest.approx(2.0 * 1.0253151)
    assert adapt_seg_weight(4.0, 2.4, 1.2) == pytest.approx(4.0 * 0.9512294)
    assert adapt_seg_weight(1e4, 0.0, 1.0) == 1e4 and adapt_seg_weight(1.0, float("inf"), 1.0) == 1e-3


def _fusion_ratio_at_step_0(bench: Path, config) -> float:
    """L_fuse(F_phi0(x_fit), x_fit) / L_fuse(stored fused image of x_fit, x_fit), recomputed outside the trainer."""
    from fuse4seg.data import BraTSFuse
    from fuse4seg.losses import fusion_loss
    from fuse4seg.runkit.batches import batch_indices, split_by_case
    from fuse4seg.train.networks import build_pipeline

    data = BraTSFuse(bench, "train")
    fit_pool, _ = split_by_case([data[i]["case_id"] for i in range(len(data))], config.val_fraction, config.seed)
    items = [data[fit_pool[j]] for j in batch_indices(len(fit_pool), config.batch_size, config.seed, 0, "fit")]
    x_fit = torch.stack([it["source"][[1, 3]] for it in items])
    stored = torch.stack([it["fused"] for it in items])
    with torch.no_grad():
        fused = build_pipeline(config).fusion(x_fit)
        return float(fusion_loss(fused, x_fit)[0]) / float(fusion_loss(stored, x_fit)[0])


def test_fusion_budget_adapts_the_weight_and_resumes_exactly(bench: Path, tmp_path: Path) -> None:
    """--fusion-budget 0.5: step 1 uses --lambda-seg; its logged ratio is the fusion loss of F(x_fit) over that
    of the benchmark's image, recomputed independently; the next weight follows the closed form, is what step 2
    uses, and is stored in last.pt, so a run resumed after 2 steps ends where an uninterrupted one does."""
    budget, lam0 = 0.5, 2.0
    args = ("--fusion-budget", str(budget), "--lambda-seg", str(lam0))
    run, whole = tmp_path / "run", tmp_path / "whole"
    assert main([*train_args(bench, run, *args), "--steps", "2"]) == 0
    config = config_from_dict(load_checkpoint(run / "last.pt")["config"])
    logged = scalars(run)
    ratio = _fusion_ratio_at_step_0(bench, config)
    assert logged["hypergrad/fusion_ratio"][1] == pytest.approx(ratio, rel=1e-4)
    assert logged["hypergrad/lambda_seg"][1] == pytest.approx(lam0)
    import math

    expected = lam0 * math.exp(-0.05 * (ratio / budget - 1.0))
    assert logged["hypergrad/lambda_seg"][2] == pytest.approx(expected, rel=1e-4)
    assert main([*train_args(bench, run, *args), "--steps", "4", "--resume"]) == 0
    assert main([*train_args(bench, whole, *args), "--steps", "4"]) == 0
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(whole / "last.pt")
    assert a["seg_weight"] == b["seg_weight"] and a["seg_weight"] != lam0
    for net in ("fusion", "seg"):
        for k, v in a["models"][net].items():
            assert torch.equal(v, b["models"][net][k]), (net, k)


@pytest.mark.parametrize(("args", "message"), [
    (["--fusion-budget", "1", "--seg-fraction", "0.5"], "--fusion-budget: replaces --seg-fraction: give one of them"),
    (["--fusion-budget", "0"], "--fusion-budget: must be"),
    (["--fusion-budget", "1e9"], "--fusion-budget: must be"),
    (["--mode", "joint", "--fusion-budget", "1"], "--fusion-budget: only used with --mode bilevel"),
    (["--fusion-budget", "1", "--config", "ZERO"], "--fusion-budget: constrains the fusion loss"),
    (["--fusion-budget", "1", "--lambda-seg", "0"], "--fusion-budget: adapts the segmentation weight"),
])
def test_bad_budget_options_are_one_line(bench: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                         args: list[str], message: str) -> None:
    """Each bad combination: exit 1 and one line naming the flag."""
    test_bad_balance_options_are_one_line(bench, tmp_path, capsys, args, message)


def test_segmenter_warm_up_steps_the_segmenter_alone(bench: Path, tmp_path: Path) -> None:
    """--seg-warmup 1 (inner SGD): step 1 is theta1 = theta0 - lr dL_fit/dtheta on the untouched fusion net's image,
    recomputed by plain autograd, and the fusion net does not move; step 2 is a bi-level step."""
    from fuse4seg.runkit.batches import step_loader
    from fuse4seg.train.loop import Trainer
    from fuse4seg.train.resolve import build_config

    config = build_config({"benchmark": str(bench), "out": str(tmp_path / "run"), "mode": "bilevel",
                           "inner_optimizer": "sgd", "lr_lower": LR_LOWER, "seg_options": {"width": 4, "depth": 2},
                           "fusion_options": {"width": 4}, "batch_size": 2, "progress": False, "steps": 2,
                           "seg_warmup": 1})
    trainer = Trainer(config)
    phi0, _, _, theta1 = independent_step(bench, config, LR_LOWER)
    fit = next(iter(step_loader(trainer.train_set, trainer.fit_pool, 2, config.seed, 0, 1, "fit", 0)))
    trainer.pipeline.train(True)
    result = trainer.one_step(fit, None)
    assert "hypergrad/norm" not in result.scalars and result.scalars["loss/seg_inner"] > 0
    for k, v in trainer.pipeline.fusion.named_parameters():
        assert torch.equal(v.detach(), phi0[k])
    for k, v in trainer.pipeline.seg.named_parameters():
        torch.testing.assert_close(v.detach(), theta1[k], rtol=1e-5, atol=1e-6)
    run = tmp_path / "cli"
    assert main([*train_args(bench, run, "--seg-warmup", "1"), "--steps", "2"]) == 0
    logged = scalars(run)
    assert set(logged["loss/seg_inner"]) == {1, 2} and set(logged["hypergrad/norm"]) == {2}


def test_segmenter_reset_starts_the_step_from_fresh_weights(bench: Path, tmp_path: Path) -> None:
    """--seg-reset-every 1: bi-level step 1 starts from the segmenter's initial weights drawn from torch seeded
    item_seed(seed, "segmenter_reset", 1, 0), built here by fuse4seg.models, and from phi1; its update is then
    recomputed by plain autograd (inner SGD, upper SGD, lambda 1), and torch's global RNG is not drawn from."""
    from fuse4seg.models import build_model
    from fuse4seg.runkit.batches import item_seed, step_loader
    from fuse4seg.train.loop import Trainer
    from fuse4seg.train.resolve import build_config

    config = build_config({"benchmark": str(bench), "out": str(tmp_path / "run"), "mode": "bilevel",
                           "inner_optimizer": "sgd", "upper_optimizer": "sgd", "lr_lower": LR_LOWER,
                           "lr_upper": LR_UPPER, "seg_options": {"width": 4, "depth": 2},
                           "fusion_options": {"width": 4}, "batch_size": 2, "progress": False, "steps": 2,
                           "seg_reset_every": 1})
    trainer = Trainer(config)
    trainer.pipeline.train(True)

    def batches(step: int) -> tuple[dict, dict]:
        """The fitting and held-out batches of ``step``."""
        return tuple(next(iter(step_loader(trainer.train_set, pool, 2, config.seed, step, step + 1, stream, 0)))
                     for pool, stream in ((trainer.fit_pool, "fit"), (trainer.hold_pool, "holdout")))

    trainer.one_step(*batches(0))
    theta_trained = {k: v.detach().clone() for k, v in trainer.pipeline.seg.named_parameters()}
    phi1 = {k: v.detach().clone() for k, v in trainer.pipeline.fusion.named_parameters()}
    torch.manual_seed(item_seed(config.seed, "segmenter_reset", 1, 0))
    fresh = dict(build_model("unet", in_channels=1, num_classes=4, width=4, depth=2).named_parameters())
    trainer.step = 1
    rng = torch.get_rng_state()
    trainer.one_step(*batches(1))
    assert torch.equal(rng, torch.get_rng_state())
    _, g_fuse, g_seg, theta2 = independent_step(bench, config, LR_LOWER, step=1, phi=phi1, theta=fresh)
    for k, v in trainer.pipeline.seg.named_parameters():
        torch.testing.assert_close(v.detach(), theta2[k], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(theta2[k], theta_trained[k])
    for k, v in trainer.pipeline.fusion.named_parameters():
        torch.testing.assert_close(v.detach(), phi1[k] - LR_UPPER * (g_fuse[k] + g_seg[k]), rtol=1e-4, atol=1e-6)


def test_segmenter_reset_resumes_as_an_uninterrupted_run(bench: Path, tmp_path: Path) -> None:
    """--seg-reset-every 2 over 4 steps, stopped after step 2 (the reset's step) and resumed, ends bit for bit where
    one uninterrupted run does, and apart from a run without resets."""
    args = ("--seg-reset-every", "2")
    run, whole, plain = tmp_path / "run", tmp_path / "whole", tmp_path / "plain"
    assert main([*train_args(bench, run, *args), "--steps", "2"]) == 0
    assert main([*train_args(bench, run, *args), "--steps", "4", "--resume"]) == 0
    assert main([*train_args(bench, whole, *args), "--steps", "4"]) == 0
    assert main([*train_args(bench, plain), "--steps", "4"]) == 0
    a, b, c = (load_checkpoint(r / "last.pt")["models"]["seg"] for r in (run, whole, plain))
    for k, v in a.items():
        assert torch.equal(v, b[k]), k
    assert any(not torch.equal(v, c[k]) for k, v in a.items())
