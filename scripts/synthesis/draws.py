"""Every random scalar of one synthesised image, drawn in a fixed order from one numpy Generator (one seed, one image):
what each label code is, structure intensities, surrounding layers, joint structures and acquisition settings."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from scripts.synthesis.params import DESS_PRIOR, Range, SynthesisParams

#: Surrounding-tissue palette for background layers and the base tissue, with draw weights.
_PALETTE: dict[str, float] = {"muscle": 0.3, "fat": 0.25, "tendon": 0.15, "vessel": 0.1, "fluid": 0.1, "cartilage": 0.1}


@dataclass(frozen=True)
class Roles:
    """What each code of a preset is, derived once from the preset's tissue names."""

    role: dict[int, str]
    femoral_cartilage: tuple[int, ...]
    tibial_cartilage: tuple[int, ...]


def tissue_roles(tissues: Mapping[int, str]) -> Roles:
    """Classify tissue names ('femoral bone lesion' -> lesion, 'tibial cartilage' -> cartilage, ...)."""
    role: dict[int, str] = {}
    for code, name in tissues.items():
        low = name.lower()
        if code == 0 or low == "background":
            role[code] = "background"
        elif "lesion" in low:
            role[code] = "lesion"
        elif "cartilage" in low:
            role[code] = "cartilage"
        elif "bone" in low:
            role[code] = "bone"
        else:
            role[code] = "other"
    fem = tuple(c for c, n in tissues.items() if role[c] == "cartilage" and "femoral" in n.lower())
    tib = tuple(c for c, n in tissues.items() if role[c] == "cartilage" and "tibial" in n.lower())
    return Roles(role, fem, tib)


@dataclass
class _Layer:
    """One tissue layer of the surroundings: blobs (field > threshold) or a ribbon (|field| < half_width)."""

    kind: str
    scale_mm: float
    level: float
    region_level: float
    mean: float
    std: float


@dataclass
class Draw:
    """Every random scalar of one synthesised image (noise fields come from a torch generator seeded by `seed`)."""

    seed: int
    code_mean: dict[int, float]
    code_std: dict[int, float]
    base_mean: float
    base_std: float
    layers: list[_Layer]
    ribbon_region_mm: float
    air: bool
    air_sigma_mm: float
    air_level: float
    air_mean: float
    rim: bool
    rim_mm: float
    rim_mean: float
    rim_std: float
    fluid: bool
    fluid_mm: float
    fluid_patch_mm: float
    fluid_patch_level: float
    fluid_mean: float
    fluid_std: float
    meniscus: bool
    meniscus_mm: float
    meniscus_mean: float
    meniscus_std: float
    texture_scale_mm: float
    blur_sigma_mm: tuple[float, ...]
    bias_strength: float
    bias_scale_mm: float
    noise_std: float
    gamma: float
    contrast: float
    brightness: float


class _IntensitySampler:
    """Draws mean intensities: from `DESS_PRIOR` in prior mode (with outliers), else uniform in [0, 1]."""

    def __init__(self, rng: np.random.Generator, params: SynthesisParams) -> None:
        self.rng = rng
        self.params = params
        self.prior = bool(rng.random() < params.prior_prob)

    def mean(self, kind: str) -> float:
        if not self.prior or self.rng.random() < self.params.outlier_prob:
            return float(self.rng.uniform(0.0, 1.0))
        return float(self.rng.uniform(*DESS_PRIOR[kind]))

    def near(self, value: float, spread: float = 0.15) -> float:
        """A value close to `value` (relative jitter), for structures meant to look alike."""
        return float(np.clip(value * self.rng.uniform(1.0 - spread, 1.0 + spread), 0.0, 1.0))

    def std(self) -> float:
        return float(self.rng.uniform(*self.params.texture_std))


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def _log_uniform(rng: np.random.Generator, r: Range) -> float:
    """Log-uniform draw; scale-like parameters (sizes, gamma) vary by factors, not by offsets."""
    lo, hi = max(r[0], 1e-6), max(r[1], 1e-6)
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _randint(rng: np.random.Generator, r: Range) -> int:
    return int(rng.integers(int(round(r[0])), int(round(r[1])) + 1))


def _level_for_fraction(fraction: float) -> float:
    """Threshold of a unit-Gaussian field that leaves `fraction` of it above."""
    return NormalDist().inv_cdf(1.0 - min(max(fraction, 1e-4), 1.0 - 1e-4))


def _draw_layers(rng: np.random.Generator, p: SynthesisParams, intens: _IntensitySampler, cart: float) -> list[_Layer]:
    """Surrounding tissue layers; the first two are always a cartilage-bright and a fluid-bright decoy."""
    kinds = list(_PALETTE)
    weights = np.array([_PALETTE[k] for k in kinds]) / sum(_PALETTE.values())
    n_blobs = max(_randint(rng, p.background_layers), 2)
    layers = []
    for i in range(n_blobs):
        tissue = "cartilage" if i == 0 else "fluid" if i == 1 else str(rng.choice(kinds, p=weights))
        mean = intens.near(cart) if tissue == "cartilage" else intens.mean(tissue)
        layers.append(
            _Layer(
                "blob",
                _log_uniform(rng, p.background_scale_mm),
                _level_for_fraction(_uniform(rng, p.background_fraction)),
                0.0,
                mean,
                intens.std(),
            )
        )
    for _ in range(_randint(rng, p.ribbons)):
        scale = _log_uniform(rng, (10.0, 50.0))
        width = _uniform(rng, p.ribbon_width_mm)
        tissue = "cartilage" if rng.random() < 0.5 else str(rng.choice(kinds, p=weights))
        mean = intens.near(cart) if tissue == "cartilage" else intens.mean(tissue)
        # |field| < h around the zero level set: band width ~ 2h / |grad| with |grad| ~ 2 / scale for our fields.
        half_width = width / scale
        layers.append(
            _Layer(
                "ribbon",
                scale,
                half_width,
                _level_for_fraction(_uniform(rng, (0.2, 0.7))),
                mean,
                intens.std(),
            )
        )
    order = rng.permutation(len(layers))
    return [layers[i] for i in order]


def _contrasting(intens: _IntensitySampler, kind: str, other: float, min_contrast: float) -> float:
    """A `kind` mean at least `min_contrast` away from `other`.

    Cartilage is only a few voxels thick: if it had the intensity of the bone surface it sits on, its label would be
    invisible and the network would be taught to hallucinate. Its outer surface may still blend with the surroundings.
    """
    value = intens.mean(kind)
    for _ in range(20):
        if abs(value - other) >= min_contrast:
            return value
        value = intens.mean(kind)
    return other + min_contrast if other + min_contrast <= 1.0 else other - min_contrast


def draw_parameters(rng: np.random.Generator, p: SynthesisParams, roles: Roles, ndim: int) -> Draw:
    """All random scalars of one image, in a fixed order (so a seed always means the same image)."""
    intens = _IntensitySampler(rng, p)
    marrow = intens.mean("marrow")
    rim, rim_mean = bool(rng.random() < p.rim_prob), intens.mean("cortex")
    cart = _contrasting(intens, "cartilage", rim_mean if rim else marrow, p.min_contrast)
    code_mean, code_std = {}, {}
    for code, role in sorted(roles.role.items()):
        if role == "background":
            continue
        if role == "cartilage":
            code_mean[code] = intens.near(cart)
        elif role == "bone":
            code_mean[code] = intens.near(marrow)
        else:
            code_mean[code] = intens.mean("lesion" if role == "lesion" else "other")
        code_std[code] = intens.std()
    base = str(rng.choice(["muscle", "fat"]))
    return Draw(
        seed=int(rng.integers(0, 2**62)),
        code_mean=code_mean,
        code_std=code_std,
        base_mean=intens.mean(base),
        base_std=intens.std(),
        layers=_draw_layers(rng, p, intens, cart),
        ribbon_region_mm=_log_uniform(rng, (10.0, 40.0)),
        air=bool(rng.random() < p.air_prob),
        air_sigma_mm=_uniform(rng, (15.0, 40.0)),
        air_level=_uniform(rng, (0.02, 0.15)),
        air_mean=intens.mean("air"),
        rim=rim,
        rim_mm=_uniform(rng, p.rim_thickness_mm),
        rim_mean=rim_mean,
        rim_std=intens.std(),
        fluid=bool(rng.random() < p.fluid_prob),
        fluid_mm=_log_uniform(rng, p.fluid_width_mm),
        fluid_patch_mm=_log_uniform(rng, (2.0, 15.0)),
        fluid_patch_level=_level_for_fraction(_uniform(rng, (0.3, 0.9))),
        fluid_mean=_contrasting(intens, "fluid", cart, p.min_contrast),
        fluid_std=intens.std(),
        meniscus=bool(rng.random() < p.meniscus_prob),
        meniscus_mm=_uniform(rng, p.meniscus_reach_mm),
        meniscus_mean=intens.mean("meniscus"),
        meniscus_std=intens.std(),
        texture_scale_mm=_log_uniform(rng, p.texture_scale_mm),
        blur_sigma_mm=tuple(_uniform(rng, p.blur_sigma_mm) for _ in range(ndim)),
        bias_strength=_uniform(rng, p.bias_strength),
        bias_scale_mm=_log_uniform(rng, p.bias_scale_mm),
        noise_std=_uniform(rng, p.noise_std),
        gamma=_log_uniform(rng, p.gamma),
        contrast=_uniform(rng, p.contrast),
        brightness=_uniform(rng, p.brightness),
    )
