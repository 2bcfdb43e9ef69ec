"""Sliding-window inference against MONAI's sliding_window_inference (the reference; a dev dependency only)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fuse4seg.errors import ConfigError
from fuse4seg.models import build_model, importance_map, sliding_window
from fuse4seg.models.sliding import window_starts

monai_inferers = pytest.importorskip("monai.inferers")
monai_utils = pytest.importorskip("monai.data.utils")


def _conv_predict(channels: int = 2, classes: int = 3) -> nn.Module:
    """A small random nonlinear predictor: Conv3d 3x3x3 (zero padding, so windows see their borders) + tanh."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(channels, classes, 3, padding=1), nn.Tanh())


CASES = [
    # (volume shape, patch): divisible, not divisible by the patch, smaller than the patch in one axis,
    # smaller in two axes, patch equal to the volume.
    ((1, 2, 16, 16, 16), (8, 8, 8)),
    ((2, 2, 21, 17, 10), (8, 8, 8)),
    ((1, 2, 19, 23, 5), (8, 8, 8)),
    ((1, 2, 6, 30, 3), (8, 7, 9)),
    ((1, 2, 12, 12, 12), (12, 12, 12)),
]


@pytest.mark.parametrize(("shape", "patch"), CASES)
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_matches_monai(shape: tuple[int, ...], patch: tuple[int, int, int], mode: str, overlap: float) -> None:
    """Same output as monai.inferers.sliding_window_inference (constant padding, same batch size) to 1e-6 for
    constant and gaussian blending, overlap 0.25 and 0.5, volumes divisible or not by the patch, smaller than it
    along one or two axes, and a nonlinear conv predictor (measured: identical, max difference 0)."""
    predict = _conv_predict()
    volume = torch.rand(*shape)
    with torch.no_grad():
        ours = sliding_window(predict, volume, patch, overlap, mode, batch_size=3)
        ref = monai_inferers.sliding_window_inference(volume, patch, 3, predict, overlap=overlap, mode=mode)
    assert ours.shape == (shape[0], 3, *shape[2:])
    torch.testing.assert_close(ours, ref.as_tensor() if hasattr(ref, "as_tensor") else ref, rtol=0, atol=1e-6)


def test_matches_monai_through_unet3d_with_sigma_and_batch() -> None:
    """Through a tiny unet-3d with sigma_scale 0.25 and batch size 1 vs 5 (windows of two volumes share batches),
    the result equals MONAI's to 1e-6 and does not depend on the batch size beyond float32 rounding (1e-5)."""
    model = build_model("unet-3d", width=4, depth=2, in_channels=2).eval()
    volume = torch.rand(2, 2, 18, 13, 11)
    with torch.no_grad():
        one = sliding_window(model, volume, (8, 8, 8), 0.5, "gaussian", sigma_scale=0.25, batch_size=1)
        five = sliding_window(model, volume, (8, 8, 8), 0.5, "gaussian", sigma_scale=0.25, batch_size=5)
        ref = monai_inferers.sliding_window_inference(volume, (8, 8, 8), 5, model, overlap=0.5, mode="gaussian",
                                                      sigma_scale=0.25)
    torch.testing.assert_close(five, ref.as_tensor() if hasattr(ref, "as_tensor") else ref, rtol=0, atol=1e-6)
    # float32 convolutions round differently per batch size (measured up to 1.6e-6 here).
    torch.testing.assert_close(one, five, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("size", "patch", "overlap"), [(16, 8, 0.5), (21, 8, 0.25), (8, 8, 0.5), (9, 8, 0.0),
                                                         (100, 3, 0.9), (240, 96, 0.5), (155, 96, 0.5)])
def test_window_starts_match_monai(size: int, patch: int, overlap: float) -> None:
    """Window offsets along one axis equal monai.data.utils.dense_patch_slices' (the last window flush with the
    edge, a step of at least one voxel)."""
    interval = patch if patch == size else max(1, int(patch * (1 - overlap)))
    ref = sorted({s[0].start for s in monai_utils.dense_patch_slices((size,), (patch,), (interval,))})
    assert window_starts(size, patch, overlap) == ref


def test_importance_map_matches_monai_and_is_centred() -> None:
    """The Gaussian map equals monai.data.utils.compute_importance_map, peaks at the centre, is symmetric and
    bounded below by 1e-3; the constant map is ones."""
    for patch in ((8, 8, 8), (7, 9, 4)):
        ours = importance_map(patch, "gaussian", 0.125)
        ref = monai_utils.compute_importance_map(patch, mode="gaussian", sigma_scale=0.125)
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    w = importance_map((9, 9, 9))
    assert float(w[4, 4, 4]) == float(w.max()) == 1.0 and float(w.min()) >= 1e-3
    torch.testing.assert_close(w, w.flip(0).flip(1).flip(2))
    assert torch.equal(importance_map((3, 4, 5), "constant"), torch.ones(3, 4, 5))


def test_identity_predictor_returns_the_volume() -> None:
    """A predictor returning its input gives back the volume exactly in shape and (up to rounding) in value,
    whatever the weights: blending is a weighted mean; padding never leaks into the output."""
    volume = torch.rand(2, 3, 11, 7, 13, dtype=torch.float64)
    out = sliding_window(lambda x: x, volume, (8, 9, 5), overlap=0.5, mode="gaussian")
    torch.testing.assert_close(out, volume, rtol=0, atol=1e-12)


def test_2d_images_work_too() -> None:
    """The same function slides 2-D patches over (N, C, H, W) images."""
    image = torch.rand(1, 1, 20, 13, dtype=torch.float64)
    out = sliding_window(lambda x: 2 * x, image, (8, 8), overlap=0.25, mode="constant")
    torch.testing.assert_close(out, 2 * image, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"patch": (8, 8)}, "patch"),
    ({"patch": (8, 0, 8)}, "patch"),
    ({"patch": (8, 8.5, 8)}, "patch"),
    ({"overlap": 1.0}, "overlap"),
    ({"overlap": -0.1}, "overlap"),
    ({"mode": "triangle"}, "mode"),
    ({"sigma_scale": 0.0}, "sigma_scale"),
    ({"batch_size": 0}, "batch_size"),
    ({"predict": lambda x: x[:, :, :-1]}, "predict"),
])
def test_bad_options_are_config_errors(kwargs: dict, needle: str) -> None:
    """A patch of the wrong length, non-positive or fractional; overlap outside [0, 1); an unknown mode; a
    non-positive sigma_scale or batch size; and a predictor that changes the window size are one-line
    ConfigErrors naming the option."""
    args = {"predict": lambda x: x, "volume": torch.rand(1, 1, 10, 10, 10), "patch": (8, 8, 8), **kwargs}
    with pytest.raises(ConfigError, match=needle) as info:
        sliding_window(**args)
    assert "\n" not in str(info.value)
