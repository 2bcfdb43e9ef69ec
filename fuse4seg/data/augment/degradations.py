"""MR degradations as albumentations transforms (RMR-Fusion's noise, blur and k-space corruption, and more).

Every transform is an ``ImageOnlyTransform`` for float32 images in [0, 1], (H, W) or (H, W, C) with the
channels (MR modalities, perhaps a fused image) degraded independently: each channel gets its own noise,
spike positions, k-space lines and bias field. The *strength* (noise fraction, blur sigma, acceleration, ...)
is drawn once per call, uniformly from the transform's range, and shared by the channels. All randomness
comes from the transform's ``py_random`` / ``random_generator``, so ``set_random_seed``, ``A.Compose(...,
seed=s)`` and :func:`fuse4seg.data.augment.specs.seeded` make them reproducible (the last also keeps the members
of a pipeline from repeating each other's draws). The result is float32, clipped to
[0, max of that channel of the input] (``clip=True``, the default; ``clip=False`` gives the raw result): a degraded
image stays in its input's range, so a normalised modality stays normalised and a dark channel cannot borrow
another's brightness. At its identity strength (0, or 1 for factors) a transform returns its input
unchanged, bit for bit (a k-space round trip alone would add ~1e-17 to zero pixels).

The degradations: name, transform (its strength parameter), definition, and the strength
``at_severity(name, level)`` uses (:mod:`fuse4seg.data.augment.severity`), linear in ``level`` in [0, 1]:

- ``noise``, :class:`GaussianNoise` (``fraction_range``): x + sigma n, sigma = fraction x channel max;
  fraction = 0.1 level (:data:`NOISE_MAX_FRACTION`, RMR-Fusion's largest).
- ``rician``, :class:`RicianNoise` (``fraction_range``): sqrt((x + sigma n1)^2 + (sigma n2)^2), the
  magnitude of complex noise added to the image; sigma and mapping as for ``noise``.
- ``blur``, :class:`ClippedGaussianBlur` (``sigma_limit``): Gaussian blur; sigma = 3 level px (0: none).
- ``bias``, :class:`BiasField` (``amplitude_range``): x exp(a P(y, x)), P a random polynomial of degree
  <= 3 without constant term, scaled to max |P| = 1; a = 0.5 level (gain 0.61-1.65 at level 1).
- ``spike``, :class:`KSpaceSpike` (``intensity_range``): ``num_spikes`` (1) random non-DC k-space points
  get intensity x |F(0)| added, with a random phase (stripes of amplitude intensity x the channel mean);
  intensity = 1.0 level.
- ``undersample``, :class:`KSpaceUndersampling` (``acceleration_range``): keeps round(n / R) of the n
  phase-encoding lines (always the 8 % around k = 0), zero-filled magnitude; R = 1 + 7 level. Linear in R,
  so most of the damage comes early (R 1 -> 2 drops half the lines, R 6 -> 8 a few).
- ``motion``, :class:`MotionGhosting` (``severity_range``): at severity s a fraction 0.5 s of the
  phase-encoding lines get phase errors U(-pi s, pi s), magnitude; s = level.
- ``lowres``, :class:`LowResolution` (``factor_range``): area down-sampling by a factor, bilinear
  up-sampling back; factor = 1 + 3 level.

:func:`~fuse4seg.data.augment.severity.random_degradation` draws the strength uniformly over the whole range (levels 0 to 1; blur from
:data:`BLUR_SIGMA_RANGE`'s 0.1 px, RMR-Fusion's range), or up to a ``max_level``.
Reused from albumentations: ``A.GaussianBlur`` (its PIL-style kernel, radius int(3.5 sigma), reflect-101
border, any number of channels, all channels alike), subclassed only to allow sigma = 0 (its kernel is NaN
there) and to clip. Not reused: ``A.GaussNoise`` (sigma relative to the dtype's maximum 1.0, not the
channel's, and clipped to [0, 1]) and ``A.Downscale`` (it passes float images through uint8, quantising to
1/255 even at scale 1). Importing this module registers the transforms for ``A.from_dict`` / ``A.load``
(albumentations' registry holds every transform class by its full name ``fuse4seg.data.augment.degradations.X``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Annotated, Any, ClassVar, Literal

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.blur.functional import create_gaussian_kernel_1d
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import AfterValidator, Field

from fuse4seg.data.augment.kspace import (
    CENTRE_FRACTION,
    add_kspace_spikes,
    reweight_kspace_lines,
    undersampling_mask,
)
from fuse4seg.errors import ConfigError

#: Largest Gaussian / Rician noise sigma, as a fraction of the channel maximum (RMR-Fusion).
NOISE_MAX_FRACTION = 0.1
#: Gaussian blur sigma range in pixels (RMR-Fusion) drawn by random_degradation("blur").
BLUR_SIGMA_RANGE = (0.1, 3.0)
#: Largest bias-field amplitude: the log-gain reaches +-0.5 (gain 0.61-1.65).
BIAS_MAX_AMPLITUDE = 0.5
#: Degree of the bias-field polynomial.
BIAS_ORDER = 3
#: Largest spike magnitude as a multiple of |F(0)| (stripes of amplitude up to the channel mean).
SPIKE_MAX_INTENSITY = 1.0
#: Undersampling acceleration range (1 = fully sampled).
ACCELERATION_RANGE = (1.0, 8.0)
#: Fraction of phase-encoding lines with a motion phase error at the largest severity.
MOTION_MAX_FRACTION = 0.5
#: Motion phase errors at the largest severity are uniform in [-MOTION_MAX_PHASE, MOTION_MAX_PHASE] radians.
MOTION_MAX_PHASE = math.pi
#: Low-resolution down-sampling factor range (1 = none).
LOWRES_FACTOR_RANGE = (1.0, 4.0)


def bounded_range(low: float, high: float = math.inf) -> Any:
    """A pydantic (low <= a <= b <= high) pair type for a strength range."""
    def check(value: tuple[float, float]) -> tuple[float, float]:
        """Reject unordered pairs and values outside [low, high]."""
        if not low <= value[0] <= value[1] <= high:
            raise ValueError(f"must be (a, b) with {low} <= a <= b <= {high}, got {value}")
        return value
    return Annotated[tuple[float, float], AfterValidator(check)]


def clip_to_input(out: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``out`` (H, W[, C]) clipped to [0, each channel's max of ``image``] (same shape), as float32."""
    peak = image.max(axis=(0, 1), keepdims=image.ndim == 3)
    return np.clip(out, 0.0, peak).astype(np.float32)


class _DegradationSchema(BaseTransformInitSchema):
    """Parameters every :class:`MRDegradation` has."""

    clip: bool


class _PhaseEncodedSchema(_DegradationSchema):
    """Parameters of a k-space corruption along the phase-encoding axis (0: k-space rows, 1: columns)."""

    axis: Literal[0, 1]


class MRDegradation(A.ImageOnlyTransform, ABC):
    """Base: draws a strength from the range attribute named by ``_strength``, then per-channel random
    draws (:meth:`_draw`), and applies :meth:`_degrade` to the (C, H, W) float64 image; clips and casts."""

    _strength: ClassVar[str]
    _identity: ClassVar[float] = 0.0  # the strength at which the transform does nothing
    clip: bool

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """{"strength": float, "draws": dict of per-channel random arrays} for an image of params["shape"]."""
        strength = self.py_random.uniform(*getattr(self, self._strength))
        shape = params["shape"]
        channels = shape[2] if len(shape) == 3 else 1
        draws = {} if strength == self._identity else self._draw(strength, channels, shape[0], shape[1])
        return {"strength": strength, "draws": draws}

    def apply(self, img: np.ndarray, strength: float = 0.0, draws: dict | None = None,
              **params: Any) -> np.ndarray:
        """Degrade an (H, W) or (H, W, C) float image; float32 of the same shape."""
        if strength == self._identity:
            return img.astype(np.float32, copy=False)
        chw = np.array(np.moveaxis(np.atleast_3d(img), -1, 0), dtype=np.float64, order="C")
        peak = chw.max(axis=(1, 2), keepdims=True)
        out = self._degrade(chw, peak, strength, **(draws or {}))
        out = np.clip(out, 0.0, peak) if self.clip else out
        return np.moveaxis(out, 0, -1).reshape(img.shape).astype(np.float32)

    @abstractmethod
    def _draw(self, strength: float, channels: int, height: int, width: int) -> dict[str, Any]:
        """The random quantities of one call, one per channel, from ``self.random_generator``."""

    @abstractmethod
    def _degrade(self, image: np.ndarray, peak: np.ndarray, strength: float, **draws: Any) -> np.ndarray:
        """(C, H, W) float64 image, (C, 1, 1) channel maxima -> degraded (C, H, W), not yet clipped."""


class GaussianNoise(MRDegradation):
    """Additive Gaussian noise, sigma = fraction x channel max, fraction drawn from ``fraction_range``."""

    _strength = "fraction_range"

    class InitSchema(_DegradationSchema):
        fraction_range: bounded_range(0.0)

    def __init__(self, fraction_range: tuple[float, float] = (0.0, NOISE_MAX_FRACTION), clip: bool = True,
                 p: float = 0.5) -> None:
        """``fraction_range``: noise sigma over the channel max; ``clip``: clip to [0, channel max]."""
        super().__init__(p=p)
        self.fraction_range = fraction_range
        self.clip = clip

    def _draw(self, strength: float, channels: int, height: int, width: int) -> dict[str, Any]:
        """Standard normal (C, H, W) noise."""
        return {"noise": self.random_generator.standard_normal((channels, height, width))}

    def _degrade(self, image: np.ndarray, peak: np.ndarray, strength: float, **draws: Any) -> np.ndarray:
        """x + fraction x peak x n."""
        return image + strength * peak * draws["noise"]


class RicianNoise(GaussianNoise):
    """Rician noise: sqrt((x + sigma n1)^2 + (sigma n2)^2), the magnitude of complex Gaussian noise added to
    the image; sigma = fraction x channel max as in :class:`GaussianNoise`."""

    def _draw(self, strength: float, channels: int, height: int, width: int) -> dict[str, Any]:
        """Standard normal (2, C, H, W): the real and imaginary noise."""
        return {"noise": self.random_generator.standard_normal((2, channels, height, width))}

    def _degrade(self, image: np.ndarray, peak: np.ndarray, strength: float, **draws: Any) -> np.ndarray:
        """|x + sigma (n1 + i n2)|."""
        real, imaginary = strength * peak * draws["noise"]
        return np.hypot(image + real, imaginary)


class ClippedGaussianBlur(A.GaussianBlur):
    """``A.GaussianBlur`` (sigma from ``sigma_limit``, blur_limit 0: radius int(3.5 sigma), so any sigma
    below 2/7 px is a one-tap kernel, the identity) that also accepts sigma = 0 and clips to [0, channel max]
    (float rounding could overshoot)."""

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """{"kernel": 1-D normalised Gaussian}; the same draws as A.GaussianBlur, [1] for sigma 0."""
        sigma = self.py_random.uniform(*self.sigma_limit)
        ksize = self.py_random.randint(*self.blur_limit)
        return {"kernel": create_gaussian_kernel_1d(sigma, ksize) if sigma > 0 else np.ones(1)}

    def apply(self, img: np.ndarray, kernel: np.ndarray, **params: Any) -> np.ndarray:
        """Separable blur of every channel, clipped; float32."""
        if kernel.size == 1:
            return img.astype(np.float32, copy=False)
        return clip_to_input(super().apply(img, kernel=kernel, **params), img)


def polynomial_basis(height: int, width: int, order: int) -> np.ndarray:
    """(T, H, W) monomials y^i x^j, 1 <= i + j <= order, on y, x in [-1, 1] (T = (order+1)(order+2)/2 - 1)."""
    powers = np.array([(i, total - i) for total in range(1, order + 1) for i in range(total + 1)])
    y = np.linspace(-1.0, 1.0, height)[None, :, None] ** powers[:, 0, None, None]
    x = np.linspace(-1.0, 1.0, width)[None, None, :] ** powers[:, 1, None, None]
    return y * x


class BiasField(MRDegradation):
    """Smooth multiplicative bias field x exp(a P), P a polynomial of degree ``order`` with coefficients
    U(-1, 1) and no constant term, scaled to max |P| = 1, so a (``amplitude_range``) is the largest log-gain."""

    _strength = "amplitude_range"

    class InitSchema(_DegradationSchema):
        amplitude_range: bounded_range(0.0)
        order: int = Field(ge=1)

    def __init__(self, amplitude_range: tuple[float, float] = (0.0, BIAS_MAX_AMPLITUDE), order: int = BIAS_ORDER,
                 clip: bool = True, p: float = 0.5) -> None:
        """``amplitude_range``: largest |log gain|; ``order``: polynomial degree (>= 1)."""
        super().__init__(p=p)
        self.amplitude_range = amplitude_range
        self.order = order
        self.clip = clip

    def _draw(self, strength: float, channels: int, height: int, width: int) -> dict[str, Any]:
        """(C, T) polynomial coefficients U(-1, 1)."""
        terms = (self.order + 1) * (self.order + 2) // 2 - 1
        return {"coefficients": self.random_generator.uniform(-1.0, 1.0, (channels, terms))}

    def _degrade(self, image: np.ndarray, peak: np.ndarray, strength: float, **draws: Any) -> np.ndarray:
        """x exp(a P / max |P|) per channel."""
        log_field = np.einsum("ct,thw->chw", draws["coefficients"], polynomial_basis(*image.shape[1:], self.order))
        scale = np.abs(log_field).max(axis=(1, 2), keepdims=True)
        return image * np.exp(strength * log_field / np.maximum(scale, np.finfo(float).tiny))


class KSpaceSpike(MRDegradation):
    """k-space spike (herringbone artefact): ``num_spikes`` random non-DC points per channel get
    intensity x |F(0)| added with a random phase (the image's own coefficient there is mostly small against
    it, so adding is as good as setting, and intensity 0 stays the identity); magnitude image."""

    _strength = "intensity_range"

    class InitSchema(_DegradationSchema):
        intensity_range: bounded_range(0.0)
        num_spikes: int = Field(ge=1)

    def __init__(self, intensity_range: tuple[float, float] = (0.0, SPIKE_MAX_INTENSITY), num_spikes: int = 1,
                 clip: bool = True, p: float = 0.5) -> None:
        """``intensity_range``: spike magnitude over |F(0)|; ``num_spikes``: points per channel (>= 1)."""
        super().__init__(p=p)
        self.intensity_range = intensity_range
        self.num_spikes = num_spikes
        self.clip = clip

    def _draw(self, strength: float, channels: int, height: int, width: int) -> dict[str, Any]:
        """(C, k) distinct flat non-DC positions and (C, k) phases."""
        if height * width < self.num_spikes + 1:
            raise ConfigError(f"a {height}x{width} image has fewer than {self.num_spikes} non-DC k-space points",
                              option="num_spikes")
        keys = self.random_generator.random((channels, height * width - 1))
        positions = np.argsort(keys, axis=1)[:, :self.num_spikes] + 1  # distinct, never 0 (DC)
        phases = self.random_generator.uniform(0.0, 2 * np.pi, positions.shape)
        return {"positions": positions, "phases": phases}

    def _degrade(self, image: np.ndarray, peak: np.ndarray, strength: float, **draws: Any) -> np.ndarray:
        """|image with spikes|."""
        return np.abs(add_kspace_spikes(image, draws["positions"], draws["phases"], strength))


class KSpaceUndersampling(MRDegradation):
    """Cartesian undersampling along ``axis``: keeps :func:`undersampling_mask` lines (one mask per
    channel), zero-filled reconstruction, magnitude; acceleration drawn from ``acceleration_range``."""

    _strength = "acceleration_range"
    _identity = 1.0

    class InitSchema(_PhaseEncodedSchema):
        acceleration_range: bounded_range(1.0)
        centre_fraction: float = Field(gt=0, le=1)

    def __init__(self, acceleration_range: tuple[float, float] = ACCELERATION_RANGE,
                 centre_fraction: float = CENTRE_FRACTION, axis: Literal[0, 1] = 0, clip: bool = True,
                 p: float = 0.5) -> None:
        """``acceleration_range``: lines / kept lines; ``centre_fraction``: always-kept centre (0..1]."""
        super().__init__(p=p)
        self.acceleration_range = acceleration_range
        self.centre_fraction = centre_fraction
        self.axis = axis
        self.clip = clip

    def _draw(self, strength: float, channels: int, height: int, width: int) -> dict[str, Any]:
        """(C, lines) boolean masks."""
        lines = (height, width)[self.axis]
        return {"masks": np.stack([undersampling_mask(lines, strength, self.random_generator, self.centre_fraction)
                                   for _ in range(channels)])}

    def _degrade(self, image: np.ndarray, peak: np.ndarray, strength: float, **draws: Any) -> np.ndarray:
        """|zero-filled reconstruction|."""
        return np.abs(reweight_kspace_lines(image, draws["masks"], self.axis))


class MotionGhosting(MRDegradation):
    """Motion ghosting: at severity s (from ``severity_range``, in [0, 1]) a random fraction s x
    ``max_fraction`` of the phase-encoding lines (along ``axis``) of each channel get phase errors
    U(-s max_phase, s max_phase); magnitude image. The draws do not depend on s, so with one seed a higher
    severity corrupts a superset of the lines, each by a larger phase."""

    _strength = "severity_range"

    class InitSchema(_PhaseEncodedSchema):
        severity_range: bounded_range(0.0, 1.0)
        max_fraction: float = Field(ge=0, le=1)
        max_phase: float = Field(ge=0)

    def __init__(self, severity_range: tuple[float, float] = (0.0, 1.0), max_fraction: float = MOTION_MAX_FRACTION,
                 max_phase: float = MOTION_MAX_PHASE, axis: Literal[0, 1] = 0, clip: bool = True,
                 p: float = 0.5) -> None:
        """``severity_range``: s; ``max_fraction``: fraction of lines hit at s = 1; ``max_phase``: radians."""
        super().__init__(p=p)
        self.severity_range = severity_range
        self.max_fraction = max_fraction
        self.max_phase = max_phase
        self.axis = axis
        self.clip = clip

    def _draw(self, strength: float, channels: int, height: int, width: int) -> dict[str, Any]:
        """(C, lines) phase errors in radians, zero on the unaffected lines."""
        lines = (height, width)[self.axis]
        order = np.argsort(self.random_generator.random((channels, lines)), axis=1)  # the order lines get hit
        unit = self.random_generator.uniform(-1.0, 1.0, (channels, lines))
        hit = np.zeros((channels, lines), dtype=bool)
        np.put_along_axis(hit, order[:, :round(strength * self.max_fraction * lines)], True, axis=1)
        return {"phases": np.where(hit, strength * self.max_phase * unit, 0.0)}

    def _degrade(self, image: np.ndarray, peak: np.ndarray, strength: float, **draws: Any) -> np.ndarray:
        """|image with phase-shifted lines|."""
        return np.abs(reweight_kspace_lines(image, np.exp(1j * draws["phases"]), self.axis))


class LowResolution(MRDegradation):
    """Low resolution: area down-sampling to round(size / factor) (>= 1 px), then bilinear up-sampling back
    (OpenCV, float64, channel by channel: cv2.resize takes at most 4 channels); factor from ``factor_range``."""

    _strength = "factor_range"
    _identity = 1.0

    class InitSchema(_DegradationSchema):
        factor_range: bounded_range(1.0)

    def __init__(self, factor_range: tuple[float, float] = LOWRES_FACTOR_RANGE, clip: bool = True,
                 p: float = 0.5) -> None:
        """``factor_range``: down-sampling factor (>= 1)."""
        super().__init__(p=p)
        self.factor_range = factor_range
        self.clip = clip

    def _draw(self, strength: float, channels: int, height: int, width: int) -> dict[str, Any]:
        """Nothing random."""
        return {}

    def _degrade(self, image: np.ndarray, peak: np.ndarray, strength: float, **draws: Any) -> np.ndarray:
        """Down- and up-sampled channels."""
        height, width = image.shape[1:]
        small = (max(1, round(width / strength)), max(1, round(height / strength)))  # cv2 sizes are (w, h)
        return np.stack([cv2.resize(cv2.resize(channel, small, interpolation=cv2.INTER_AREA), (width, height),
                                    interpolation=cv2.INTER_LINEAR) for channel in image])
