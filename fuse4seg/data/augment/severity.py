"""The MR degradations by name and severity: :func:`at_severity` (a degradation at a level in [0, 1], linear from
none to the largest strength; the table is in :mod:`fuse4seg.data.augment.degradations`' docstring),
:func:`random_degradation` (its training form), the families :data:`GROUPS` and the :data:`ACQUISITION_ORDER`
in which composed degradations apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import albumentations as A

from fuse4seg.data.augment.degradations import (
    ACCELERATION_RANGE,
    BIAS_MAX_AMPLITUDE,
    BLUR_SIGMA_RANGE,
    LOWRES_FACTOR_RANGE,
    NOISE_MAX_FRACTION,
    SPIKE_MAX_INTENSITY,
    BiasField,
    ClippedGaussianBlur,
    GaussianNoise,
    KSpaceSpike,
    KSpaceUndersampling,
    LowResolution,
    MotionGhosting,
    RicianNoise,
)
from fuse4seg.errors import ConfigError


@dataclass(frozen=True)
class _Scale:
    """How a degradation's strength maps onto severity: ``build(range, p)``, strengths at levels 0 and 1,
    and the lowest strength random draws use."""

    build: Callable[[tuple[float, float], float], A.BasicTransform]
    none: float
    full: float
    lowest: float

    def at(self, level: float) -> float:
        """Strength at ``level`` in [0, 1] (linear)."""
        return self.none + (self.full - self.none) * level


_SCALES: dict[str, _Scale] = {
    "noise": _Scale(lambda r, p: GaussianNoise(fraction_range=r, p=p), 0.0, NOISE_MAX_FRACTION, 0.0),
    "rician": _Scale(lambda r, p: RicianNoise(fraction_range=r, p=p), 0.0, NOISE_MAX_FRACTION, 0.0),
    "blur": _Scale(lambda r, p: ClippedGaussianBlur(sigma_limit=r, blur_limit=0, p=p), 0.0, BLUR_SIGMA_RANGE[1],
                   BLUR_SIGMA_RANGE[0]),
    "bias": _Scale(lambda r, p: BiasField(amplitude_range=r, p=p), 0.0, BIAS_MAX_AMPLITUDE, 0.0),
    "spike": _Scale(lambda r, p: KSpaceSpike(intensity_range=r, p=p), 0.0, SPIKE_MAX_INTENSITY, 0.0),
    "undersample": _Scale(lambda r, p: KSpaceUndersampling(acceleration_range=r, p=p), *ACCELERATION_RANGE,
                          ACCELERATION_RANGE[0]),
    "motion": _Scale(lambda r, p: MotionGhosting(severity_range=r, p=p), 0.0, 1.0, 0.0),
    "lowres": _Scale(lambda r, p: LowResolution(factor_range=r, p=p), *LOWRES_FACTOR_RANGE,
                     LOWRES_FACTOR_RANGE[0]),
}
#: Degradation names, in the order reports list them.
DEGRADATIONS: tuple[str, ...] = tuple(_SCALES)
#: Families the robustness command accepts (``--degradations noise,blur,kspace,motion,lowres``).
GROUPS: dict[str, tuple[str, ...]] = {"noise": ("noise", "rician"), "blur": ("blur",), "bias": ("bias",),
                                      "kspace": ("spike", "undersample"), "motion": ("motion",),
                                      "lowres": ("lowres",)}
#: The order in which composed degradations apply, as in an acquisition: the coil's bias multiplies the
#: object, motion, spikes and undersampling corrupt k-space, the resolution limit blurs, noise comes last
#: (noise first would be blurred away).
ACQUISITION_ORDER: tuple[str, ...] = ("bias", "motion", "spike", "undersample", "lowres", "blur", "noise", "rician")


def _scale(name: str) -> _Scale:
    """The :class:`_Scale` of a degradation name; ConfigError (option degradations) for an unknown one."""
    if name not in _SCALES:
        raise ConfigError(f"unknown degradation {name!r}; choose from {', '.join(DEGRADATIONS)}",
                          option="degradations")
    return _SCALES[name]


def _check_level(level: float, option: str) -> float:
    """``level`` as a float in [0, 1], or ConfigError naming ``option``."""
    if not 0.0 <= level <= 1.0:  # also rejects NaN
        raise ConfigError(f"must be in [0, 1], got {level}", option=option)
    return float(level)


def at_severity(name: str, level: float) -> A.BasicTransform:
    """Degradation ``name`` (from DEGRADATIONS) always applied (p=1) at the strength of ``level`` in [0, 1]
    (linear from none to the largest, see the module docstring); level 0 is the identity."""
    strength = _scale(name).at(_check_level(level, "level"))
    return _scale(name).build((strength, strength), 1.0)


def random_degradation(name: str, p: float = 0.5, max_level: float = 1.0) -> A.BasicTransform:
    """Training form of degradation ``name``: applied with probability ``p``, its strength drawn uniformly
    each call from the lowest random strength to that of ``max_level`` (1: the whole range)."""
    scale = _scale(name)
    high = scale.at(_check_level(max_level, "max_level"))
    return scale.build((min(scale.lowest, high), high), _check_level(p, "p"))
