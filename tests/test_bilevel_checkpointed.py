"""``checkpointed``: the unrolled hypergradient recomputed segment by segment equals ``unrolled`` (float64, 1e-8)
for every inner optimiser and segment count, on the ridge problem (closed-form recurrence) and a small conv
problem; it runs from the train command line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_bilevel_conv import _rel, _setup
from test_bilevel_ridge import _problem, _recurrence, _upper

from fuse4seg.bilevel import hypergradient, module_hypergradient
from fuse4seg.bilevel.checkpointed import plan_segments, segment_count, segment_lengths
from fuse4seg.bilevel.core import parse_options
from fuse4seg.errors import ConfigError

K = 9
SEGMENTS = [1, 2, math.isqrt(K), K, None]  # None: the default, planned from one measured step
OPTIMIZERS = [("sgd", 0.1), ("momentum", 0.05), ("adam", 0.01)]


def _close(a: dict, b: dict) -> float:
    """Largest relative difference over keys."""
    return max(float((a[k] - b[k]).abs().max()) / max(float(b[k].abs().max()), 1e-300) for k in b)


@pytest.mark.parametrize("segments", SEGMENTS)
@pytest.mark.parametrize("optimizer,lr", OPTIMIZERS)
def test_equals_unrolled_on_ridge(optimizer: str, lr: float, segments: int | None) -> None:
    """Ridge problem: hypergradient, new lower parameters and optimiser state equal unrolled's to 1e-8."""
    p = _problem()
    w0 = {"w": torch.linspace(-1, 1, p["d"], dtype=torch.float64)}
    common = {"steps": K, "lr": lr, "optimizer": optimizer}
    ref = hypergradient(_upper(p), w0, p["lower_loss"], p["upper_loss"], "unrolled", **common)
    res = hypergradient(_upper(p), w0, p["lower_loss"], p["upper_loss"], "checkpointed",
                        checkpoint_segments=segments, **common)
    assert _close(res.grads, ref.grads) < 1e-8
    assert _close(res.lower, ref.lower) < 1e-12
    for key, value in ref.state.items():
        assert _close(res.state[key], value) < 1e-12 if isinstance(value, dict) else res.state[key] == value
    if segments is None:
        assert res.info["boundary_bytes"] == 8 * p["d"] * (1 + {"sgd": 0, "momentum": 1, "adam": 2}[optimizer])
        assert res.info["segments"] == plan_segments(K, res.info["step_bytes"], res.info["boundary_bytes"])
    else:
        assert res.info["segments"] == segments
    if optimizer == "sgd":  # and the closed-form K-step recurrence
        assert float(res.grads["lam"]) == pytest.approx(_recurrence(p, w0["w"], lr, K), rel=1e-8)


@pytest.mark.parametrize("segments", SEGMENTS)
@pytest.mark.parametrize("optimizer,lr", OPTIMIZERS)
def test_equals_unrolled_on_conv(optimizer: str, lr: float, segments: int | None) -> None:
    """Small conv problem (GroupNorm, tanh; direct term in the upper loss), warm-started state: equal to 1e-8."""
    p = _setup(seed=3)
    common = {"steps": K, "lr": lr, "optimizer": optimizer}
    warm = hypergradient(p["upper"], p["lower"], p["lower_loss"], p["upper_loss"], "first-order", steps=2,
                         lr=lr, optimizer=optimizer)
    common["state"] = warm.state
    ref = hypergradient(p["upper"], warm.lower, p["lower_loss"], p["upper_loss"], "unrolled", **common)
    res = hypergradient(p["upper"], warm.lower, p["lower_loss"], p["upper_loss"], "checkpointed",
                        checkpoint_segments=segments, **common)
    assert _rel(res.grads, ref.grads) < 1e-8
    assert _rel(res.lower, ref.lower) < 1e-12
    assert res.info["lower_loss"] == pytest.approx(ref.info["lower_loss"], rel=1e-12)


def test_module_adapter_and_edge_counts() -> None:
    """Through module_hypergradient; K = 0 (direct term only) and S > K (clamped to K)."""
    p = _setup(seed=1)
    x_tr, y_tr, x_val, y_val = p["data"]
    ce = torch.nn.functional.cross_entropy
    losses = (lambda f, s: ce(s(f(x_tr)), y_tr), lambda f, s: ce(s(f(x_val)), y_val) + 0.1 * (f(x_val) ** 2).mean())
    ref = module_hypergradient(p["fuse"], p["seg"], *losses, "unrolled", steps=3, lr=0.2)
    res = module_hypergradient(p["fuse"], p["seg"], *losses, "checkpointed", steps=3, lr=0.2, checkpoint_segments=50)
    assert res.info["segments"] == 3 and _rel(res.grads, ref.grads) < 1e-8
    zero = hypergradient(p["upper"], p["lower"], p["lower_loss"], p["upper_loss"], "checkpointed", steps=0)
    direct = hypergradient(p["upper"], p["lower"], p["lower_loss"], p["upper_loss"], "unrolled", steps=0)
    assert _rel(zero.grads, direct.grads) == 0.0


def test_segment_layout_and_option_check() -> None:
    """S planned unless given (clamped to K); the plan by hand; lengths as equal as possible; a bad S is a
    ConfigError naming it."""
    assert segment_count(parse_options({"steps": 10})) is None and segment_count(parse_options({"steps": 1})) == 1
    assert segment_count(parse_options({"steps": 10, "checkpoint_segments": 20})) == 10
    # ceil(K / S) a + S b with a = 409, b = 7.4: S = K = 10 (409 + 74 = 483); at K = 200,
    # S = 100 (818 + 740 = 1558) beats 200 (409 + 1480) and 67 (3 * 409 + 495.8); boundaries dearer than steps: S = 1
    assert plan_segments(10, 409, 7.4) == 10 and plan_segments(200, 409, 7.4) == 100
    assert plan_segments(10, 1, 100) == 1 and plan_segments(4, 10, 5) == 4  # tie of S = 2 and 4 (30): the larger
    assert segment_lengths(10, 4) == [3, 3, 2, 2] and segment_lengths(9, 9) == [1] * 9
    for bad in (0, 1.5, -2):
        with pytest.raises(ConfigError, match="checkpoint_segments"):
            parse_options({"checkpoint_segments": bad})


def test_train_command_line_checkpointed(bench: Path, tmp_path: Path) -> None:
    """``fuse4seg train --hypergrad checkpointed --checkpoint-segments 2`` trains (2 steps, K = 3)."""
    from fuse4seg.cli import main

    out = tmp_path / "run"
    code = main(["train", "--benchmark", str(bench), "--out", str(out), "--hypergrad", "checkpointed",
                 "--checkpoint-segments", "2", "--inner-steps", "3", "--steps", "2", "--batch-size", "2",
                 "--seg-width", "4", "--seg-depth", "2", "--fusion-width", "4", "--eval-slices", "2", "--no-progress"])
    assert code == 0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["config"]["hypergrad"] == "checkpointed"
    assert ckpt["config"]["checkpoint_segments"] == 2


def test_equals_unrolled_in_3d() -> None:
    """unet-3d under fusion-cnn-3d on 8^3 volumes (float64, inner Adam, default plan): equal to unrolled to 1e-8."""
    from fuse4seg.models import build_model

    torch.manual_seed(0)
    fuse = build_model("fusion-cnn-3d", in_channels=2, width=2, layers=2).double()
    seg = build_model("unet-3d", in_channels=1, num_classes=3, width=2, depth=2).double()
    x_tr, x_val = torch.rand(1, 2, 8, 8, 8, dtype=torch.float64), torch.rand(1, 2, 8, 8, 8, dtype=torch.float64)
    y_tr, y_val = torch.randint(0, 3, (1, 8, 8, 8)), torch.randint(0, 3, (1, 8, 8, 8))
    ce = torch.nn.functional.cross_entropy
    losses = (lambda f, s: ce(s(f(x_tr)), y_tr), lambda f, s: ce(s(f(x_val)), y_val) + 0.1 * (f(x_val) ** 2).mean())
    common = {"steps": 4, "lr": 0.01, "optimizer": "adam"}
    ref = module_hypergradient(fuse, seg, *losses, "unrolled", **common)
    res = module_hypergradient(fuse, seg, *losses, "checkpointed", **common)
    assert 1 <= res.info["segments"] <= 4 and _rel(res.grads, ref.grads) < 1e-8
