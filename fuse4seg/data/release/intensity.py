"""Intensity normalisation of one BraTS modality: clip to brain percentiles, rescale to [0, 1].

The rule (see :mod:`fuse4seg.data.release.brats`): ``lo``, ``hi`` are the :data:`PERCENTILES` (NumPy's
linear interpolation) of the modality's float32 values over the brain mask; brain voxels become
``clip((v - lo) / (hi - lo), 0, 1)``, or ``v > lo`` as 0/1 when ``hi == lo``; the rest 0.

Two implementations give the same float32 bits. Real-valued volumes are cast to float32 and use
np.percentile. 1- and 2-byte integer volumes (BraTS stores int16) never get cast: the percentiles
come from a histogram of the brain values, and the rescaling is one gather from a table holding
the rescaled value of every representable integer (65,536 entries for int16). Both evaluate the
same float32 expression on the same float32 inputs, so they agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np

#: Percentiles (NumPy's linear interpolation) of the brain intensities that map to 0 and 1.
PERCENTILES: tuple[float, float] = (0.5, 99.5)
#: Elements per np.take call in :func:`take_chunked`.
GATHER_CHUNK = 1 << 17


def percentile_bounds(values: np.ndarray) -> tuple[float, float]:
    """(lo, hi): the :data:`PERCENTILES` of a 1-D array of brain intensities, by np.percentile (float64)."""
    lo, hi = np.percentile(values, PERCENTILES)
    return float(lo), float(hi)


def linear_percentiles(order_statistic: Callable[[np.ndarray], np.ndarray], n: int) -> tuple[float, float]:
    """(lo, hi) of ``n`` values known through ``order_statistic(indices)`` (their sorted float32 values).

    Repeats np.percentile's "linear" steps (NumPy 2.x: float64 index and weight, float32 difference,
    the other end's formula when the weight is >= 0.5), so it equals :func:`percentile_bounds` bit for bit.
    """
    virtual = (n - 1) * np.true_divide(np.asarray(PERCENTILES), 100)
    previous = np.floor(virtual).astype(np.intp)
    following = previous + 1
    top = virtual >= n - 1  # NumPy takes the last element (index -1) there
    previous[top] = following[top] = -1
    gamma = virtual - previous
    below, above = order_statistic(previous % n), order_statistic(following % n)
    diff = above - below
    result = np.add(below, diff * gamma)
    np.subtract(above, diff * (1 - gamma), out=result, where=gamma >= 0.5, casting="unsafe", dtype=np.float64)
    return float(result[0]), float(result[1])


def rescale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 intensities -> clip((v - lo) / (hi - lo), 0, 1), or (v > lo) as 0/1 when hi == lo; float32."""
    if hi > lo:
        return np.clip((values - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    return (values > lo).astype(np.float32)


@cache
def code_values(dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(values, order): every value of a 1- or 2-byte integer dtype as float32, indexed by its unsigned
    bit pattern, and the permutation that sorts them (negative values come after positive ones)."""
    values = np.arange(2 ** (8 * dtype.itemsize), dtype=f"u{dtype.itemsize}").view(dtype)
    as_float, order = values.astype(np.float32), np.argsort(values, kind="stable")
    as_float.flags.writeable = order.flags.writeable = False
    return as_float, order


def uses_table(dtype: np.dtype) -> bool:
    """Whether volumes of ``dtype`` go through :func:`normalise_by_table` (1- and 2-byte integers)."""
    return dtype.kind in "iu" and dtype.itemsize <= 2


def unsigned_codes(volume: np.ndarray) -> np.ndarray:
    """A 1- or 2-byte integer array viewed as unsigned (its table index), same shape and layout."""
    return volume.view(f"u{volume.dtype.itemsize}")


def take_chunked(table: np.ndarray, codes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``table[codes]`` for an unsigned integer array, written in ``codes``' memory order (C or F).

    In chunks: np.take converts its indices to intp first, and a chunk's copy stays in cache where the
    whole volume's (8 bytes a voxel) would not. ``out``, if given, must share ``codes``' layout.
    """
    order = "F" if codes.flags.f_contiguous else "C"
    codes = np.asarray(codes, order=order)
    if out is None:
        out = np.empty(codes.shape, dtype=table.dtype, order=order)
    if out.shape != codes.shape or not out.flags[f"{order}_CONTIGUOUS"]:
        raise ValueError(f"out must be a {order}-contiguous array of shape {codes.shape}")
    flat, flat_out = codes.reshape(-1, order=order), out.reshape(-1, order=order)
    for start in range(0, flat.size, GATHER_CHUNK):
        np.take(table, flat[start:start + GATHER_CHUNK], out=flat_out[start:start + GATHER_CHUNK])
    return out


def normalise_by_table(volume: np.ndarray, brain_mask: np.ndarray, out: np.ndarray,
                       outside_nonpositive: bool = False) -> np.ndarray:
    """:func:`normalise_modality` of a 1- or 2-byte integer volume into float32 ``out``, without a cast.

    ``volume``, ``brain_mask`` and ``out`` must share one memory order (C or F);
    ``outside_nonpositive`` promises that every voxel outside the mask is <= 0 (true of BraTS's
    any-modality-positive mask), which lets the table itself write the background.
    """
    values, order = code_values(volume.dtype)
    codes = unsigned_codes(volume)
    layout = "F" if codes.flags.f_contiguous else "C"
    counts = np.bincount(codes.reshape(-1, order=layout)[brain_mask.reshape(-1, order=layout)],
                         minlength=values.size)[order]
    n = int(counts.sum())
    if n == 0:
        out.fill(0.0)
        return out
    cumulative, sorted_values = np.cumsum(counts), values[order]
    lo, hi = linear_percentiles(lambda k: sorted_values[np.searchsorted(cumulative, k, side="right")], n)
    table = rescale(values, lo, hi)
    take_chunked(table, codes, out)
    # The background must be exactly +0.0: the table gives that for values <= 0 unless lo < 0.
    if not outside_nonpositive or table.view(np.uint32)[values <= 0].any():
        out[~brain_mask] = 0.0
    return out


def normalise_values(volume: np.ndarray, brain_mask: np.ndarray, out: np.ndarray) -> np.ndarray:
    """:func:`normalise_modality` of any real volume into float32 ``out`` (cast, np.percentile, rescale).

    ``out`` may be ``volume`` itself: the brain values are copied out before it is written.
    """
    values = volume[brain_mask].astype(np.float32, copy=False)
    out[...] = 0.0
    if values.size:
        out[brain_mask] = rescale(values, *percentile_bounds(values))
    return out


def normalise_modality(volume: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """Clip to the [0.5, 99.5] percentiles of brain voxels and rescale to [0, 1] (float32, background 0).

    The result has ``volume``'s memory order (Fortran for arrays read from NIfTI files).
    """
    volume = np.asarray(volume)
    brain_mask = np.asarray(brain_mask, dtype=bool)
    if volume.shape != brain_mask.shape:
        raise ValueError(f"volume shape {volume.shape} and brain mask shape {brain_mask.shape} differ")
    order = "F" if volume.flags.f_contiguous and not volume.flags.c_contiguous else "C"
    out = np.empty(volume.shape, dtype=np.float32, order=order)
    if uses_table(volume.dtype):
        return normalise_by_table(np.asarray(volume, order=order), np.asarray(brain_mask, order=order), out)
    return normalise_values(volume, brain_mask, out)
