"""One knee phantom from a seed: draw the anatomy, paint it, acquire it; the public single-case API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scripts.phantom.acquisition import acquire
from scripts.phantom.anatomy import sample_knee
from scripts.phantom.conventions import DEFAULT_SHAPE, FIELD_OF_VIEW_MM, LABEL_OF_TISSUE
from scripts.phantom.fields import Grid, Textures
from scripts.phantom.painting import Canvas, paint_body, paint_joint, paint_soft_tissue


@dataclass(frozen=True)
class KneePhantom:
    """One generated knee.

    Args:
        image: DESS-like intensities, int16, about 0..1000, shape (D, H, W) = (left-right, posterior-anterior,
            inferior-superior).
        tissues: full tissue map (codes in `TISSUES`), uint8; codes 0-4 are the OAI-ZIB labels.
        spacing: voxel size in mm along (D, H, W).
        origin: RAS position in mm of voxel (0, 0, 0); the field of view is centred on (0, 0, 0).
    """

    image: np.ndarray
    tissues: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def label(self) -> np.ndarray:
        """OAI-ZIB label map (uint8): 1 femoral bone, 2 femoral cartilage, 3 tibial bone, 4 tibial cartilage."""
        return LABEL_OF_TISSUE[self.tissues]

    @property
    def affine(self) -> np.ndarray:
        """RAS voxel-to-world matrix: diag(spacing) plus the origin (nibabel's aff2axcodes gives R, A, S)."""
        aff = np.diag([*self.spacing, 1.0])
        aff[:3, 3] = self.origin
        return aff


def default_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Spacing that keeps OAI's physical field of view (112 x 140 x 140 mm) at any `shape`."""
    return tuple(float(f / n) for f, n in zip(FIELD_OF_VIEW_MM, as_shape(shape)))  # type: ignore[return-value]


def case_seed(seed: int, index: int) -> int:
    """Seed of case `index` of a dataset generated with `seed`: the same whatever the number of cases."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def simulate_knee(
    shape: Sequence[int] = DEFAULT_SHAPE,
    seed: int = 0,
    spacing: Sequence[float] | None = None,
    defects: bool = True,
) -> KneePhantom:
    """Generate one knee with its full tissue map (see the module docstring for the anatomy and image model).

    Args:
        shape: (D, H, W) voxels: left-right, posterior-anterior, inferior-superior.
        seed: the case's seed; the anatomy depends only on it, not on `shape`.
        spacing: voxel size in mm; default keeps OAI's field of view (0.7 x 0.3646 x 0.3646 mm at 160 x 384 x 384).
        defects: add focal cartilage defects and bone-marrow lesions (osteoarthritis).
    """
    shape = as_shape(shape)
    spacing = default_spacing(shape) if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive numbers in mm, got {spacing}")
    anatomy_seq, texture_seq, noise_seq = np.random.SeedSequence(int(seed)).spawn(3)
    knee = sample_knee(np.random.default_rng(anatomy_seq), defects)
    grid = Grid(shape, spacing)
    tex = Textures(np.random.default_rng(texture_seq), grid)
    canvas = Canvas(grid)
    paint_body(canvas, knee, tex)
    paint_soft_tissue(canvas, knee, tex)
    paint_joint(canvas, knee, tex)
    image = acquire(canvas, knee, np.random.default_rng(noise_seq))
    return KneePhantom(image, canvas.tissues, grid.spacing, grid.origin)  # type: ignore[arg-type]


def generate_knee_phantom(
    shape: Sequence[int] = DEFAULT_SHAPE,
    seed: int = 0,
    spacing: Sequence[float] | None = None,
    defects: bool = True,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Return (image int16, OAI-ZIB label uint8, spacing mm) of one knee; arguments as in `simulate_knee`."""
    knee = simulate_knee(shape, seed, spacing, defects)
    return knee.image, knee.label, knee.spacing


def as_shape(shape: Sequence[int] | str | int) -> tuple[int, int, int]:
    """Accept (D, H, W), "D,H,W" or "DxHxW" (the CLI) and check it is three sizes of at least 8 voxels."""
    if isinstance(shape, str):
        shape = [v for v in shape.replace("x", ",").strip("()[] ").split(",") if v.strip()]
    values = tuple(int(v) for v in (shape if isinstance(shape, Sequence) else [shape]))
    if len(values) != 3 or min(values) < 8:
        raise ValueError(f"shape must be three sizes (D, H, W) of at least 8 voxels, got {shape!r}")
    return values  # type: ignore[return-value]
