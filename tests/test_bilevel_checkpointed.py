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
from fuse4seg.bilevel.checkpointed import segment_count, segment_lengths
from fuse4seg.bilevel.core import parse_options
from fuse4seg.errors import ConfigError

K = 9
SEGMENTS = [1, 2, math.isqrt(K), K, None]  # None: the default ceil(sqrt(K))
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
    assert res.info["segments"] == (segments or math.ceil(math.sqrt(K)))
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
    """Default S = ceil(sqrt(K)); lengths as equal as possible; a bad S is a ConfigError naming it."""
    assert segment_count(parse_options({"steps": 10})) == 4
    assert segment_count(parse_options({"steps": 10, "checkpoint_segments": 20})) == 10
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
