"""The synthesis model's parameters: the DESS-like intensity prior and the ranges of every random draw, checked."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

Range = tuple[float, float]

#: Mean intensity ranges of a water-excitation 3D DESS knee scan, fluid ~ 1 (our reading of typical OAI DESS images).
DESS_PRIOR: dict[str, Range] = {
    "cartilage": (0.45, 0.80),
    "fluid": (0.75, 1.00),
    "marrow": (0.10, 0.35),
    "cortex": (0.00, 0.10),
    "lesion": (0.00, 1.00),
    "meniscus": (0.00, 0.15),
    "muscle": (0.20, 0.45),
    "fat": (0.02, 0.20),
    "tendon": (0.00, 0.10),
    "vessel": (0.50, 1.00),
    "air": (0.00, 0.03),
    "other": (0.00, 1.00),
}


@dataclass(frozen=True)
class SynthesisParams:
    """Ranges of every randomised parameter (uniform in [lo, hi] unless noted); a scalar fixes a range to one value.

    Args:
        prior_prob: probability that structure intensities follow `DESS_PRIOR` (else all uniform in [0, 1]).
        outlier_prob: in prior mode, probability that one structure ignores the prior anyway.
        min_contrast: least difference between cartilage and the bone surface under it (rim, else marrow), and between
            cartilage and the joint fluid touching it; other neighbours may match cartilage exactly.
        texture_std: relative std of within-structure smooth noise, drawn per structure.
        texture_scale_mm: feature size of that noise.
        background_layers: number of random tissue layers in the surroundings (integers, inclusive).
        background_scale_mm: feature size of a layer's blobs.
        background_fraction: share of the field of view one layer covers.
        ribbons: number of thin curved bands in the surroundings (integers, inclusive).
        ribbon_width_mm: their width.
        rim_prob / rim_thickness_mm: dark cortical / subchondral rim inside bone surfaces.
        fluid_prob / fluid_width_mm: bright fluid band next to cartilage (patchy).
        meniscus_prob / meniscus_reach_mm: dark wedges where femoral and tibial cartilage come this close.
        air_prob: probability of air (dark) far from the bones.
        blur_sigma_mm: Gaussian partial-volume blur, drawn per axis.
        bias_strength / bias_scale_mm: multiplicative bias field exp(strength * smooth noise) and its feature size.
        noise_std: Rician noise sigma relative to the image's 99.5th percentile.
        gamma: exponent, drawn log-uniformly.
        contrast / brightness: final linear change before clipping to [0, 1].
    """

    prior_prob: float = 0.75
    outlier_prob: float = 0.15
    min_contrast: float = 0.15
    texture_std: Range = (0.02, 0.2)
    texture_scale_mm: Range = (1.0, 10.0)
    background_layers: Range = (2, 6)
    background_scale_mm: Range = (5.0, 60.0)
    background_fraction: Range = (0.03, 0.35)
    ribbons: Range = (1, 4)
    ribbon_width_mm: Range = (1.0, 3.0)
    rim_prob: float = 0.9
    rim_thickness_mm: Range = (0.4, 2.0)
    fluid_prob: float = 0.7
    fluid_width_mm: Range = (0.3, 5.0)
    meniscus_prob: float = 0.7
    meniscus_reach_mm: Range = (2.0, 8.0)
    air_prob: float = 0.25
    blur_sigma_mm: Range = (0.0, 0.5)
    bias_strength: Range = (0.0, 0.4)
    bias_scale_mm: Range = (40.0, 150.0)
    noise_std: Range = (0.0, 0.06)
    gamma: Range = (0.6, 1.6)
    contrast: Range = (0.8, 1.2)
    brightness: Range = (-0.08, 0.08)

    @classmethod
    def create(cls, **overrides: Any) -> SynthesisParams:
        """Defaults with `overrides` applied; lists (from JSON configs) and scalars are turned into valid ranges.

        Raises a ValueError naming the bad key, so a typo in a config fails at construction, not silently.
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(f"unknown synthesis parameter(s) {unknown}; valid names: {sorted(known)}")
        values = {}
        for name, value in overrides.items():
            default = getattr(cls, name)
            values[name] = _as_range(name, value) if isinstance(default, tuple) else _as_unit(name, value)
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (to pass on as keyword arguments)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _as_range(name: str, value: Any) -> Range:
    """A (lo, hi) pair from a scalar or a 2-sequence, checked."""
    lo, hi = (value, value) if np.isscalar(value) else tuple(value)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"synthesis parameter {name!r} must be a finite (lo, hi) with lo <= hi, got {value!r}")
    return lo, hi


def _as_unit(name: str, value: Any) -> float:
    """A probability (or other scalar) in [0, 1], checked."""
    if not np.isscalar(value) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"synthesis parameter {name!r} must be a number in [0, 1], got {value!r}")
    return float(value)
