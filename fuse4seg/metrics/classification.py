"""Multi-label classification metrics on NumPy arrays (slice-level WT / TC / ET presence).

Conventions: a sample is predicted positive when its probability is >= ``threshold`` (sklearn's ``roc_curve``
reading of a threshold). AUROC is the Mann-Whitney statistic with average ranks for tied scores (equal to
sklearn's ``roc_auc_score``); it is undefined (nan) when only one class is present. An empty denominator counts
as nothing done wrong, as in :mod:`fuse4seg.metrics.segmentation`: precision is 1.0 with no predicted positives,
recall 1.0 with no positives, and F1 = 2TP / (2TP + FP + FN) is 1.0 with neither (sklearn's
``zero_division=1.0``). Macro means are plain means over classes, nan-skipping for AUROC; macro support is the
total number of positive labels (as sklearn's classification report).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from fuse4seg.conventions import REGIONS
from fuse4seg.errors import ConfigError, DataError

CLASSIFICATION_METRIC_NAMES: tuple[str, ...] = ("auroc", "accuracy", "f1", "precision", "recall", "support")


def _check_targets(targets: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``targets`` as a bool array of ``shape``; DataError for another shape or a value other than 0 and 1."""
    t = np.asarray(targets)
    if t.shape != shape:
        raise DataError(f"targets have shape {t.shape}, scores have shape {shape}")
    if t.dtype != bool and not (np.issubdtype(t.dtype, np.number) and np.isin(t, (0, 1)).all()):
        raise DataError("targets must be 0 or 1 (binary presence labels)")
    return t.astype(bool)


def _check_scores(scores: np.ndarray, name: str) -> np.ndarray:
    """``scores`` as float64; DataError when not numeric or not finite."""
    s = np.asarray(scores)
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == bool) or not np.isfinite(s).all():
        raise DataError(f"{name} must be finite numbers")
    return s.astype(np.float64)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of (N,) ``values`` in increasing order, tied values sharing the mean of their ranks."""
    if values.size == 0:
        return np.empty(0, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], ordered.size]
    # A tie group spanning sorted positions start..end-1 holds ranks start+1..end, whose mean is (start+1+end)/2.
    group = np.cumsum(new_group) - 1
    ranks = np.empty(ordered.size, dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]
    return ranks


def auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve of (N,) scores (any real values, higher = more positive) for (N,) 0/1 targets,
    in [0, 1]; nan when the targets hold only one class. DataError for mismatched shapes or bad values."""
    s = _check_scores(scores, "scores")
    if s.ndim != 1:
        raise DataError(f"auroc expects (N,) scores, got shape {s.shape}")
    t = _check_targets(targets, s.shape)
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U of the positives over the negatives, normalised by the number of pairs.
    u = average_ranks(s)[t].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def classification_metrics(probabilities: np.ndarray, targets: np.ndarray, names: Sequence[str] = tuple(REGIONS),
                           threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Per-class and macro metrics of (N, K) probabilities in [0, 1] against (N, K) 0/1 targets.

    Returns {name: {"auroc", "accuracy", "f1", "precision", "recall", "support"}} for each of the K ``names``
    (default WT, TC, ET) plus "macro"; conventions in the module docstring. DataError for bad arrays,
    ConfigError for ``names`` of the wrong length or a ``threshold`` outside [0, 1].
    """
    p = _check_scores(probabilities, "probabilities")
    if p.ndim != 2 or p.shape[0] == 0:
        raise DataError(f"probabilities must be (N, K) with N >= 1, got shape {p.shape}")
    if p.min() < 0.0 or p.max() > 1.0:
        raise DataError("probabilities must lie in [0, 1] (apply a sigmoid to logits first)")
    t = _check_targets(targets, p.shape)
    names = [str(n) for n in names]
    if len(names) != p.shape[1] or len(set(names) | {"macro"}) != len(names) + 1:
        raise ConfigError(f"need {p.shape[1]} distinct class names other than 'macro', got {names}", option="names")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"must be a number in [0, 1], got {threshold!r}", option="threshold")

    pred = p >= threshold
    tp = (pred & t).sum(axis=0)
    fp = (pred & ~t).sum(axis=0)
    fn = (~pred & t).sum(axis=0)
    n = p.shape[0]

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        """num / den per class, 1.0 where den == 0 (nothing was done wrong)."""
        return np.where(den > 0, num / np.maximum(den, 1), 1.0)

    per_class = {
        "auroc": np.array([auroc(p[:, k], t[:, k]) for k in range(p.shape[1])]),
        "accuracy": (n - fp - fn) / n,
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "support": t.sum(axis=0).astype(np.float64),
    }
    out = {name: {m: float(per_class[m][k]) for m in CLASSIFICATION_METRIC_NAMES} for k, name in enumerate(names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # every class nan -> nan, not a "mean of empty" warning
        macro_auroc = float(np.nanmean(per_class["auroc"]))
    means = {m: float(per_class[m].mean()) for m in ("accuracy", "f1", "precision", "recall")}
    out["macro"] = {"auroc": macro_auroc, **means, "support": float(per_class["support"].sum())}
    return out
