"""Image statistics and information fusion metrics (EN, SD, SF, AG, MI, SCD, PSNR, CC), MMIF convention.

Every function takes float arrays on the 0-255 scale and computes in float64. The formulas follow
CDDFuse's ``utils/Evaluator.py`` (the evaluator most fusion papers copy); where it has a quirk the
docstring says whether it is reproduced. Multi-source metrics take ``sources`` as a (C, H, W) float64
stack (see :func:`fuse4seg.metrics.fusion.fusion_metrics` for validation).
"""

from __future__ import annotations

import itertools

import numpy as np

_LEVELS = 256


def quantise_uint8(image: np.ndarray) -> np.ndarray:
    """Round an array on the 0-255 scale to uint8 (half to even, as ``np.round``), clipping to [0, 255].

    CDDFuse casts ``np.uint8(np.round(img))`` without clipping, so out-of-range values wrap around;
    clipping is the deliberate deviation (identical for every input already in [0, 255]).
    """
    return np.clip(np.round(image), 0, _LEVELS - 1).astype(np.uint8)


def entropy(image: np.ndarray) -> float:
    """EN: Shannon entropy in bits of the 256-bin histogram of the rounded uint8 (H, W) image."""
    counts = np.bincount(quantise_uint8(image).ravel(), minlength=_LEVELS)
    p = counts[counts > 0] / counts.sum()
    return float(0.0 - np.sum(p * np.log2(p)))  # 0.0 - x: a constant image gives +0.0, not -0.0


def standard_deviation(image: np.ndarray) -> float:
    """SD: population standard deviation (ddof=0) of an (H, W) image, in intensity units."""
    return float(np.std(image, dtype=np.float64))


def spatial_frequency(image: np.ndarray) -> float:
    """SF: sqrt(mean squared horizontal difference + mean squared vertical difference) of an (H, W) image."""
    img = np.asarray(image, dtype=np.float64)
    col = np.mean((img[:, 1:] - img[:, :-1]) ** 2)
    row = np.mean((img[1:, :] - img[:-1, :]) ** 2)
    return float(np.sqrt(col + row))


def average_gradient(image: np.ndarray) -> float:
    """AG: mean of sqrt((gx^2 + gy^2) / 2) with ``np.gradient`` (central inside, one-sided at the edges)."""
    gy, gx = np.gradient(np.asarray(image, dtype=np.float64))
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


def mutual_information_pair(a: np.ndarray, b: np.ndarray) -> float:
    """MI(a, b) in nats of two (H, W) images, every rounded uint8 intensity its own bin.

    CDDFuse feeds the raw values to ``sklearn.metrics.mutual_info_score``, which makes every distinct
    value a label: identical for integer-valued images (CDDFuse reads PNGs), but for non-integer fused
    images it would give each unique float its own bin (MI -> the source's entropy). Rounding to uint8
    first is the deliberate deviation that keeps float inputs meaningful.
    """
    qa = quantise_uint8(a).ravel().astype(np.intp)
    qb = quantise_uint8(b).ravel().astype(np.intp)
    joint = np.bincount(qa * _LEVELS + qb, minlength=_LEVELS * _LEVELS).reshape(_LEVELS, _LEVELS)
    n = float(qa.size)
    pa = joint.sum(axis=1) / n
    pb = joint.sum(axis=0) / n
    ia, ib = np.nonzero(joint)
    pab = joint[ia, ib] / n
    mi = float(np.sum(pab * (np.log(pab) - np.log(pa[ia]) - np.log(pb[ib]))))
    return max(mi, 0.0)  # as sklearn: rounding can make independent images' MI -1e-17


def mutual_information(fused: np.ndarray, sources: np.ndarray) -> float:
    """MI: sum over sources of MI(F, S_i) in nats; fused (H, W), sources (C, H, W), 0-255 scale."""
    return float(sum(mutual_information_pair(fused, s) for s in sources))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two same-shape arrays (nan when either is constant, as in CDDFuse)."""
    da = a - a.mean()
    db = b - b.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(da * db) / np.sqrt(np.sum(da * da) * np.sum(db * db)))


def scd_pair(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Two-source SCD (CDDFuse's formula): corr(A, F - B) + corr(B, F - A); (H, W) arrays, 0-255 scale."""
    return _correlation(a, fused - b) + _correlation(b, fused - a)


def scd(fused: np.ndarray, sources: np.ndarray) -> float:
    """SCD of fused (H, W) against sources (C, H, W): the MEAN over the C(C-1)/2 source pairs of the
    two-source SCD (:func:`scd_pair`); for C = 2 exactly CDDFuse's value, for any C in [-2, 2].

    Averaged, not summed, so that the value keeps the two-source scale (published tables) whatever C;
    NaN when any pair's correlation is undefined (a constant difference image), as for two sources.
    """
    values = [scd_pair(fused, sources[i], sources[j]) for i, j in itertools.combinations(range(len(sources)), 2)]
    return float(np.mean(values))


def correlation_coefficient(fused: np.ndarray, sources: np.ndarray) -> float:
    """CC: mean over sources of the Pearson correlation corr(S_i, F) (CDDFuse averages, not sums)."""
    return float(np.mean([_correlation(s, fused) for s in sources]))


def psnr(fused: np.ndarray, sources: np.ndarray) -> float:
    """PSNR in dB as CDDFuse: 10 log10(max(F)^2 / MSE), MSE averaged over sources; peak is max(F).

    CDDFuse's peak is the fused image's own maximum, not 255 or ``data_range``: reproduced so that
    numbers compare with published tables. MSE = 0 gives +inf.
    """
    mse = float(np.mean([np.mean((s - fused) ** 2) for s in sources]))
    peak = float(np.max(fused))
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(peak * peak / mse)) if mse > 0 else float("inf")
