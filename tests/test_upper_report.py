"""The upper-objective analysis (experiments/upper.py): Holm, TOST, the hierarchical bootstrap and the readings,
on hand-worked cases."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import upper


def test_holm_by_hand() -> None:
    """p = (0.01, 0.04, 0.03): sorted 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06."""
    assert upper.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert upper.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_tost_by_hand() -> None:
    """diff (0.01, 0.00, -0.01, 0.02): mean 0.005, sd 0.012910, se 0.006455, n - 1 = 3; margin 0.02:
    t_low = (0.005 + 0.02) / se = 3.8730 -> p 0.01527; t_high = (0.005 - 0.02) / se = -2.3238 -> p 0.05136."""
    p = upper.tost_p(np.array([0.01, 0.0, -0.01, 0.02]), 0.02)
    assert p == pytest.approx(0.05136, abs=2e-4)
    assert upper.tost_p(np.zeros(3), 0.02) == 0.0 and upper.tost_p(np.full(3, 0.5), 0.02) == 1.0


def test_hierarchical_bootstrap_of_a_constant_shift_is_the_shift() -> None:
    """Seeds that agree, and every case of a is b's + 0.1: every draw differs by exactly 0.1."""
    b = np.tile(np.random.default_rng(1).random(8), (3, 1))
    lo, hi = upper.hierarchical_bootstrap(b + 0.1, b, np.random.default_rng(0))
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_hierarchical_bootstrap_covers_the_seed_spread() -> None:
    """Two rows whose seeds differ by +-0.2 around the same case means: the interval straddles 0 and is wider
    than the cases alone would make it (the cases are identical across rows)."""
    cases = np.linspace(0.5, 0.9, 8)
    a = np.stack([cases + 0.2, cases - 0.2])
    lo, hi = upper.hierarchical_bootstrap(a, cases[None, :], np.random.default_rng(0))
    assert lo < 0 < hi and hi - lo > 0.3


def test_readings() -> None:
    """better / worse need Holm p < 0.05; level needs TOST p < 0.05; otherwise undecided."""
    assert upper.reading({"p_holm": 0.01, "delta": 0.03, "tost_p": 0.5}) == "better"
    assert upper.reading({"p_holm": 0.01, "delta": -0.03, "tost_p": 0.5}) == "worse"
    assert upper.reading({"p_holm": 0.4, "delta": 0.001, "tost_p": 0.01}) == "level"
    assert upper.reading({"p_holm": 0.4, "delta": 0.001, "tost_p": 0.2}) == "undecided"
    assert math.isclose(upper.MARGIN, 0.02)
