"""Discrete-wavelet fusion (PyWavelets): max-abs detail coefficients, mean approximation."""

from __future__ import annotations

import numpy as np
import pywt

from fuse4seg.fusion.pyramid import select_max_abs


def wavelet_rule(sources: np.ndarray, wavelet: str = "db2", levels: int = 3) -> np.ndarray:
    """2-D DWT fusion: (N, C, H, W) in [0, 1] -> (N, H, W) float32 clipped to [0, 1].

    ``levels`` is capped at ``pywt.dwt_max_level`` for the image size; the reconstruction is
    cropped back to (H, W) (PyWavelets pads odd sizes by one sample).
    """
    h, w = sources.shape[-2:]
    filter_len = pywt.Wavelet(wavelet).dec_len
    levels = max(0, min(int(levels), pywt.dwt_max_level(min(h, w), filter_len)))
    if levels == 0:
        return np.clip(sources.mean(axis=1), 0.0, 1.0).astype(np.float32)
    coeffs = pywt.wavedec2(sources.astype(np.float64), wavelet, level=levels, axes=(-2, -1))
    fused = [coeffs[0].mean(axis=1)]
    for details in coeffs[1:]:
        fused.append(tuple(select_max_abs(band, axis=1) for band in details))
    out = pywt.waverec2(fused, wavelet, axes=(-2, -1))[..., :h, :w]
    return np.clip(out, 0.0, 1.0).astype(np.float32)
