"""Fusion quality metrics in the MMIF convention (CDDFuse's ``utils/Evaluator.py``): one call for all eleven.

Conventions (those of the MMIF literature, so that scores compare with published tables): images on the
0-255 scale; EN in bits, MI in nats. MI, VIF and SSIM compare F with one source at a time, so with C
sources they are SUMMED over the (F, S_i) pairs (for C = 2 exactly the two-source definition, e.g.
MI(F,A)+MI(F,B)). SCD couples two sources (corr(A, F-B) + corr(B, F-A)), so with C > 2 sources it is
AVERAGED over the C(C-1)/2 source pairs of that two-source SCD (keeping its [-2, 2] scale). Qabf is a
gradient-weighted mean over sources, CC the mean correlation and PSNR uses the source-averaged MSE with
max(F) as peak (as CDDFuse).

CDDFuse quirks REPRODUCED (so numbers compare with published tables): PSNR's peak is max(F), not 255;
CC is averaged, not summed; VIF returns 1.0 for 0/0 (a constant source) and keeps the reference's
clamping order and per-scale pre-filtering; Qabf uses zero-padded Sobel responses (the image border
reads as an edge), orientation arctan(SAy/SAx) with pi/2 wherever SAx == 0 (flat pixels too), and
relative strength g_F (not 1) where g_S == g_F; SSIM is skimage's uniform 7x7 window with sample
covariance; AG divides by 2 inside the square root and uses one-sided differences at the border.

Deliberate DEVIATIONS: (1) SSIM's ``data_range`` is an argument (default 255); CDDFuse called skimage
without it on float images, which old skimage read as 2 (pass 2.0 to reproduce its tables). (2) EN
and MI clip to [0, 255] before the uint8 cast (CDDFuse wraps out-of-range values), and MI bins rounded
intensities (CDDFuse gives every distinct float its own label: same for its integer PNG inputs,
degenerate for float images). (3) Everything is float64; CDDFuse's float32 images make its Sobel
(Qabf) and SSIM float32 (relative differences ~1e-6). (4) Bad input raises DataError/ConfigError
instead of asserting. CDDFuse also min-max normalises each fused output to 0-255 and saves it as
PNG before scoring: that is the caller's choice here (``quantise=True`` mimics the PNG rounding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from fuse4seg.errors import ConfigError, DataError
from fuse4seg.metrics.fusion_stats import (
    average_gradient,
    correlation_coefficient,
    entropy,
    mutual_information,
    psnr,
    quantise_uint8,
    scd,
    spatial_frequency,
    standard_deviation,
)
from fuse4seg.metrics.fusion_structure import VIF_MIN_SIZE, qabf, ssim_sum, vif_sum

#: Keys of :func:`fusion_metrics`, in the order fusion papers print them.
FUSION_METRIC_NAMES: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR", "CC")


def _as_images(fused: np.ndarray, sources: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to float64: fused (H, W), sources (C, H, W) with C >= 2, all finite."""
    f = np.asarray(fused)
    if f.ndim != 2:
        raise DataError(f"fused image must be 2-D (H, W), got shape {f.shape}")
    if not isinstance(sources, np.ndarray) and len(sources) < 2:
        raise DataError(f"fusion metrics need at least two source images, got {len(sources)}")
    try:
        s = np.stack([np.asarray(x) for x in sources]) if not isinstance(sources, np.ndarray) else sources
    except ValueError as exc:
        raise DataError(f"source images must all have the fused image's shape {f.shape}: {exc}") from None
    if s.ndim != 3 or s.shape[1:] != f.shape:
        raise DataError(f"sources must be a sequence of (H, W) = {f.shape} images, got shape {s.shape}")
    if s.shape[0] < 2:
        raise DataError(f"fusion metrics need at least two source images, got {s.shape[0]}")
    if min(f.shape) < VIF_MIN_SIZE:
        raise DataError(f"fusion metrics need images of at least {VIF_MIN_SIZE}x{VIF_MIN_SIZE} (VIF's 4 scales), "
                        f"got {f.shape}")
    for name, arr in (("fused", f), ("sources", s)):
        if arr.dtype.kind not in "biuf":
            raise DataError(f"{name} image has non-numeric dtype {arr.dtype}")
    f = f.astype(np.float64)
    s = s.astype(np.float64)
    if not (np.isfinite(f).all() and np.isfinite(s).all()):
        raise DataError("fused or source image contains NaN or Inf")
    return f, s


def fusion_metrics(fused: np.ndarray, sources: Sequence[np.ndarray] | np.ndarray,
                   data_range: float = 255.0, quantise: bool = False) -> dict[str, float]:
    """All fusion metrics of a fused (H, W) image against C >= 2 source (H, W) images, all on the 0-255 scale.

    Returns {"EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR", "CC"} as floats.
    With more than two sources MI, VIF and SSIM are sums over the (F, S_i) pairs as in the two-source
    case (MI = sum MI(F, S_i), VIF = sum VIF(S_i -> F), SSIM = sum SSIM(F, S_i)); SCD is the mean over
    source pairs (i < j) of corr(S_i, F - S_j) + corr(S_j, F - S_i); Qabf stays a gradient-weighted
    mean, CC a mean, PSNR uses the mean MSE.
    ``data_range`` enters SSIM only (C1 = (0.01 R)^2, C2 = (0.03 R)^2): CDDFuse's tables used R = 2.
    Images must be at least 41 x 41 (VIF's four scales). ``quantise=True`` first rounds every image to
    integers clipped to [0, 255], as CDDFuse's PNG save/load round trip does. Degenerate inputs give
    the reference's values without warnings: CC/SCD are NaN when a correlated image is constant,
    Qabf is NaN when no source has any gradient, PSNR is +inf when F equals every source.
    """
    if not (isinstance(data_range, (int, float, np.floating, np.integer)) and math.isfinite(data_range)
            and data_range > 0):
        raise ConfigError(f"data_range must be a positive finite number, got {data_range!r}")
    f, s = _as_images(fused, sources)
    if quantise:
        f = quantise_uint8(f).astype(np.float64)
        s = quantise_uint8(s).astype(np.float64)
    return {
        "EN": entropy(f),
        "SD": standard_deviation(f),
        "SF": spatial_frequency(f),
        "AG": average_gradient(f),
        "MI": mutual_information(f, s),
        "SCD": scd(f, s),
        "VIF": vif_sum(f, s),
        "Qabf": qabf(f, s),
        "SSIM": ssim_sum(f, s, float(data_range)),
        "PSNR": psnr(f, s),
        "CC": correlation_coefficient(f, s),
    }


def average_fusion_metrics(pairs: Iterable[tuple[np.ndarray, Sequence[np.ndarray] | np.ndarray]],
                           data_range: float = 255.0, quantise: bool = False) -> dict[str, float]:
    """Mean of :func:`fusion_metrics` over (fused (H, W), sources) pairs; adds "count" (number of pairs).

    A plain arithmetic mean per metric (a NaN or inf in one pair propagates: it is not hidden).
    """
    sums = dict.fromkeys(FUSION_METRIC_NAMES, 0.0)
    count = 0
    for fused, sources in pairs:
        for key, value in fusion_metrics(fused, sources, data_range=data_range, quantise=quantise).items():
            sums[key] += value
        count += 1
    if count == 0:
        raise DataError("average_fusion_metrics got no (fused, sources) pairs")
    out = {key: value / count for key, value in sums.items()}
    out["count"] = count
    return out
