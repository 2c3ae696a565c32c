"""The tensor part of the model: label codes + drawn parameters -> MR-like image (surroundings on a ~1 mm grid,
labelled structures at full resolution, then blur, bias, Rician noise, gamma and contrast)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from scripts.synthesis.draws import Draw, Roles
from scripts.synthesis.fields import (
    box_any,
    coarse_grid,
    code_mask,
    gaussian_blur,
    lookup,
    mm_to_vox,
    resize,
    robust_max,
    smooth_noise,
    within_mm,
)

_ROLE_IDS = {"background": 0, "bone": 1, "cartilage": 2, "lesion": 3, "other": 4}
_FIELD_GRID_MM = 1.0  # smooth fields and the surroundings are composed about this coarse, then upsampled


@dataclass(frozen=True)
class CodeSets:
    """Codes per role, in the form the renderer needs them."""

    n_codes: int
    background: list[int]
    cartilage: list[int]
    bone: list[int]
    femoral: list[int]
    tibial: list[int]

    @classmethod
    def of(cls, roles: Roles, n_codes: int) -> CodeSets:
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
    return gaussian_blur(mask.to(torch.float32), [0.7] * (mask.ndim - 1))


def _surroundings(
    small: torch.Tensor,
    spacing: Sequence[float],
    draw: Draw,
    sets: CodeSets,
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
        near = within_mm(code_mask(small, sets.cartilage, sets.n_codes), draw.fluid_mm, spacing)
        blend(_soften(near) * _soft_step(patch, 2.0 * cell / draw.fluid_patch_mm), draw.fluid_mean, draw.fluid_std)
    if draw.meniscus and sets.femoral and sets.tibial:
        pair = torch.cat([code_mask(small, c, sets.n_codes) for c in (sets.femoral, sets.tibial)])
        near = within_mm(pair, draw.meniscus_mm, spacing)
        blend(_soften(near[:1] & near[1:]), draw.meniscus_mean, draw.meniscus_std)
    return around


def _air_weight(
    small: torch.Tensor, spacing: Sequence[float], draw: Draw, gen: torch.Generator, sets: CodeSets
) -> torch.Tensor:
    """Air far from every labelled structure: low values of a heavily blurred 'anatomy nearby' field plus noise."""
    grid = small.shape[1:]
    coarse, coarse_spacing = coarse_grid(grid, spacing, 4.0)  # smooth, so compute it coarser still
    anatomy = resize((~code_mask(small, sets.background, sets.n_codes)).to(torch.float32), coarse, "area")
    near = gaussian_blur(anatomy, [draw.air_sigma_mm / s for s in coarse_spacing])
    near = near / near.amax().clamp_min(1e-6)
    wobble = smooth_noise(coarse, coarse_spacing, 20.0, gen, small.device)
    level = resize(near + 0.05 * wobble, grid)
    return _soft_step(draw.air_level - level, 0.25 * min(spacing) / draw.air_sigma_mm)


def _rician(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Magnitude of a complex signal with Gaussian noise on both channels (Rician; Rayleigh where x ~ 0)."""
    if sigma <= 0:
        return x
    noise = torch.randn((2, *x.shape), generator=gen, device=x.device, dtype=x.dtype).mul_(sigma)
    real, imag = noise[0].add_(x), noise[1]
    return real.mul_(real).addcmul_(imag, imag).sqrt_()


def _coarse_fields(
    codes: torch.Tensor, spacing: Sequence[float], draw: Draw, sets: CodeSets, gen: torch.Generator
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
    full = resize(torch.cat([texture, bias, around]), shape)
    return full[0:1], full[1:2], full[2:3]


def render_image(
    codes: torch.Tensor, spacing: Sequence[float], draw: Draw, sets: CodeSets, gen: torch.Generator
) -> torch.Tensor:
    """Tensor part of the model: (1, *spatial) int32 codes (modified in place) -> (1, *spatial) image in [0, 1]."""
    texture, bias, around = _coarse_fields(codes, spacing, draw, sets, gen)
    device = codes.device
    rim_code = sets.n_codes
    means = [draw.code_mean.get(c, 0.0) for c in range(rim_code)] + [draw.rim_mean]
    stds = [draw.code_std.get(c, 0.0) for c in range(rim_code)] + [draw.rim_std]
    table = torch.tensor([means, stds], dtype=torch.float32, device=device)
    background = code_mask(codes, sets.background, sets.n_codes)
    if draw.rim and sets.bone:
        bone = code_mask(codes, sets.bone, sets.n_codes)
        codes.masked_fill_(bone & box_any(~bone, mm_to_vox(draw.rim_mm, spacing)), rim_code)
    img = lookup(table[1], codes).mul_(texture).add_(1.0).mul_(lookup(table[0], codes))
    img = torch.where(background, around, img).clamp_(min=0.0)

    img = gaussian_blur(img, [s / sp for s, sp in zip(draw.blur_sigma_mm, spacing)]).mul_(bias)
    img = _rician(img.div_(robust_max(img)), draw.noise_std, gen)
    img = img.clamp_(1e-6, 1.0).log_().mul_(draw.gamma).exp_()  # x ** gamma, about twice as fast as pow on CPU
    return img.mul_(draw.contrast).add_(draw.brightness).clamp_(0.0, 1.0)
