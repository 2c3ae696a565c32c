"""Signed-distance primitives (mm; broadcasting arrays in, float32 out) and the smooth weights built on them.

Why SDFs: cartilage thickness, joint space and partial volume are then in physical units at any grid resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def smoothstep(t: np.ndarray) -> np.ndarray:
    """C1 ramp 0 -> 1 on [0, 1]: soft coverage and taper weights without visible steps."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (union) of two SDFs; `k` (mm) is the fillet size, e.g. a metaphyseal flare."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum (intersection), e.g. the rounded rim of the tibial plateau."""
    return -smin(-a, -b, k)


def ellipsoid_sdf(dx, dy, dz, rx: float, ry: float, rz) -> np.ndarray:
    """First-order distance to an ellipsoid (exact on the surface, good within a few mm, which is all we need)."""
    ux, uy, uz = dx / rx, dy / ry, dz / rz
    k0 = np.sqrt(ux * ux + uy * uy + uz * uz)
    k1 = np.sqrt((ux / rx) ** 2 + (uy / ry) ** 2 + (uz / rz) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def blob_sdf(dx, dy, dz, rx: float, ry: float, rz: float) -> np.ndarray:
    """Distance to a superellipsoid that is elliptic in the sagittal (y, z) plane and box-like (exponent 4) across x.

    Condyles and the trochlea look like this: round in sagittal slices, wide and flat in coronal ones, so the cartilage
    on them keeps its thickness up to the margins instead of thinning like on a sphere.
    """
    u2 = (dx / rx) ** 2
    q = (dy / ry) ** 2 + (dz / rz) ** 2
    r4 = u2 * u2 + q * q
    r = np.sqrt(np.sqrt(r4))
    gx = u2 * np.abs(dx) / (rx * rx)
    gyz2 = q * q * ((dy / (ry * ry)) ** 2 + (dz / (rz * rz)) ** 2)
    grad = np.sqrt(gx * gx + gyz2) / np.maximum(r4, 1e-12) * r
    return (r - 1.0) / np.maximum(grad, 1e-6)


def superellipse_sdf(dx, dy, rx, ry) -> np.ndarray:
    """Distance to a 2D superellipse (exponent 4) in the axial plane: the rounded-box outline of the tibial head."""
    u, v = dx / rx, dy / ry
    u2, v2 = u * u, v * v
    r4 = u2 * u2 + v2 * v2
    r = np.sqrt(np.sqrt(r4))
    grad = np.sqrt((u2 * u / rx) ** 2 + (v2 * v / ry) ** 2) / np.maximum(r4, 1e-12) * r
    return (r - 1.0) / np.maximum(grad, 1e-6)


def ellipse_sdf(dx, dy, rx, ry) -> np.ndarray:
    """First-order distance to an ellipse (cross-sections of shafts and vessels)."""
    ux, uy = dx / rx, dy / ry
    k0 = np.sqrt(ux * ux + uy * uy)
    k1 = np.sqrt((ux / rx) ** 2 + (uy / ry) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def capsule_sdf(X, Y, Z, p0: Sequence[float], p1: Sequence[float], radius: float) -> np.ndarray:
    """Exact distance to a segment swept by a sphere: ligaments, tendons and the fibular shaft."""
    a = np.asarray(p0, dtype=np.float64)
    ab = np.asarray(p1, dtype=np.float64) - a
    inv = 1.0 / float(ab @ ab)
    px, py, pz = X - float(a[0]), Y - float(a[1]), Z - float(a[2])
    h = np.clip((px * float(ab[0]) + py * float(ab[1]) + pz * float(ab[2])) * inv, 0.0, 1.0)
    return np.sqrt((px - h * float(ab[0])) ** 2 + (py - h * float(ab[1])) ** 2 + (pz - h * float(ab[2])) ** 2) - radius


def band_sdf(X, Y, Z, p0: Sequence[float], p1: Sequence[float], half_thickness: float, half_width: float) -> np.ndarray:
    """A flat band (tendon): a 2D capsule in the sagittal plane between p0 and p1, limited to +-half_width across x."""
    ay, az, by, bz = float(p0[1]), float(p0[2]), float(p1[1]) - float(p0[1]), float(p1[2]) - float(p0[2])
    py, pz = Y - ay, Z - az
    h = np.clip((py * by + pz * bz) / (by * by + bz * bz), 0.0, 1.0)
    plane = np.sqrt((py - h * by) ** 2 + (pz - h * bz) ** 2) - half_thickness
    return np.maximum(plane, np.abs(X - 0.5 * (float(p0[0]) + float(p1[0]))) - half_width)


def window(angle: np.ndarray, lo: float, hi: float, ramp: float) -> np.ndarray:
    """Weight 1 inside the angular interval [lo, hi] (radians), falling to 0 over `ramp` outside: articular coverage."""
    return smoothstep((angle - lo) / ramp + 1.0) * smoothstep((hi - angle) / ramp + 1.0)


def taper(u: np.ndarray, start: float, end: float) -> np.ndarray:
    """Weight 1 for u <= start, 0 for u >= end: cartilage thins to nothing at its margins."""
    return smoothstep((end - u) / (end - start))
