"""Slice-level WT/TC/ET presence classification: metrics against scikit-learn and hand-worked cases, presence
targets of a hand-built label, and the multimodal classifier's shapes, padding, gradients and functional calls."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_functional_call_matches
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from torch import nn

from fuse4seg.errors import ConfigError, DataError
from fuse4seg.metrics.classification import (
    CLASSIFICATION_METRIC_NAMES,
    auroc,
    average_ranks,
    classification_metrics,
)
from fuse4seg.models.blocks import segmenter_plan
from fuse4seg.models.classifier import MultimodalClassifier, presence_targets
from fuse4seg.models.feature_fusion import FeatureFusionSegmenter
from fuse4seg.runkit.pretrained import encoder_facts


def tiny(**options) -> MultimodalClassifier:
    """A small classifier (width 4, depth 3 unless given) with a fixed seed."""
    torch.manual_seed(0)
    return MultimodalClassifier(**{"width": 4, "depth": 3, **options})


# ---------------------------------------------------------------------------------------------- metrics


def test_average_ranks_match_scipy_with_ties() -> None:
    """Average ranks of values with many ties equal scipy's rankdata(method="average")."""
    values = np.random.default_rng(0).integers(0, 7, size=200).astype(float)
    np.testing.assert_array_equal(average_ranks(values), rankdata(values, method="average"))
    assert average_ranks(np.array([])).shape == (0,)


def test_auroc_hand_worked() -> None:
    """Four samples: scores (0.1, 0.4, 0.35, 0.8) for targets (0, 0, 1, 1) order 3 of the 4 positive-negative
    pairs correctly -> 0.75; with a tie, (0.2, 0.5, 0.5, 0.9) for (0, 1, 0, 1): pairs won 1 + 0.5 + 1 + 1 -> 0.875."""
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(np.array([0.2, 0.5, 0.5, 0.9]), np.array([0, 1, 0, 1])) == pytest.approx(0.875)
    assert auroc(np.array([3.0, -1.0]), np.array([True, False])) == 1.0  # any real scores, bool targets
    assert auroc(np.array([3.0, -1.0]), np.array([0, 1])) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed: int) -> None:
    """On 300 random scores rounded to one decimal (many ties), AUROC equals sklearn's roc_auc_score."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, size=300)
    scores = np.round(rng.random(300) * 0.6 + 0.3 * targets, 1)
    assert auroc(scores, targets) == pytest.approx(roc_auc_score(targets, scores), abs=1e-12)


def test_auroc_is_nan_for_one_class_and_rejects_bad_input() -> None:
    """Only positives, only negatives or no samples: nan; mismatched shapes, non-binary targets or non-finite
    scores: DataError."""
    assert math.isnan(auroc(np.array([0.1, 0.9]), np.array([1, 1])))
    assert math.isnan(auroc(np.array([0.1, 0.9]), np.array([0, 0])))
    assert math.isnan(auroc(np.array([]), np.array([])))
    with pytest.raises(DataError, match="shape"):
        auroc(np.array([0.1, 0.9]), np.array([0, 1, 1]))
    with pytest.raises(DataError, match="0 or 1"):
        auroc(np.array([0.1, 0.9]), np.array([0, 2]))
    with pytest.raises(DataError, match="finite"):
        auroc(np.array([0.1, np.nan]), np.array([0, 1]))


def test_classification_metrics_hand_worked() -> None:
    """Four slices, three classes at threshold 0.5 (>= is positive), every value worked by hand:
    WT: targets 1100, predicted 1010 -> TP 1, FP 1, FN 1: accuracy 0.5, precision 0.5, recall 0.5, F1 0.5;
        positives (0.9, 0.4) vs negatives (0.6, 0.1) win 3 of 4 pairs -> AUROC 0.75.
    TC: no positives and nothing predicted -> accuracy, precision, recall, F1 all 1.0; AUROC nan.
    ET: targets 1000, predicted 1010 (0.5 counts) -> TP 1, FP 1: accuracy 0.75, precision 0.5, recall 1, F1 2/3;
        0.5 beats 0.2 and 0.1, loses to 0.7 -> AUROC 2/3."""
    probabilities = np.array([[0.9, 0.1, 0.5], [0.4, 0.2, 0.2], [0.6, 0.3, 0.7], [0.1, 0.49, 0.1]])
    targets = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    out = classification_metrics(probabilities, targets)
    expected = {
        "WT": {"auroc": 0.75, "accuracy": 0.5, "f1": 0.5, "precision": 0.5, "recall": 0.5, "support": 2.0},
        "TC": {"auroc": math.nan, "accuracy": 1.0, "f1": 1.0, "precision": 1.0, "recall": 1.0, "support": 0.0},
        "ET": {"auroc": 2 / 3, "accuracy": 0.75, "f1": 2 / 3, "precision": 0.5, "recall": 1.0, "support": 1.0},
        "macro": {"auroc": (0.75 + 2 / 3) / 2, "accuracy": 2.25 / 3, "f1": (0.5 + 1 + 2 / 3) / 3,
                  "precision": 2 / 3, "recall": 2.5 / 3, "support": 3.0},
    }
    assert list(out) == ["WT", "TC", "ET", "macro"]
    for name, metrics in expected.items():
        assert list(out[name]) == list(CLASSIFICATION_METRIC_NAMES)
        for metric, value in metrics.items():
            assert out[name][metric] == pytest.approx(value, nan_ok=True), (name, metric)
    # A higher threshold flips ET's 0.5 to negative: TP 0, FP 1, FN 1 -> F1 0, precision 0, recall 0.
    strict = classification_metrics(probabilities, targets, threshold=0.55)["ET"]
    assert (strict["f1"], strict["precision"], strict["recall"], strict["accuracy"]) == (0.0, 0.0, 0.0, 0.5)


@pytest.mark.parametrize("seed", range(4))
def test_classification_metrics_match_sklearn(seed: int) -> None:
    """Random probabilities with ties (two decimals) for four classes, one of them never positive and never
    predicted: per-class AUROC, accuracy, F1, precision and recall equal sklearn's (zero_division=1.0), support
    counts positives, macro values are the (nan-skipping for AUROC) means."""
    rng = np.random.default_rng(seed)
    n = 257
    targets = rng.integers(0, 2, size=(n, 4))
    probabilities = np.round(np.clip(rng.random((n, 4)) * 0.7 + 0.3 * targets, 0, 1), 2)
    targets[:, 3] = 0
    probabilities[:, 3] = np.minimum(probabilities[:, 3], 0.4)
    names = ("a", "b", "c", "d")
    threshold = 0.45
    out = classification_metrics(probabilities, targets, names=names, threshold=threshold)
    pred = probabilities >= threshold
    for k, name in enumerate(names):
        t, p = targets[:, k], pred[:, k]
        ref = {
            "accuracy": accuracy_score(t, p),
            "f1": f1_score(t, p, zero_division=1.0),
            "precision": precision_score(t, p, zero_division=1.0),
            "recall": recall_score(t, p, zero_division=1.0),
            "support": float(t.sum()),
        }
        for metric, value in ref.items():
            assert out[name][metric] == pytest.approx(value, abs=1e-12), (name, metric)
        if k < 3:
            assert out[name]["auroc"] == pytest.approx(roc_auc_score(t, probabilities[:, k]), abs=1e-12)
    assert math.isnan(out["d"]["auroc"]) and out["d"]["f1"] == 1.0
    assert out["macro"]["auroc"] == pytest.approx(np.mean([out[c]["auroc"] for c in "abc"]))
    assert out["macro"]["f1"] == pytest.approx(f1_score(targets, pred, average="macro", zero_division=1.0))


def test_classification_metrics_all_nan_auroc_and_bad_input() -> None:
    """All-negative targets give a nan macro AUROC without a warning; bad arrays are DataError, bad names or
    threshold ConfigError naming the option."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = classification_metrics(np.full((3, 3), 0.2), np.zeros((3, 3)))
    assert math.isnan(out["macro"]["auroc"]) and out["macro"]["f1"] == 1.0
    good_p, good_t = np.full((2, 3), 0.5), np.zeros((2, 3))
    for p, t, needle in ((good_p, np.zeros((2, 2)), "shape"), (good_p + 1, good_t, "sigmoid"),
                         (np.full((0, 3), 0.5), np.zeros((0, 3)), "N >= 1"), (good_p[0], good_t[0], "N, K"),
                         (good_p, good_t - 1, "0 or 1")):
        with pytest.raises(DataError, match=needle):
            classification_metrics(p, t)
    with pytest.raises(ConfigError, match="names"):
        classification_metrics(good_p, good_t, names=("WT", "TC"))
    with pytest.raises(ConfigError, match="names"):
        classification_metrics(good_p, good_t, names=("WT", "TC", "macro"))
    with pytest.raises(ConfigError, match="threshold"):
        classification_metrics(good_p, good_t, threshold=1.5)


# ---------------------------------------------------------------------------------------------- targets


def test_presence_targets_hand_built() -> None:
    """Four 4x5 labels: empty -> none; edema only -> WT; necrosis -> WT, TC; enhancing -> WT, TC, ET."""
    label = torch.zeros(4, 4, 5, dtype=torch.int64)
    label[1, 2, 3] = 2
    label[2, 0, 0] = 1
    label[2, 3, 4] = 2
    label[3, 1, 1:3] = 3
    expected = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.float32)
    out = presence_targets(label)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(presence_targets(label.to(torch.uint8)[:, None]), expected)  # (N, D, H, W) too


def test_presence_targets_rejects_bad_labels() -> None:
    """Float labels, values outside 0..3 and a missing batch axis are DataError."""
    for bad, needle in ((torch.zeros(2, 3, 3), "dtype"), (torch.full((2, 3, 3), 4), "outside"),
                        (torch.zeros(3, dtype=torch.int64), "shape")):
        with pytest.raises(DataError, match=needle):
            presence_targets(bad)


# ---------------------------------------------------------------------------------------------- classifier


@pytest.mark.parametrize("in_channels", [1, 2, 3])
def test_classifier_output_shape_at_odd_sizes(in_channels: int) -> None:
    """(N, C, 37, 41) -> (N, 3) finite logits for 1, 2 and 3 modalities; a 4-class head gives (N, 4)."""
    model = tiny(in_channels=in_channels)
    assert model.kind == "classification" and len(model.encoders) == in_channels
    with torch.no_grad():
        out = model(torch.rand(2, in_channels, 37, 41))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    with torch.no_grad():
        assert tiny(in_channels=in_channels, num_classes=4)(torch.rand(1, in_channels, 37, 41)).shape == (1, 4)


def test_classifier_3d_shape_and_functional_call() -> None:
    """dims=3: (N, 2, 5, 6, 7) -> (N, 3); functional_call equals the module in output and gradients."""
    model = tiny(depth=2, dims=3, norm="instance")
    x = torch.rand(2, 2, 5, 6, 7)
    with torch.no_grad():
        assert model(x).shape == (2, 3)
    assert_functional_call_matches(model, x)


def test_classifier_pads_with_far_end_zeros() -> None:
    """A 37x41 input gives the same logits as the same input zero-padded by hand to 40x48 (the next multiples of
    2^3), so the internal padding is exactly bottom/right zeros."""
    model = tiny()
    x = torch.rand(2, 2, 37, 41)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(F.pad(x, (0, 7, 0, 3))))


@pytest.mark.parametrize("norm", ["group", "instance"])
def test_classifier_functional_call_matches_module(norm: str) -> None:
    """With perturbed parameters, torch.func.functional_call equals the module, output and gradients (2-D)."""
    model = tiny(norm=norm)
    assert_functional_call_matches(model, torch.rand(2, 2, 37, 41))


def test_classifier_gradients_reach_every_parameter() -> None:
    """A random linear function of the logits gives every parameter a finite, non-zero gradient."""
    model = tiny()
    out = model(torch.rand(2, 2, 37, 41))
    (out * torch.randn_like(out)).sum().backward()
    for k, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), k
        assert float(p.grad.abs().max()) > 0, k


@pytest.mark.parametrize("norm", ["group", "instance"])
def test_classifier_has_no_batchnorm(norm: str) -> None:
    """No BatchNorm module, a Group/InstanceNorm present, and train() and eval() give identical logits."""
    model = tiny(norm=norm)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, (nn.GroupNorm, nn.InstanceNorm2d)) for m in model.modules())
    x = torch.rand(2, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.train()(x), model.eval()(x))


def test_classifier_parameter_count_by_hand() -> None:
    """Defaults (2 modalities, width 16, depth 4): two 1-channel UNet encoders, a DoubleConv from 2 x 256 to 256
    bottleneck maps (GroupNorm: weight + bias per map, no conv bias) and a 256 -> 3 linear head."""
    def double_conv(cin: int, c: int) -> int:
        return 9 * cin * c + 2 * c + 9 * c * c + 2 * c

    c = [16 * 2**i for i in range(5)]
    encoder = double_conv(1, c[0]) + sum(double_conv(c[i - 1], c[i]) for i in range(1, 5))
    total = 2 * encoder + double_conv(2 * c[4], c[4]) + c[4] * 3 + 3
    assert sum(p.numel() for p in MultimodalClassifier().parameters()) == total
    assert MultimodalClassifier().embedding_dim == c[4]


def test_classifier_encoders_take_feature_fusion_and_pretrained_weights() -> None:
    """Each encoders[i] has the same facts and state-dict layout as a FeatureFusionSegmenter encoder, so the
    weights of one (or of a ``fuse4seg pretrain`` encoder) load into it unchanged."""
    model = tiny(norm="instance")
    torch.manual_seed(3)
    other = FeatureFusionSegmenter(width=4, depth=3, norm="instance")
    for mine, theirs in zip(model.encoders, other.encoders):
        assert encoder_facts(mine) == encoder_facts(theirs) == {
            "width": 4, "depth": 3, "norm": "instance", "dims": 2, "in_channels": 1}
        mine.load_state_dict(theirs.state_dict())
        for k, v in theirs.state_dict().items():
            torch.testing.assert_close(mine.state_dict()[k], v)
    assert [stage[0][0].out_channels for stage in model.encoders[0]] == segmenter_plan(2, 3, 4, 3, "group").channels


def test_classifier_options_and_input_are_checked() -> None:
    """A bad option is a ConfigError naming it; input with the wrong channel count or rank is a ConfigError."""
    for bad, needle in (({"width": 0}, "width"), ({"depth": 1.5}, "depth"), ({"norm": "batch"}, "norm"),
                        ({"num_classes": 0}, "num_classes"), ({"in_channels": True}, "in_channels"),
                        ({"dims": 4}, "dims")):
        with pytest.raises(ConfigError, match=needle):
            MultimodalClassifier(**bad)
    model = tiny()
    for x in (torch.rand(1, 3, 16, 16), torch.rand(1, 2, 4, 16, 16)):
        with pytest.raises(ConfigError, match="expects input"):
            model(x)
