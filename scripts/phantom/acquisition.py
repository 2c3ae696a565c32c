"""Acquisition: the clean tissue image becomes scanner-like int16 (gain, point-spread function, bias field, noise).

Why last and separate: the noise is drawn from its own seed after painting, so the anatomy never depends on it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from scripts.phantom.anatomy import Knee
from scripts.phantom.conventions import DEFAULT_SPACING, FIELD_OF_VIEW_MM
from scripts.phantom.fields import Grid
from scripts.phantom.painting import Canvas


def _bias_field(grid: Grid, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative field (coil sensitivity): exp of low-order terms in mm, built from 1D/2D pieces."""
    x, y, z = (ax / (0.5 * f) for ax, f in zip(grid.axes, FIELD_OF_VIEW_MM))  # about -1..1 over OAI's field of view
    c = [float(v) for v in rng.uniform(-1.0, 1.0, size=9)]
    log_b = (c[0] * x + c[1] * x * x + c[7] * np.cos(2.0 * x + c[8]))[:, None, None]
    log_b = (
        log_b + ((c[2] * y + c[3] * y * y)[:, None] + (c[4] * z + c[5] * z * z)[None, :] + c[6] * np.outer(y, z))[None]
    )
    return np.exp(np.float32(strength / 3.0) * log_b)


def acquire(canvas: Canvas, knee: Knee, rng: np.random.Generator) -> np.ndarray:
    """Clean tissue image -> scanner-like int16: gain, anisotropic PSF (mm), bias field, Rician noise."""
    dess, grid = knee.dess, canvas.grid
    image = canvas.image
    image *= np.float32(dess["gain"])
    sigma = [dess["blur"] * d / s for d, s in zip(DEFAULT_SPACING, grid.spacing)]
    sigma = [v if v >= 0.15 else 0.0 for v in sigma]
    if any(sigma):
        image = ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=3.0)
    image *= _bias_field(grid, rng, dess["bias"])
    noise_sd = np.float32(dess["gain"] * dess["cartilage"] / dess["snr"])
    real = image
    real += noise_sd * rng.standard_normal(image.shape, dtype=np.float32)
    imag = rng.standard_normal(image.shape, dtype=np.float32)
    imag *= noise_sd
    np.square(real, out=real)
    np.square(imag, out=imag)
    real += imag
    np.sqrt(real, out=real)
    return np.clip(np.rint(real), 0, np.iinfo(np.int16).max).astype(np.int16)
