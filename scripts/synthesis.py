"""Label map -> MR-like knee image, randomised (domain randomisation in the spirit of SynthSeg, Billot et al. 2023).

Why: no real knee MR image with cartilage labels is available to train on, but real label maps are (bones and
cartilage only). A network trained on images synthesised from them with intensities, textures, surroundings, blur,
bias, noise and contrast all randomised widely can only rely on what stays constant across draws: the *shape and
context* of cartilage (a thin layer on a bone surface, facing the opposing cartilage). That is what transfers to real
3D DESS scans from other sites and scanners.

Generative model (one draw per call; every range below is a keyword of `SynthesisParams`, default shown; sizes and
gamma are drawn log-uniformly, everything else uniformly):

1. **Roles.** Each code of the label preset gets a role from its name in `scripts.labels` (`tissues`): background,
   bone, cartilage, lesion or other. Femoral and tibial cartilage codes are remembered for the meniscus model.
2. **Structure intensities.** With probability `prior_prob` (0.75) the sample follows a DESS-like prior (`DESS_PRIOR`,
   our reading of water-excitation DESS: cartilage and fluid bright, fat-suppressed marrow darker, muscle
   intermediate, fat, tendon, meniscus and cortex dark); each structure still leaves that prior with probability
   `outlier_prob` (0.15). Otherwise every structure's mean is uniform in [0, 1] (SynthSeg style: the contrast between
   ALL structures is random). Cartilage codes share a base mean (+-15 %), so do bone codes; lesion codes (7-9) each get
   their own. One constraint keeps the label meaningful: cartilage differs by at least `min_contrast` (0.15) from the
   bone surface it sits on and from the fluid touching it; any other neighbour may match it.
3. **Surroundings** (everything the label map calls background): a base tissue (muscle or fat) under
   `background_layers` (2-6) thresholded smooth noise fields, feature size `background_scale_mm` (5-60 mm), area
   `background_fraction` (3-35 %), each with its own intensity from a palette (muscle, fat, tendon, vessel, fluid,
   cartilage-like). One layer is always as bright as cartilage and one as bright as fluid, and `ribbons` (1-4) thin
   curved bands (`ribbon_width_mm` 1-3 mm: the zero level set of a smooth field) are half the time cartilage-bright:
   brightness and thinness alone never mean cartilage. Air far from the anatomy with probability `air_prob` (0.25).
4. **Joint structures.** Bright synovial fluid / effusion in a patchy band next to cartilage (`fluid_prob` 0.7, width
   `fluid_width_mm` 0.3-5 mm). Dark meniscus-like wedges where femoral and tibial cartilage come within
   `meniscus_reach_mm` (2-8 mm) of each other (`meniscus_prob` 0.7). A dark cortical / subchondral rim inside every
   bone surface, also under cartilage (`rim_prob` 0.9, thickness `rim_thickness_mm` 0.4-2 mm, full resolution).
5. **Texture.** Every structure is multiplied by 1 + s * n, n a smooth noise field (feature size `texture_scale_mm`
   1-10 mm) and s a per-structure relative std from `texture_std` (0.02-0.2).
6. **Acquisition.** Partial-volume blur (Gaussian, sigma drawn per axis in mm from `blur_sigma_mm` 0-0.5, so
   anisotropic), a smooth multiplicative bias field exp(b * n) (`bias_strength` 0-0.4, feature size `bias_scale_mm`
   40-150 mm), scaling so the 99.5th percentile is 1, Rician noise (magnitude of a complex Gaussian, sigma
   `noise_std` 0-0.06 of that level), gamma (`gamma` 0.6-1.6), contrast and brightness (`contrast` 0.8-1.2,
   `brightness` -0.08-0.08), clipped to [0, 1] like a percentile-normalised real scan.

Speed: smooth fields and the surroundings (steps 3-5) are composed on a ~1 mm grid (the label map subsampled by whole
voxels) with soft-edged weights, then upsampled in one call; only background voxels take the surroundings, so every
labelled edge (cartilage included) stays at full resolution. Hence the fluid band and the meniscus wedges have outer
edges about 1 mm smooth, and the thinnest fluid band is about one grid cell.

All lengths are in mm and converted with the voxel spacing, so a 0.36 mm slice and a 1.5 mm thick-slice volume get
the same anatomy-sized features. Everything is pure torch on the label's device (CPU or CUDA); random scalars come
from a numpy Generator and noise fields from a torch Generator seeded from it, so one seed gives one image per device.
`synthesize_knee_mr` is the single implementation; `RandSynthesizeKneeMRd` (training) and `SynthesizeKneeMRd`
(validation: fixed per case, cacheable) only draw the seed and carry the metadata.
"""

from __future__ import annotations

import copy
import functools
import math
import zlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import PurePath
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends

from scripts.labels import check_label_values, get_preset, source_name

__all__ = [
    "DESS_PRIOR",
    "SynthesisParams",
    "synthesize_knee_mr",
    "RandSynthesizeKneeMRd",
    "SynthesizeKneeMRd",
    "resolve_spacing",
    "case_rng",
]

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

#: Surrounding-tissue palette for background layers and the base tissue, with draw weights.
_PALETTE: dict[str, float] = {"muscle": 0.3, "fat": 0.25, "tendon": 0.15, "vessel": 0.1, "fluid": 0.1, "cartilage": 0.1}
_ROLE_IDS = {"background": 0, "bone": 1, "cartilage": 2, "lesion": 3, "other": 4}
_ROBUST_MAX_QUANTILE = 0.995
_QUANTILE_SAMPLES = 1 << 14
_FIELD_GRID_MM = 1.0  # smooth fields and the surroundings are composed about this coarse, then upsampled


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


# ----------------------------------------------------------------------------------------------------------- roles
@dataclass(frozen=True)
class _Roles:
    """What each code of a preset is, derived once from the preset's tissue names."""

    role: dict[int, str]
    femoral_cartilage: tuple[int, ...]
    tibial_cartilage: tuple[int, ...]


def _tissue_roles(tissues: Mapping[int, str]) -> _Roles:
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
    return _Roles(role, fem, tib)


# ------------------------------------------------------------------------------------------------------ parameters
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
class _Draw:
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


def _draw(rng: np.random.Generator, p: SynthesisParams, roles: _Roles, ndim: int) -> _Draw:
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
    return _Draw(
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


# -------------------------------------------------------------------------------------------------- tensor helpers
def _resize(x: torch.Tensor, shape: Sequence[int], mode: str | None = None) -> torch.Tensor:
    """Resize a (C, *spatial) field to `shape` (no-op when equal); bilinear/trilinear unless told otherwise.

    Channels go in as a batch of one-channel images: on CPU, torch's multi-channel path is ~2x slower (a layout copy).
    """
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    mode = mode or ("bilinear" if len(shape) == 2 else "trilinear")
    align = False if mode in ("bilinear", "bicubic", "trilinear") else None
    return F.interpolate(x[:, None], size=tuple(shape), mode=mode, align_corners=align)[:, 0]


def _coarse_grid(shape: Sequence[int], spacing: Sequence[float], cell_mm: float) -> tuple[list[int], list[float]]:
    """Shape and spacing of a grid over the same field of view with cells of about `cell_mm` (never finer)."""
    grid = [max(2, min(n, int(math.ceil(n * s / cell_mm)))) for n, s in zip(shape, spacing)]
    return grid, [n * s / g for n, s, g in zip(shape, spacing, grid)]


@functools.lru_cache(maxsize=256)
def _gaussian_weights(sigma: float, max_radius: int, truncate: float = 3.0) -> tuple[float, ...]:
    """Normalised Gaussian taps out to `truncate` sigma (cached: the noise fields reuse one sigma all the time)."""
    radius = max(1, min(int(math.ceil(truncate * sigma)), max_radius))
    taps = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)]
    return tuple(t / sum(taps) for t in taps)


def _gaussian_blur(x: torch.Tensor, sigma_vox: Sequence[float], truncate: float = 3.0) -> torch.Tensor:
    """Separable Gaussian blur of a (C, *spatial) field along each axis, edges replicated, cut at `truncate` sigma.

    Sums shifted views, one fused multiply-add per tap: about twice as fast on CPU as a single-channel convolution,
    plain elementwise work on a GPU, and free of oneDNN's per-shape set-up cost (the noise grids change size every
    call, and a first convolution of a new shape costs milliseconds).
    """
    nd = x.ndim - 1
    for axis, sigma in enumerate(sigma_vox):
        n = x.shape[axis + 1]
        if sigma < 0.2 or n < 2:
            continue
        taps = _gaussian_weights(round(float(sigma), 3), n - 1, truncate)
        radius = len(taps) // 2
        pad = [0] * (2 * nd)
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = radius
        padded = F.pad(x[None], pad, mode="replicate")[0]
        out = padded.narrow(axis + 1, 0, n) * taps[0]
        for i, w in enumerate(taps[1:], start=1):
            out.add_(padded.narrow(axis + 1, i, n), alpha=w)
        x = out
    return x


def smooth_noise(
    shape: Sequence[int], spacing: Sequence[float], scale_mm: float, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Zero-mean, about unit-std Gaussian noise with features about `scale_mm` wide, shape (1, *shape).

    White noise on a grid of scale/2 cells, blurred and normalised there (so no lattice shows, and cheaply), then
    interpolated up: the same physical texture whatever the voxel size, at the cost of a small randn and blur. The
    smooth step (bicubic in 2D) only goes to scale/6 cells; the cheap bi/trilinear step to `shape` then leaves no
    visible kinks.
    """
    scale_mm = max(scale_mm, 1e-3)
    low, _ = _coarse_grid(shape, spacing, scale_mm / 2.0)
    mid, _ = _coarse_grid(shape, spacing, scale_mm / 6.0)
    field = torch.randn((1, *low), generator=gen, device=device, dtype=torch.float32)
    field = _gaussian_blur(field, [1.0 if n > 2 else 0.0 for n in low], truncate=2.0)  # 5 taps: enough to decorrelate
    std, mean = torch.std_mean(field)
    field = field.sub_(mean).div_(std.clamp_min(1e-6))
    return _resize(_resize(field, mid, "bicubic" if len(shape) == 2 else "trilinear"), shape)


def _mm_to_vox(mm: float, spacing: Sequence[float]) -> list[int]:
    return [int(round(mm / s)) for s in spacing]


def _box_any(mask: torch.Tensor, radius: Sequence[int]) -> torch.Tensor:
    """Dilation of a boolean (C, *spatial) mask by a box of `radius` voxels per axis; outside the image counts as 0.

    Box sums by cumulative sums: O(n) whatever the radius (CPU max- or average-pooling is several times slower).
    """
    x = mask.to(torch.float32)
    for axis, r in enumerate(radius, start=1):
        n = x.shape[axis]
        r = min(r, n - 1)
        if r <= 0:
            continue
        c = torch.cumsum(x, dim=axis)
        out = torch.empty_like(c)
        out.narrow(axis, 0, n - r).copy_(c.narrow(axis, r, n - r))  # sum of x[: i + r + 1]
        out.narrow(axis, n - r, r).copy_(c.narrow(axis, n - 1, 1).expand_as(out.narrow(axis, n - r, r)))
        out.narrow(axis, r + 1, n - r - 1).sub_(c.narrow(axis, 0, n - r - 1))  # minus sum of x[: i - r]
        x = out
    return x > 0.5


def _near(mask: torch.Tensor, reach_mm: float, spacing: Sequence[float]) -> torch.Tensor:
    """Voxels within about `reach_mm` of a (C, *spatial) boolean mask: a rounded dilation.

    Small reaches use an exact box; larger ones blur the mask on a grid of reach/3 cells and threshold it, which gives
    round (not square) outlines at a cost independent of the reach.
    """
    if reach_mm <= 3.0 * min(spacing):
        return _box_any(mask, _mm_to_vox(reach_mm, spacing))
    shape = mask.shape[1:]
    grid, grid_spacing = _coarse_grid(shape, spacing, reach_mm / 3.0)
    coarse = _resize(mask.to(torch.float32), grid, "area")
    coarse = _gaussian_blur(coarse, [0.5 * reach_mm / s for s in grid_spacing])
    return _resize(coarse, shape) > 0.05


def _robust_max(x: torch.Tensor, q: float = _ROBUST_MAX_QUANTILE) -> torch.Tensor:
    """Approximate q-quantile from a strided subsample (torch.quantile sorts everything and refuses > 16M values)."""
    flat = x.reshape(-1)
    sample = flat[:: max(1, flat.numel() // _QUANTILE_SAMPLES)]
    k = min(sample.numel(), max(1, int(round(q * sample.numel()))))
    return torch.kthvalue(sample, k).values.clamp_min(1e-6)


def _lookup(table: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """table[codes] via index_select on int32 codes (about 4x faster on CPU than advanced indexing with int64)."""
    return table.index_select(0, codes.reshape(-1)).view(codes.shape)


def _code_mask(codes: torch.Tensor, selected: Sequence[int], n_codes: int) -> torch.Tensor:
    """Boolean map of voxels whose code is in `selected` (a comparison for one code, a lookup table for several)."""
    if len(selected) == 1:
        return codes == selected[0]
    table = torch.zeros(n_codes, dtype=torch.bool)
    table[list(selected)] = True
    return _lookup(table.to(codes.device), codes)


# -------------------------------------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class _CodeSets:
    """Codes per role, in the form the renderer needs them."""

    n_codes: int
    background: list[int]
    cartilage: list[int]
    bone: list[int]
    femoral: list[int]
    tibial: list[int]

    @classmethod
    def of(cls, roles: _Roles, n_codes: int) -> _CodeSets:
        by_role = {r: [c for c, rr in sorted(roles.role.items()) if rr == r] for r in _ROLE_IDS}
        return cls(
            n_codes,
            by_role["background"],
            by_role["cartilage"],
            by_role["bone"] + by_role["lesion"],  # lesions lie inside bone: one surface, one rim
            list(roles.femoral_cartilage),
            list(roles.tibial_cartilage),
        )


def _soft_step(value: torch.Tensor, edge: float) -> torch.Tensor:
    """0 where value < -edge/2, 1 where value > edge/2, linear between.

    A threshold that keeps the sub-cell position of the edge, so shapes drawn on the coarse grid upsample to smooth
    outlines instead of staircases.
    """
    return (value / max(edge, 1e-6) + 0.5).clamp_(0.0, 1.0)


def _soften(mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask on the coarse grid as a weight with edges about one cell wide (no staircase once upsampled)."""
    return _gaussian_blur(mask.to(torch.float32), [0.7] * (mask.ndim - 1))


def _surroundings(
    small: torch.Tensor,
    spacing: Sequence[float],
    draw: _Draw,
    sets: _CodeSets,
    texture: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """Textured intensity of everything the label map calls background, on a coarse grid of codes `small`.

    Layers of blobs and ribbons over a base tissue, then air far from the anatomy, fluid next to cartilage and dark
    wedges where femoral and tibial cartilage approach, each blended in with a soft-edged weight. Only background
    voxels use the result, so the labelled structures keep their full-resolution edges.
    """
    device, grid, cell = small.device, small.shape[1:], min(spacing)
    around = texture * (draw.base_mean * draw.base_std) + draw.base_mean

    def blend(weight: torch.Tensor, mean: float, std: float) -> None:
        nonlocal around
        around = torch.lerp(around, texture * (mean * std) + mean, weight)

    # A unit-variance field with features of `scale` mm changes by about 2 / scale per mm: edges one cell wide.
    # Ribbons are confined to parts of the field of view: one shared region field, thresholded per ribbon.
    region = None
    for layer in draw.layers:
        field = smooth_noise(grid, spacing, layer.scale_mm, gen, device)
        if layer.kind == "blob":
            weight = _soft_step(field - layer.level, 2.0 * cell / layer.scale_mm)
        else:
            if region is None:
                region = smooth_noise(grid, spacing, draw.ribbon_region_mm, gen, device)
            weight = _soft_step(layer.level - field.abs(), 2.0 * cell / layer.scale_mm)
            weight *= _soft_step(region - layer.region_level, 2.0 * cell / draw.ribbon_region_mm)
        blend(weight, layer.mean, layer.std)
    if draw.air:
        blend(_air_weight(small, spacing, draw, gen, sets), draw.air_mean, 0.0)
    if draw.fluid and sets.cartilage:
        patch = smooth_noise(grid, spacing, draw.fluid_patch_mm, gen, device) - draw.fluid_patch_level
        near = _near(_code_mask(small, sets.cartilage, sets.n_codes), draw.fluid_mm, spacing)
        blend(_soften(near) * _soft_step(patch, 2.0 * cell / draw.fluid_patch_mm), draw.fluid_mean, draw.fluid_std)
    if draw.meniscus and sets.femoral and sets.tibial:
        pair = torch.cat([_code_mask(small, c, sets.n_codes) for c in (sets.femoral, sets.tibial)])
        near = _near(pair, draw.meniscus_mm, spacing)
        blend(_soften(near[:1] & near[1:]), draw.meniscus_mean, draw.meniscus_std)
    return around


def _air_weight(
    small: torch.Tensor, spacing: Sequence[float], draw: _Draw, gen: torch.Generator, sets: _CodeSets
) -> torch.Tensor:
    """Air far from every labelled structure: low values of a heavily blurred 'anatomy nearby' field plus noise."""
    grid = small.shape[1:]
    coarse, coarse_spacing = _coarse_grid(grid, spacing, 4.0)  # smooth, so compute it coarser still
    anatomy = _resize((~_code_mask(small, sets.background, sets.n_codes)).to(torch.float32), coarse, "area")
    near = _gaussian_blur(anatomy, [draw.air_sigma_mm / s for s in coarse_spacing])
    near = near / near.amax().clamp_min(1e-6)
    wobble = smooth_noise(coarse, coarse_spacing, 20.0, gen, small.device)
    level = _resize(near + 0.05 * wobble, grid)
    return _soft_step(draw.air_level - level, 0.25 * min(spacing) / draw.air_sigma_mm)


def _rician(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Magnitude of a complex signal with Gaussian noise on both channels (Rician; Rayleigh where x ~ 0)."""
    if sigma <= 0:
        return x
    noise = torch.randn((2, *x.shape), generator=gen, device=x.device, dtype=x.dtype).mul_(sigma)
    real, imag = noise[0].add_(x), noise[1]
    return real.mul_(real).addcmul_(imag, imag).sqrt_()


def _coarse_fields(
    codes: torch.Tensor, spacing: Sequence[float], draw: _Draw, sets: _CodeSets, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Texture, bias field and surroundings, composed on a ~1 mm grid and upsampled together in one call.

    The grid is the label map subsampled by whole voxels, so label-derived masks there cost almost nothing.
    """
    shape = codes.shape[1:]
    step = [max(1, int(round(_FIELD_GRID_MM / s))) for s in spacing]
    small = codes[(slice(None), *(slice(None, None, k) for k in step))]
    grid_spacing = [s * k for s, k in zip(spacing, step)]
    grid = small.shape[1:]
    device = codes.device
    texture = smooth_noise(grid, grid_spacing, draw.texture_scale_mm, gen, device)
    bias = torch.exp(draw.bias_strength * smooth_noise(grid, grid_spacing, draw.bias_scale_mm, gen, device))
    around = _surroundings(small, grid_spacing, draw, sets, texture, gen)
    full = _resize(torch.cat([texture, bias, around]), shape)
    return full[0:1], full[1:2], full[2:3]


def _render(
    codes: torch.Tensor, spacing: Sequence[float], draw: _Draw, sets: _CodeSets, gen: torch.Generator
) -> torch.Tensor:
    """Tensor part of the model: (1, *spatial) int32 codes (modified in place) -> (1, *spatial) image in [0, 1]."""
    texture, bias, around = _coarse_fields(codes, spacing, draw, sets, gen)
    device = codes.device
    rim_code = sets.n_codes
    means = [draw.code_mean.get(c, 0.0) for c in range(rim_code)] + [draw.rim_mean]
    stds = [draw.code_std.get(c, 0.0) for c in range(rim_code)] + [draw.rim_std]
    table = torch.tensor([means, stds], dtype=torch.float32, device=device)
    background = _code_mask(codes, sets.background, sets.n_codes)
    if draw.rim and sets.bone:
        bone = _code_mask(codes, sets.bone, sets.n_codes)
        codes.masked_fill_(bone & _box_any(~bone, _mm_to_vox(draw.rim_mm, spacing)), rim_code)
    img = _lookup(table[1], codes).mul_(texture).add_(1.0).mul_(_lookup(table[0], codes))
    img = torch.where(background, around, img).clamp_(min=0.0)

    img = _gaussian_blur(img, [s / sp for s, sp in zip(draw.blur_sigma_mm, spacing)]).mul_(bias)
    img = _rician(img.div_(_robust_max(img)), draw.noise_std, gen)
    img = img.clamp_(1e-6, 1.0).log_().mul_(draw.gamma).exp_()  # x ** gamma, about twice as fast as pow on CPU
    return img.mul_(draw.contrast).add_(draw.brightness).clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------- entry points
def resolve_spacing(label: torch.Tensor, spacing: float | Sequence[float] | None) -> tuple[float, ...]:
    """Voxel size in mm per spatial axis: `spacing` if given, else the column norms of the MetaTensor's affine.

    A plain tensor has no geometry, and guessing 1 mm would make every mm-sized feature 3x too large on a 0.36 mm
    slice, so it is an error instead.
    """
    ndim = label.ndim - 1
    if spacing is not None:
        values = [float(spacing)] * ndim if np.isscalar(spacing) else [float(s) for s in spacing]
        if len(values) != ndim:
            raise ValueError(f"spacing {spacing!r} has {len(values)} values but the label has {ndim} spatial axes")
    elif isinstance(label, MetaTensor):
        affine = torch.as_tensor(label.affine, dtype=torch.float64)
        if affine.shape[-1] != ndim + 1:
            raise ValueError(
                f"the label's affine is {tuple(affine.shape)} but the label has {ndim} spatial axes; pass spacing"
            )
        values = torch.linalg.norm(affine[:ndim, :ndim], dim=0).tolist()
    else:
        raise ValueError("spacing is required for a plain tensor label (a MetaTensor's affine would give it)")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be positive and finite, got {values}")
    return tuple(values)


def _codes(label: torch.Tensor, preset_name: str) -> tuple[torch.Tensor, int]:
    """(1, *spatial) int32 codes (a new tensor) on the label's device and the lookup-table size, after cheap checks.

    The per-call check is a min/max (enough for presets whose codes are 0..k); the full, slower `check_label_values`
    only runs to word an error.
    """
    if not isinstance(label, torch.Tensor):
        label = torch.as_tensor(np.asarray(label))
    if label.ndim not in (3, 4) or label.shape[0] != 1:
        raise ValueError(
            f"label must be channel-first (1, H, W) or (1, D, H, W), got shape {tuple(label.shape)} "
            f"from {source_name(label)}"
        )
    preset = get_preset(preset_name)
    raw = label.as_tensor() if isinstance(label, MetaTensor) else label
    codes = raw.round().to(torch.int32) if raw.is_floating_point() else raw.to(torch.int32, copy=True)
    if raw.is_floating_point() and not torch.equal(codes.to(raw.dtype), raw):
        check_label_values(raw, preset, source_name(label))  # non-integer or NaN values: raises
    lo, hi = (int(v) for v in torch.aminmax(codes))
    top = max(preset.known_codes)
    gaps = len(preset.known_codes) != top + 1
    if lo < 0 or hi > top or (gaps and not set(torch.unique(codes).tolist()) <= preset.known_codes):
        check_label_values(raw, preset, source_name(label))  # raises, naming the file and the unknown codes
    return codes, top + 1


def _numpy_rng(generator: np.random.Generator | torch.Generator | int | None) -> np.random.Generator:
    """One numpy Generator for all scalar draws, whatever kind of generator or seed the caller has."""
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        return np.random.default_rng(seed)
    return np.random.default_rng(generator)


def synthesize_knee_mr(
    label: torch.Tensor,
    preset: str,
    spacing: float | Sequence[float] | None = None,
    generator: np.random.Generator | torch.Generator | int | None = None,
    **params: Any,
) -> torch.Tensor:
    """Synthesise one MR-like image from a raw tissue-code label map (the single implementation of the model).

    Args:
        label: (1, H, W) or (1, D, H, W) tissue codes of `preset`, any device; MetaTensor or plain tensor.
        preset: a `scripts.labels.PRESETS` key; its `tissues` names decide each code's role.
        spacing: mm per spatial axis (scalar = isotropic); None reads it from a MetaTensor's affine.
        generator: numpy Generator, torch Generator or int seed (None = fresh entropy).
        params: overrides of `SynthesisParams` ranges.

    Returns:
        float32 plain tensor, same shape and device as `label`, values in [0, 1].
    """
    p = SynthesisParams.create(**params)
    codes, n_codes = _codes(label, preset)
    sp = resolve_spacing(label, spacing)
    roles = _tissue_roles(get_preset(preset).tissues)
    draw = _draw(_numpy_rng(generator), p, roles, codes.ndim - 1)
    gen = torch.Generator(device=codes.device)
    gen.manual_seed(draw.seed)
    return _render(codes, sp, draw, _CodeSets.of(roles, n_codes), gen)


def _with_label_meta(image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Wrap `image` as a MetaTensor carrying the label's affine and meta, so spatial transforms and SaveImage work."""
    if not isinstance(label, MetaTensor):
        return image
    meta, ops = copy.deepcopy(label.meta), copy.deepcopy(label.applied_operations)  # never share the label's affine
    return MetaTensor(image, meta=meta, applied_operations=ops)


def case_rng(label: torch.Tensor, seed: int) -> np.random.Generator:
    """RNG fixed by `seed` and a crc32 of the label's file name (not path: same image on every machine)."""
    name = source_name(label)
    base = PurePath(name).name if name != "<in-memory array>" else ""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(base.encode("utf-8"))])


class _SynthesisKeys:
    """Argument handling shared by both transforms."""

    def _setup(self, label_key: Hashable, image_key: Hashable, preset: str, spacing: Any, params: dict) -> None:
        get_preset(preset)  # fail at construction on a bad preset name
        self.label_key, self.image_key, self.preset, self.spacing = label_key, image_key, preset, spacing
        self.params = SynthesisParams.create(**params).as_dict()


class RandSynthesizeKneeMRd(RandomizableTransform, MapTransform, _SynthesisKeys):
    """Training transform: a new random MR-like image from the raw tissue label map on every call.

    Args:
        label_key: key of the RAW tissue-code label map (relabel to training classes afterwards, not before).
        image_key: key to write the synthesised image to.
        preset: `scripts.labels` preset naming what each code is.
        spacing: mm per spatial axis; None reads the MetaTensor's affine.
        prob: probability of synthesising; when skipped, an image already under `image_key` (e.g. a real scan) is
            kept, which allows mixing real and synthetic training images.
        allow_missing_keys: return the data unchanged when `label_key` is absent.
        params: `SynthesisParams` ranges, e.g. ``noise_std=[0, 0.1]``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        label_key: Hashable = "tissue",
        image_key: Hashable = "image",
        preset: str = "oai-labels",
        spacing: float | Sequence[float] | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
        **params: Any,
    ) -> None:
        MapTransform.__init__(self, label_key, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self._setup(label_key, image_key, preset, spacing, params)
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, torch.Tensor], randomize: bool = True) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.label_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"key {self.label_key!r} (the tissue label map) is not in the data: {sorted(map(str, d))}")
        if randomize:
            self.randomize()
        if not self._do_transform:
            if self.image_key not in d:
                raise ValueError(
                    f"prob={self.prob} skipped synthesis but there is no image under {self.image_key!r} to keep"
                )
            return d
        label = d[self.label_key]
        image = synthesize_knee_mr(label, self.preset, self.spacing, np.random.default_rng(self._seed), **self.params)
        d[self.image_key] = _with_label_meta(image, label)
        return d


class SynthesizeKneeMRd(MapTransform, _SynthesisKeys):
    """Validation/test transform: one fixed MR-like image per case, from `seed` + crc32 of the label's file name.

    Not Randomizable on purpose: MONAI's CacheDataset caches every transform up to the first random one, so the
    (seconds-long) 3D synthesis runs once per case, and the result does not depend on worker or case order.

    Args: as `RandSynthesizeKneeMRd`, with `seed` instead of `prob`.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        label_key: Hashable = "tissue",
        image_key: Hashable = "image",
        preset: str = "oai-labels",
        spacing: float | Sequence[float] | None = None,
        seed: int = 0,
        allow_missing_keys: bool = False,
        **params: Any,
    ) -> None:
        MapTransform.__init__(self, label_key, allow_missing_keys)
        self._setup(label_key, image_key, preset, spacing, params)
        self.seed = int(seed)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            image = synthesize_knee_mr(label, self.preset, self.spacing, case_rng(label, self.seed), **self.params)
            d[self.image_key] = _with_label_meta(image, label)
        return d
