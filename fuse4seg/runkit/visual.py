"""Image panels shared by TensorBoard and the evaluation gallery: sources | fused | truth | prediction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: RGB colours of the canonical labels: background black, NCR red, ED green, ET yellow (BraTS figures).
LABEL_COLOURS: np.ndarray = np.array([[0, 0, 0], [220, 40, 40], [40, 200, 60], [250, 220, 30]], dtype=np.uint8)


def gray_to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> (H, W, 3) uint8 grey image (values outside [0, 1] are clipped)."""
    g = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0, 1.0)
    return np.repeat((g * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)


def label_to_rgb(label: np.ndarray, background: np.ndarray | None = None, alpha: float = 0.6) -> np.ndarray:
    """(H, W) canonical labels {0..3} -> (H, W, 3) uint8; blended over a (H, W) [0,1] image if given."""
    label = np.clip(np.asarray(label, dtype=np.int64), 0, len(LABEL_COLOURS) - 1)
    colour = LABEL_COLOURS[label].astype(np.float32)
    if background is None:
        return colour.astype(np.uint8)
    base = gray_to_rgb(background).astype(np.float32)
    mask = (label > 0)[..., None]
    return np.where(mask, (1 - alpha) * base + alpha * colour, base).astype(np.uint8)


def _join(parts: Sequence[np.ndarray], gap: int, axis: int) -> np.ndarray:
    """Concatenate (H, W, 3) uint8 images along ``axis`` (0 rows, 1 columns) with ``gap`` px white spacers."""
    shape = list(parts[0].shape)
    shape[axis] = gap
    spacer = np.full(shape, 255, dtype=np.uint8)
    joined: list[np.ndarray] = [parts[0]]
    for part in parts[1:]:
        joined += [spacer, part]
    return np.concatenate(joined, axis=axis)


def panel_row(sources: np.ndarray, fused: np.ndarray | None, truth: np.ndarray, pred: np.ndarray,
              gap: int = 2) -> np.ndarray:
    """One gallery row (H, W_total, 3) uint8: each source (C, H, W), fused (H, W), truth, prediction.

    Truth and prediction are drawn over the fused image (or the first source when there is none).
    """
    back = fused if fused is not None else sources[0]
    tiles = [gray_to_rgb(s) for s in sources]
    if fused is not None:
        tiles.append(gray_to_rgb(fused))
    tiles += [label_to_rgb(truth, back), label_to_rgb(pred, back)]
    return _join(tiles, gap, axis=1)


def panel_grid(rows: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Stack rows (H_i, W_i, 3) uint8 vertically with white gaps -> (H_total, max W_i, 3) uint8; narrower rows
    (3-D runs: the middle planes of differently sized volumes) are padded white on the right."""
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return _join(padded, gap, axis=0)


def column_titles(source_names: Sequence[str], has_fused: bool) -> list[str]:
    """Titles of the panel columns, in the order :func:`panel_row` draws them."""
    return list(source_names) + (["fused"] if has_fused else []) + ["truth", "prediction"]
