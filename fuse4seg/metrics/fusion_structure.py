"""Windowed fusion metrics (SSIM, VIF, Qabf) in the MMIF convention of CDDFuse's ``utils/Evaluator.py``.

Inputs: fused (H, W) and sources (C, H, W) float64 arrays on the 0-255 scale. Windows are separable
(box sums by shifted slices for SSIM, ``scipy.ndimage.correlate1d`` for VIF's Gaussians, slice
differences for Sobel); the fused image's local moments are computed once and shared by all
sources. Quirks of the reference kept here are listed in each docstring.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

# VIF (pixel domain, Sheikh & Bovik; CDDFuse's compare_viff): noise variance and guard.
_VIF_SIGMA_NSQ = 2.0
_VIF_EPS = 1e-10
# Qabf (Xydeas & Petrovic) sigmoid constants, L = 1.
_QG, _KG, _DG = 0.9994, -15.0, 0.5
_QA, _KA, _DA = 0.9879, -22.0, 0.8
#: Smallest side the four VIF scales accept (17-valid, /2, 9-valid, /2, 5-valid, /2, 3-valid).
VIF_MIN_SIZE = 41


def _box_mean_valid(stack: np.ndarray, size: int) -> np.ndarray:
    """Mean over every full size x size window of a (K, H, W) stack -> (K, H - size + 1, W - size + 1).

    These are exactly the interior values of a uniform filter, i.e. the region skimage keeps after
    cropping (size - 1) // 2 per side; shifted-slice sums are faster than ndimage for small windows.
    """
    w = stack.shape[2] - size + 1
    rows = stack[:, :, :w].copy()
    for i in range(1, size):
        rows += stack[:, :, i : i + w]
    h = stack.shape[1] - size + 1
    out = rows[:, :h].copy()
    for i in range(1, size):
        out += rows[:, i : i + h]
    out /= float(size * size)
    return out


def ssim_sum(fused: np.ndarray, sources: np.ndarray, data_range: float, win_size: int = 7) -> float:
    """SSIM: sum over sources of mean SSIM(F, S_i), uniform 7x7 window, K1 0.01, K2 0.03, sample covariance.

    Same as ``skimage.metrics.structural_similarity(F, S, win_size=7, data_range=data_range)`` (uniform
    window, ``use_sample_covariance=True``, mean over the map cropped by (win_size - 1) // 2). CDDFuse
    called it without ``data_range`` on float images, which old scikit-image read as 2 (the float dtype
    range -1..1); pass ``data_range=2`` to reproduce its published tables, 255 for the 0-255 scale.
    """
    np_ = win_size * win_size
    cov_norm = np_ / (np_ - 1.0)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    uf, uff = _box_mean_valid(np.stack([fused, fused * fused]), win_size)
    vf = cov_norm * (uff - uf * uf)
    total = 0.0
    for src in sources:
        us, uss, ufs = _box_mean_valid(np.stack([src, src * src, fused * src]), win_size)
        vs = cov_norm * (uss - us * us)
        vfs = cov_norm * (ufs - uf * us)
        s_map = ((2 * uf * us + c1) * (2 * vfs + c2)) / ((uf * uf + us * us + c1) * (vf + vs + c2))
        total += float(s_map.mean())
    return total


def _gaussian_1d(n: int) -> np.ndarray:
    """1-D factor of CDDFuse's MATLAB-style n x n Gaussian window (sigma = n / 5), normalised to sum 1.

    The 2-D window exp(-(x^2+y^2)/(2 sd^2)) / sum is exactly the outer product of this vector with
    itself; the reference's ``h < eps * max`` truncation never triggers for n in {17, 9, 5, 3}
    (smallest corner value ~ exp(-6) of the peak), so the separable form is the same filter.
    """
    sd = n / 5.0
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sd * sd))
    return g / g.sum()


def _valid_filter(stack: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a (K, H, W) stack with the symmetric 1-D kernel g on both axes.

    Output (K, H - n + 1, W - n + 1). Making the row-filtered crop contiguous before the column pass
    is measurably faster than filtering the strided view.
    """
    r = (g.size - 1) // 2
    rows = np.ascontiguousarray(ndimage.correlate1d(stack, g, axis=2, mode="constant")[:, :, r : stack.shape[2] - r])
    return ndimage.correlate1d(rows, g, axis=1, mode="constant")[:, r : stack.shape[1] - r]


def _vif_scale_terms(mu1: np.ndarray, e11: np.ndarray, e12: np.ndarray, mu2: np.ndarray,
                     s2: np.ndarray) -> tuple[float, float]:
    """One source's VIF numerator and denominator at one scale from local moments (CDDFuse clamping order).

    mu1, e11, e12: local mean of ref, ref^2 and ref*dist; mu2, s2: local mean and clamped variance of dist.
    """
    s1 = e11 - mu1 * mu1
    s1[s1 < 0] = 0
    s12 = e12 - mu1 * mu2
    gain = s12 / (s1 + _VIF_EPS)
    sv = s2 - gain * s12
    low1 = s1 < _VIF_EPS
    gain[low1] = 0
    sv[low1] = s2[low1]
    s1[low1] = 0
    low2 = s2 < _VIF_EPS
    gain[low2] = 0
    sv[low2] = 0
    neg = gain < 0
    sv[neg] = s2[neg]
    gain[neg] = 0
    sv[sv <= _VIF_EPS] = _VIF_EPS
    num = np.log10(1 + gain * gain * s1 / (sv + _VIF_SIGMA_NSQ)).sum()
    den = np.log10(1 + s1 / _VIF_SIGMA_NSQ).sum()
    return float(num), float(den)


def vif_per_source(fused: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Pixel-domain VIF of the fused image against each source (reference = source), shape (C,).

    CDDFuse's compare_viff(ref=S, dist=F): 4 scales, Gaussian windows 17/9/5/3 (sigma N/5), 'valid'
    filtering, 2x decimation before scales 2-4 with that scale's window, sigma_n^2 = 2, eps = 1e-10,
    the same clamping order; numerator and denominator summed over all scales before dividing. Quirk
    kept: 0/0 (a constant source) returns 1.0. Sources are filtered one at a time (small, cache-sized
    arrays); the fused image's moments are computed once per scale.
    """
    n_src = sources.shape[0]
    images = np.concatenate([sources, fused[None]])
    num = np.zeros(n_src)
    den = np.zeros(n_src)
    for scale in range(1, 5):
        g = _gaussian_1d(2 ** (4 - scale + 1) + 1)
        if scale > 1:
            images = _valid_filter(images, g)[:, ::2, ::2]
        dist = images[n_src]
        mu2, e22 = _valid_filter(np.stack([dist, dist * dist]), g)
        s2 = e22 - mu2 * mu2
        s2[s2 < 0] = 0
        for i in range(n_src):
            ref = images[i]
            mu1, e11, e12 = _valid_filter(np.stack([ref, ref * ref, ref * dist]), g)
            n_i, d_i = _vif_scale_terms(mu1, e11, e12, mu2, s2)
            num[i] += n_i
            den[i] += d_i
    with np.errstate(invalid="ignore", divide="ignore"):
        vif = num / den
    return np.where(np.isnan(vif), 1.0, vif)


def vif_sum(fused: np.ndarray, sources: np.ndarray) -> float:
    """VIF: sum over sources of VIF(S_i -> F) (2.0 when F equals two identical non-constant sources)."""
    return float(vif_per_source(fused, sources).sum())


def sobel_strength_angle(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel edge strength and orientation (radians) of a (K, H, W) stack, as CDDFuse's Qabf_getArray.

    CDDFuse uses ``convolve2d(img, h, mode='same')``: zero padding (the image border reads as an
    edge, kept) and true convolution, which gives SAx = -(x-Sobel correlation), SAy = +(y-Sobel
    correlation). Orientation is arctan(SAy / SAx), and pi/2 where SAx == 0 (flat pixels included).
    """
    padded = np.pad(stack, ((0, 0), (1, 1), (1, 1)))
    dx = padded[:, :, 2:] - padded[:, :, :-2]
    dy = padded[:, 2:, :] - padded[:, :-2, :]
    sx = -(dx[:, :-2] + 2.0 * dx[:, 1:-1] + dx[:, 2:])
    sy = dy[:, :, :-2] + 2.0 * dy[:, :, 1:-1] + dy[:, :, 2:]
    strength = np.sqrt(sx * sx + sy * sy)
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.arctan(sy / sx)
    np.copyto(angle, math.pi / 2, where=sx == 0)
    return strength, angle


def edge_preservation(g_src: np.ndarray, a_src: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    """Per-pixel Xydeas-Petrovic preservation Q^{SF} in [0, ~0.987] from strengths g and angles a.

    Quirk kept from CDDFuse: where g_src == g_f the relative strength is set to g_f itself (not 1), so
    equal non-zero strengths above ~1 give Q_g ~ 0.9994 and equal zero strengths give Q_g ~ 5.5e-4.
    """
    # min/max is g_f/g_src where g_src > g_f and g_src/g_f where g_src < g_f, in fewer passes.
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.minimum(g_src, g_f) / np.maximum(g_src, g_f)
    np.copyto(rel, np.broadcast_to(g_f, rel.shape), where=g_src == g_f)
    rel -= _DG
    rel *= _KG
    np.exp(rel, out=rel)
    rel += 1.0
    dang = 1.0 - np.abs(a_src - a_f) / (math.pi / 2)
    dang -= _DA
    dang *= _KA
    np.exp(dang, out=dang)
    dang += 1.0
    return (_QG / rel) * (_QA / dang)


def qabf(fused: np.ndarray, sources: np.ndarray) -> float:
    """Qabf: sum_i sum(Q^{S_i F} g_i) / sum_i sum(g_i) (weights g = Sobel strength, L = 1); in [0, ~1].

    For two sources this is CDDFuse's formula; C > 2 sources use the same weighted mean over all of
    them. nan when every source has zero gradient everywhere (all-zero sources), as the reference.
    """
    strength, angle = sobel_strength_angle(np.concatenate([fused[None], sources]))
    g_f, a_f = strength[0], angle[0]
    g_s, a_s = strength[1:], angle[1:]
    q = edge_preservation(g_s, a_s, g_f[None], a_f[None])
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(q * g_s) / np.sum(g_s))
