"""`fuse` geometry: the crop/resize of build-benchmark is inverted back onto the input grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fuse4seg.data.release.geometry import crop_resize, square_box
from fuse4seg.inference.fuse import _paste, predict_volume
from fuse4seg.train.config import TrainConfig
from fuse4seg.train.networks import Pipeline


def smooth_volume(shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth (X, Y, Z) float32 volume in [0, 1] (bilinear resampling is nearly exact on it)."""
    x, y, z = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    return (0.5 + 0.25 * np.sin(3 * x + z) * np.cos(2 * y)).astype(np.float32)


def test_paste_inverts_crop_resize_inside_the_box() -> None:
    """crop_resize to 48 px then _paste back: close to the input inside the box, zero outside."""
    vol = smooth_volume((60, 56, 3))
    mask = np.zeros((60, 56), bool)
    mask[10:50, 8:44] = True
    box = square_box(mask)
    slices = np.moveaxis(vol, -1, 0)[:, None]  # (Z, 1, X, Y)
    small, _ = crop_resize(slices, np.zeros((3, 60, 56), np.uint8), box, 48)
    back = _paste(torch.from_numpy(small), box, (60, 56)).numpy()
    x0, x1, y0, y1 = max(box[0], 0), min(box[1], 60), max(box[2], 0), min(box[3], 56)
    inner = (slice(None), 0, slice(x0 + 1, x1 - 1), slice(y0 + 1, y1 - 1))
    assert np.abs(back[inner] - slices[inner]).max() < 0.02
    outside = np.ones((60, 56), bool)
    outside[x0:x1, y0:y1] = False
    assert np.all(back[:, 0][:, outside] == 0)


class _Threshold(torch.nn.Module):
    """A 'segmenter' with fixed logits: ET where the input exceeds 0.6, background elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> (N, 4, H, W) logits."""
        et = (x[:, :1] > 0.6).float()
        return torch.cat([1 - et, torch.zeros_like(et), torch.zeros_like(et), et], dim=1)


def test_predict_volume_maps_labels_back_to_the_input_grid() -> None:
    """With a known segmenter, labels on the full grid follow the input (resized path) and the brain mask."""
    vol = smooth_volume((60, 60, 4))
    images = np.stack([vol] * 4)
    brain = np.zeros((60, 60, 4), bool)
    brain[5:55, 5:55] = True
    config = TrainConfig(benchmark="b", out="o", mode="direct", inputs=("t1",))
    pipeline = Pipeline(None, _Threshold(), config.fusion_inputs, config.seg_inputs())
    fused, labels = predict_volume(pipeline, images, brain, (48, 48), torch.device("cpu"), slice_size=48)
    assert fused is None and labels.shape == (60, 60, 4) and labels.dtype == np.uint8
    expected = np.where((vol > 0.6) & brain, 3, 0)
    inside = np.zeros_like(brain)
    inside[7:53, 7:53] = True  # away from the box edge, where resampling blurs
    agree = (labels == expected)[inside].mean()
    assert agree > 0.97 and not labels[~brain].any()


def test_predict_volume_resizes_through_the_shared_geometry_helper(monkeypatch) -> None:
    """fuse resizes 40 slices x 4 modalities (160 channels, over OpenCV's 128) with the benchmark's own
    geometry.resize_planes (one helper, not a copy), giving labels on the full input grid."""
    calls = _count_resizes(monkeypatch)
    images = np.stack([smooth_volume((50, 50, 40))] * 4)
    brain = np.ones((50, 50, 40), bool)
    config = TrainConfig(benchmark="b", out="o", mode="direct", inputs=("t1",))
    pipeline = Pipeline(None, _Threshold(), config.fusion_inputs, config.seg_inputs())
    _, labels = predict_volume(pipeline, images, brain, (32, 32), torch.device("cpu"), slice_size=32)
    assert calls == [160] and labels.shape == (50, 50, 40)


def _count_resizes(monkeypatch) -> list[int]:
    """Spy on geometry.resize_planes: the returned list receives the number of planes of each call."""
    from fuse4seg.data.release import geometry

    calls: list[int] = []
    original = geometry.resize_planes
    monkeypatch.setattr(geometry, "resize_planes", lambda planes, size, interp: calls.append(len(planes))
                        or original(planes, size, interp))
    return calls


def test_native_size_case_is_cropped_when_the_benchmark_recorded_its_size(monkeypatch) -> None:
    """A 48 x 48 case for a run trained on a --size 48 benchmark (slice_size 48) is still cropped to its
    brain box and resized, as build-benchmark did (before the fix it was used uncropped); slice_size 0 (volume
    size kept) uses slices as they are (no resize at equal sizes) and refuses other sizes. (Benchmarks without
    the attribute, format 1, are no longer read, so the old size guess is gone.)"""
    from fuse4seg.errors import ConfigError
    from fuse4seg.inference.fuse import uses_crop

    vol = smooth_volume((48, 48, 3))
    images = np.stack([vol] * 4)
    brain = np.zeros((48, 48, 3), bool)
    brain[12:36, 10:34] = True
    config = TrainConfig(benchmark="b", out="o", mode="direct", inputs=("t1",))
    pipeline = Pipeline(None, _Threshold(), config.fusion_inputs, config.seg_inputs())
    calls = _count_resizes(monkeypatch)
    _, cropped = predict_volume(pipeline, images, brain, (48, 48), torch.device("cpu"), slice_size=48)
    assert calls == [12]
    # Independently: the 24 x 24 brain box blown up to 48 x 48, thresholded, and resized back.
    box = square_box(brain.any(axis=2))
    assert box == (12, 36, 10, 34)
    small = cv2_resize_stack(np.moveaxis(vol, -1, 0)[:, 12:36, 10:34], 48)
    back = torch.nn.functional.interpolate(torch.from_numpy((small > 0.6).astype(np.float32))[:, None],
                                           size=(24, 24), mode="bilinear", align_corners=False)[:, 0].numpy()
    inner = (slice(14, 34), slice(12, 32))
    expected = np.where(np.moveaxis(back, 0, -1) > 0.5, 3, 0)[2:22, 2:22]
    assert (cropped[inner] == expected).mean() > 0.97 and not cropped[~brain].any()
    calls.clear()
    _, plain = predict_volume(pipeline, images, brain, (48, 48), torch.device("cpu"), slice_size=0)
    assert calls == [] and np.array_equal(plain, np.where((vol > 0.6) & brain, 3, 0))
    assert not uses_crop((48, 48), (48, 48), 0) and uses_crop((60, 56), (48, 48), 48)
    with pytest.raises(ConfigError, match="kept the volume size 48 x 48"):
        uses_crop((60, 60), (48, 48), 0)
    with pytest.raises(ConfigError, match="slice_size 32 disagrees"):
        uses_crop((48, 48), (48, 48), 32)


def cv2_resize_stack(planes: np.ndarray, size: int) -> np.ndarray:
    """(P, h, w) float32 -> (P, size, size) by cv2.resize (bilinear) plane by plane."""
    import cv2

    return np.stack([cv2.resize(np.ascontiguousarray(p, dtype=np.float32), (size, size),
                                interpolation=cv2.INTER_LINEAR) for p in planes])


def test_gallery_panels_join_tiles_with_white_gaps() -> None:
    """panel_row: sources, fused, truth, prediction side by side with 2 px white columns between them; panel_grid
    stacks rows with 2 px white rows: shapes, spacers and tile contents checked by hand."""
    from fuse4seg.runkit.visual import LABEL_COLOURS, panel_grid, panel_row

    sources = np.stack([np.zeros((3, 4)), np.ones((3, 4))]).astype(np.float32)
    truth = np.zeros((3, 4), np.uint8)
    truth[0, 0] = 3
    row = panel_row(sources, np.full((3, 4), 0.5, np.float32), truth, np.zeros((3, 4), np.uint8))
    assert row.shape == (3, 5 * 4 + 4 * 2, 3) and row.dtype == np.uint8
    for gap in (4, 10, 16, 22):
        assert (row[:, gap:gap + 2] == 255).all()
    assert (row[:, 0:4] == 0).all() and (row[:, 6:10] == 255).all() and (row[:, 12:16] == 128).all()
    expected = np.round(0.4 * 128 + 0.6 * LABEL_COLOURS[3].astype(np.float32) - 0.5).astype(np.uint8)
    assert (np.abs(row[0, 18].astype(int) - expected.astype(int)) <= 1).all()  # ET over the fused grey
    assert (row[:, 24:28] == 128).all()  # empty prediction: the fused image shows through
    grid = panel_grid([row, row], gap=2)
    assert grid.shape == (8, 28, 3) and (grid[3:5] == 255).all() and (grid[5:] == row).all()
    narrow = row[:2, :20]  # a 3-D run's smaller volume: its middle plane is narrower, padded white on the right
    mixed = panel_grid([row, narrow], gap=2)
    assert mixed.shape == (7, 28, 3) and (mixed[5:, :20] == narrow).all() and (mixed[5:, 20:] == 255).all()
