"""Slice geometry shared by ``build-benchmark --size`` and ``fuse``: the brain-box crop and the resize.

Each case is cropped to the square around the bounding box of its brain mask (zero-padded where the
square extends past the array) and resized to size x size: images bilinear, labels nearest neighbour.
OpenCV 5's ``cv2.resize`` takes at most 128 channels per call, so planes are resized in blocks of
at most :data:`MAX_CV_CHANNELS` (each plane is resized independently, so blocking changes nothing).
"""

from __future__ import annotations

import numpy as np

#: Most channels one cv2.resize call accepts (OpenCV 5's CV_CN_MAX).
MAX_CV_CHANNELS = 128


def square_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1): the square around the True bounding box of a (X, Y) mask, possibly
    extending past the array (the caller pads); the whole array if the mask is empty."""
    if not mask.any():
        return 0, mask.shape[0], 0, mask.shape[1]
    xs, ys = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = xs[0], xs[-1] + 1, ys[0], ys[-1] + 1
    side = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    return cx - side // 2, cx - side // 2 + side, cy - side // 2, cy - side // 2 + side


def resize_planes(planes: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    """(P, h, w) planes -> (P, size, size) with cv2 ``interpolation``, in blocks of <= 128 channels."""
    import cv2  # albumentations' dependency; imported here so callers that never resize skip it

    if len(planes) == 0:
        return np.zeros((0, size, size), planes.dtype)
    blocks = np.array_split(planes, -(-len(planes) // MAX_CV_CHANNELS))
    out = [cv2.resize(np.ascontiguousarray(block.transpose(1, 2, 0)), (size, size), interpolation=interpolation)
           .reshape(size, size, len(block)).transpose(2, 0, 1) for block in blocks]
    return np.concatenate(out)


def crop_box(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Crop the last two axes of ``array`` (..., X, Y) to ``box``, zero-padding outside the array."""
    x0, x1, y0, y1 = box
    pads = [(max(0, -x0), max(0, x1 - array.shape[-2])), (max(0, -y0), max(0, y1 - array.shape[-1]))]
    padded = np.pad(array, [(0, 0)] * (array.ndim - 2) + pads)
    sx, sy = x0 + pads[0][0], y0 + pads[1][0]
    return padded[..., sx:sx + x1 - x0, sy:sy + y1 - y0]


def crop_resize_images(images: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop (K, C, X, Y) images in [0, 1] to ``box`` and resize bilinearly to (K, C, size, size) float32."""
    import cv2

    cropped = crop_box(images, box)
    k, c, h, w = cropped.shape
    resized = resize_planes(cropped.reshape(k * c, h, w), size, cv2.INTER_LINEAR).reshape(k, c, size, size)
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def crop_resize(images: np.ndarray, label: np.ndarray, box: tuple[int, int, int, int],
                size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop (K, C, X, Y) images and (K, X, Y) labels to ``box`` (zero-padding outside the array)
    and resize to (size, size): images bilinear, labels nearest. Returns float32 and uint8."""
    import cv2

    labels = resize_planes(crop_box(label, box), size, cv2.INTER_NEAREST)
    return crop_resize_images(images, box, size), np.ascontiguousarray(labels, dtype=np.uint8)
