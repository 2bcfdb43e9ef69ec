"""k-space operations on (C, H, W) images, channel by channel, that the MR degradations of
:mod:`fuse4seg.data.augment.degradations` build on: spikes, reweighted phase-encoding lines and undersampling masks.
"""

from __future__ import annotations

import numpy as np

#: Fraction of phase-encoding lines around k = 0 that undersampling always keeps.
CENTRE_FRACTION = 0.08


def add_kspace_spikes(image: np.ndarray, positions: np.ndarray, phases: np.ndarray,
                      intensity: float) -> np.ndarray:
    """Complex (C, H, W) image whose 2-D FFT is that of ``image`` (C, H, W) plus intensity x |F_c(0)| x
    e^{i phase} at the flat FFT indices ``positions`` (C, k) (phases (C, k) radians)."""
    spectrum = np.fft.fft2(image)
    flat = spectrum.reshape(len(image), -1)
    flat[np.arange(len(image))[:, None], positions] += intensity * np.abs(flat[:, :1]) * np.exp(1j * phases)
    return np.fft.ifft2(spectrum)


def reweight_kspace_lines(image: np.ndarray, weights: np.ndarray, axis: int = 0) -> np.ndarray:
    """Complex (C, H, W) image whose 2-D FFT is that of ``image`` with k-space line j (FFT order, a row
    for axis 0, a column for axis 1) of channel c multiplied by ``weights[c, j]`` (C, H or W)."""
    spectrum = np.fft.fft2(image)
    return np.fft.ifft2(spectrum * (weights[:, :, None] if axis == 0 else weights[:, None, :]))


def undersampling_mask(lines: int, acceleration: float, rng: np.random.Generator,
                       centre_fraction: float = CENTRE_FRACTION) -> np.ndarray:
    """Boolean (lines,) mask in FFT order (k = 0 first): the max(1, round(centre_fraction x lines)) lines
    nearest k = 0, plus random others, max(centre, round(lines / acceleration)) lines in all."""
    centre = max(1, round(centre_fraction * lines))
    kept = max(centre, round(lines / acceleration))
    centred = np.zeros(lines, dtype=bool)
    start = lines // 2 - centre // 2  # the centred spectrum has k = 0 at lines // 2
    centred[start:start + centre] = True
    mask = np.fft.ifftshift(centred)
    others = np.flatnonzero(~mask)
    mask[rng.permutation(others)[:kept - centre]] = True
    return mask
