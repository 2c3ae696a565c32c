"""Procedural knee MR phantoms: sagittal DESS-like volumes with OAI-ZIB label maps, deterministic by seed.

Why: the bundle must train, evaluate and be tested without any licensed data. The phantoms follow OAI-ZIB's conventions
(label codes 0 background, 1 femoral bone, 2 femoral cartilage, 3 tibial bone, 4 tibial cartilage; RAS with axis 0
left-right, so `vol[i]` is a sagittal slice; 160 x 384 x 384 voxels of 0.7 x 0.3646 x 0.3646 mm by default) so that
every config, transform and metric written for the real data runs unchanged on them.

Anatomy model. Every structure is an approximate signed distance field (SDF, mm, negative inside) built from a few
analytic primitives, so that cartilage thickness, gaps and partial volume are in physical units at any resolution:

- Femur (in its own frame, rotated by a random flexion angle about the condyle centre): medial and lateral condyles are
  superellipsoids, elliptic in the sagittal plane (flat distally, round posteriorly) and box-like across, separated by
  the intercondylar notch; a wider trochlea with a patellar groove joins them anteriorly; a shaft rises to the top of
  the field of view. The parts are merged with a smooth minimum, which gives the metaphyseal flare.
- Tibia: a plateau height field (medial compartment concave, lateral convex, posterior slope, intercondylar spines)
  intersected with a superelliptic outline that narrows to the shaft, plus the tuberosity. Each compartment is placed
  from the femoral condyle above it so that cartilage, a thin joint space, and cartilage stack up without overlap.
- Cartilage: a shell `0 < d_bone < t` over the articular part of each bone, whose thickness t (about 1.5-3.5 mm) varies
  smoothly, tapers to zero at the margins and can carry focal defects (osteoarthritis). Femoral cartilage covers the
  condyles (distal and posterior) and the trochlea; tibial cartilage the two plateaus; so only the slices through the
  condyles and the trochlea hold cartilage, with the notch between them.
- Unlabelled structures that make the task hard: patella with its own (thick) cartilage, menisci (dark wedges at the
  joint periphery), cruciate and collateral ligaments, patellar and quadriceps tendons, fibula head, joint fluid that
  lines the cartilage, suprapatellar bursa, Hoffa's and popliteal fat, popliteal vessels, muscle, subcutaneous fat,
  skin, bone-marrow lesions and physeal scars.

Image model (OAI DESS, water excitation): tissues are painted in anatomical order with partial-volume alpha from the
SDFs; fluid brightest, cartilage bright with a depth gradient, marrow darker with trabecular texture, cortex, menisci,
ligaments and tendons dark, muscle intermediate-dark with fibre streaks, fat suppressed; the tissue levels are jittered
and raised to a random gamma per case. Then a random gain, an anisotropic Gaussian point-spread function in mm, a smooth
multiplicative bias field, and Rician noise; stored as int16 (about 0..1000).

Determinism: anatomy and textures are drawn from `seed` before anything that depends on the grid, so one seed gives the
same physical knee at any shape; dataset case i uses a seed derived from (seed, i), independent of the number of cases.

Command line (the docstring of `main` is the help):
    python -m scripts.phantom OUTPUT_DIR --num_cases 12 --shape 40,96,96 --seed 0 --num_test 3 --format nii.gz
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import ndimage

from scripts.cli import as_bool
from scripts.io_utils import atomic_path, atomic_write_text

__all__ = [
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "FIELD_OF_VIEW_MM",
    "TISSUES",
    "KneePhantom",
    "case_seed",
    "default_spacing",
    "simulate_knee",
    "generate_knee_phantom",
    "write_phantom_dataset",
    "main",
]

logger = logging.getLogger(__name__)

DEFAULT_SHAPE: tuple[int, int, int] = (160, 384, 384)
DEFAULT_SPACING: tuple[float, float, float] = (0.7, 0.3646, 0.3646)
FIELD_OF_VIEW_MM: tuple[float, ...] = tuple(n * s for n, s in zip(DEFAULT_SHAPE, DEFAULT_SPACING))

# Tissue codes of the phantom's full tissue map; codes 0-4 are the OAI-ZIB label codes, the rest are unlabelled (0).
TISSUES: dict[int, str] = {
    0: "background",
    1: "femoral bone",
    2: "femoral cartilage",
    3: "tibial bone",
    4: "tibial cartilage",
    5: "patellar bone",
    6: "patellar cartilage",
    7: "fibula",
    8: "meniscus",
    9: "synovial fluid",
    10: "ligament or tendon",
    11: "muscle",
    12: "fat",
    13: "skin",
    14: "vessel",
}
_T = {name: code for code, name in TISSUES.items()}
_LABEL_OF_TISSUE = np.array([c if c <= 4 else 0 for c in range(256)], dtype=np.uint8)
_FORMATS = {"nii.gz": (".nii.gz",), "mhd": (".mhd", ".raw")}


# ----------------------------------------------------------------------------------------------------------------------
# signed-distance primitives (mm; broadcasting arrays in, float32 out)
# ----------------------------------------------------------------------------------------------------------------------


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """C1 ramp 0 -> 1 on [0, 1]: soft coverage and taper weights without visible steps."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (union) of two SDFs; `k` (mm) is the fillet size, e.g. a metaphyseal flare."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum (intersection), e.g. the rounded rim of the tibial plateau."""
    return -_smin(-a, -b, k)


def _ellipsoid_sdf(dx, dy, dz, rx: float, ry: float, rz) -> np.ndarray:
    """First-order distance to an ellipsoid (exact on the surface, good within a few mm, which is all we need)."""
    ux, uy, uz = dx / rx, dy / ry, dz / rz
    k0 = np.sqrt(ux * ux + uy * uy + uz * uz)
    k1 = np.sqrt((ux / rx) ** 2 + (uy / ry) ** 2 + (uz / rz) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _blob_sdf(dx, dy, dz, rx: float, ry: float, rz: float) -> np.ndarray:
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


def _superellipse_sdf(dx, dy, rx, ry) -> np.ndarray:
    """Distance to a 2D superellipse (exponent 4) in the axial plane: the rounded-box outline of the tibial head."""
    u, v = dx / rx, dy / ry
    u2, v2 = u * u, v * v
    r4 = u2 * u2 + v2 * v2
    r = np.sqrt(np.sqrt(r4))
    grad = np.sqrt((u2 * u / rx) ** 2 + (v2 * v / ry) ** 2) / np.maximum(r4, 1e-12) * r
    return (r - 1.0) / np.maximum(grad, 1e-6)


def _ellipse_sdf(dx, dy, rx, ry) -> np.ndarray:
    """First-order distance to an ellipse (cross-sections of shafts and vessels)."""
    ux, uy = dx / rx, dy / ry
    k0 = np.sqrt(ux * ux + uy * uy)
    k1 = np.sqrt((ux / rx) ** 2 + (uy / ry) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _capsule_sdf(X, Y, Z, p0: Sequence[float], p1: Sequence[float], radius: float) -> np.ndarray:
    """Exact distance to a segment swept by a sphere: ligaments, tendons and the fibular shaft."""
    a = np.asarray(p0, dtype=np.float64)
    ab = np.asarray(p1, dtype=np.float64) - a
    inv = 1.0 / float(ab @ ab)
    px, py, pz = X - float(a[0]), Y - float(a[1]), Z - float(a[2])
    h = np.clip((px * float(ab[0]) + py * float(ab[1]) + pz * float(ab[2])) * inv, 0.0, 1.0)
    return np.sqrt((px - h * float(ab[0])) ** 2 + (py - h * float(ab[1])) ** 2 + (pz - h * float(ab[2])) ** 2) - radius


def _band_sdf(
    X, Y, Z, p0: Sequence[float], p1: Sequence[float], half_thickness: float, half_width: float
) -> np.ndarray:
    """A flat band (tendon): a 2D capsule in the sagittal plane between p0 and p1, limited to +-half_width across x."""
    ay, az, by, bz = float(p0[1]), float(p0[2]), float(p1[1]) - float(p0[1]), float(p1[2]) - float(p0[2])
    py, pz = Y - ay, Z - az
    h = np.clip((py * by + pz * bz) / (by * by + bz * bz), 0.0, 1.0)
    plane = np.sqrt((py - h * by) ** 2 + (pz - h * bz) ** 2) - half_thickness
    return np.maximum(plane, np.abs(X - 0.5 * (float(p0[0]) + float(p1[0]))) - half_width)


def _window(angle: np.ndarray, lo: float, hi: float, ramp: float) -> np.ndarray:
    """Weight 1 inside the angular interval [lo, hi] (radians), falling to 0 over `ramp` outside: articular coverage."""
    return _smoothstep((angle - lo) / ramp + 1.0) * _smoothstep((hi - angle) / ramp + 1.0)


def _taper(u: np.ndarray, start: float, end: float) -> np.ndarray:
    """Weight 1 for u <= start, 0 for u >= end: cartilage thins to nothing at its margins."""
    return _smoothstep((end - u) / (end - start))


# ----------------------------------------------------------------------------------------------------------------------
# anatomy parameters (drawn once per case, all in mm, independent of the grid)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Condyle:
    """One femoral condyle; centre (y, z) is the femur-frame pivot shared by both condyles."""

    x: float
    rx: float
    ry: float
    rz: float
    thickness: float


@dataclass(frozen=True)
class _Plateau:
    """One tibial compartment: centre, half-axes of the articular area, top height, curvature and meniscus."""

    x: float
    y: float
    a: float
    b: float
    top: float
    sagittal_curvature: float  # 1/R, positive: concave (medial dish), negative: convex (lateral)
    coronal_curvature: float
    thickness: float
    meniscus_height: float
    meniscus_inner: float
    posterior_horn: float


@dataclass(frozen=True)
class _Defect:
    """Focal cartilage thinning: a Gaussian dent of relative `depth` (1 = full thickness) around `centre`."""

    centre: tuple[float, float, float]
    sigma: float
    depth: float
    femoral: bool  # femur-frame coordinates if True, scanner coordinates otherwise


@dataclass(frozen=True)
class _Knee:
    """All random choices of one phantom (mm, radians): geometry, cartilage thickness, lesions and DESS contrast."""

    size: float
    medial: float  # +1 or -1: the x direction of the medial side (right knee: -1, towards the patient's left)
    x0: float
    pivot: tuple[float, float]  # (y, z) of the condyle centres = femur-frame rotation centre
    flexion: float  # radians
    condyles: tuple[_Condyle, _Condyle]  # medial, lateral
    trochlea: tuple[float, float, float, float, float, float]  # x, y, z, rx, ry, rz
    groove: tuple[float, float, float]  # x, depth, width
    trochlea_thickness: float
    shaft: tuple[float, float, float, float]  # x, y, rx, ry
    cortex: tuple[float, float]  # subchondral and diaphyseal cortical thickness
    femoral_physis: float
    plateaus: tuple[_Plateau, _Plateau]  # medial, lateral
    slope: float
    spines: tuple[float, float, float]  # x, y, height
    tibia_outline: tuple[float, float, float, float]  # x, y, rx, ry of the head
    tibia_shaft: tuple[float, float, float, float]
    tibial_physis: float
    tuberosity: tuple[float, float, float]
    fibula: tuple[float, float, float, float]  # x, y, z, radius of the head
    patella: tuple[float, float, float, float, float, float, float]  # x, y, z, rx, ry, rz_up, rz_down
    patella_thickness: float
    fluid: float  # thickness of the fluid film lining the articular surfaces (effusion grade)
    bursa: float
    baker_cyst: tuple[float, float, float, float] | None
    body: tuple[float, float, float, float]  # x, y, rx, ry
    fat: float
    skin: float
    defects: tuple[_Defect, ...]
    lesions: tuple[tuple[float, float, float, float, bool], ...]  # x, y, z, radius, femoral: bone-marrow lesions
    waves: tuple[tuple[float, float, float, float], ...]  # kx, ky, kz, phase: smooth thickness modulation
    dess: dict[str, float]


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A Python float (NumPy 2 keeps float32 arrays float32 only when scalars are Python floats)."""
    return float(rng.uniform(lo, hi))


def _lowest_point(ry: float, rz: float, flexion: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower outline (y, z offsets in scanner axes) of a sagittal condyle ellipse rotated by `flexion`."""
    u = np.linspace(-math.pi, math.pi, 721)
    fy, fz = ry * np.cos(u), rz * np.sin(u)
    c, s = math.cos(flexion), math.sin(flexion)
    y, z = c * fy - s * fz, s * fy + c * fz
    lower = z < 0
    return y[lower], z[lower]


def _place_plateau(
    rng: np.random.Generator, knee_size: float, condyle: _Condyle, pivot, flexion, slope, medial: bool, gap: float
) -> _Plateau:
    """Put a tibial compartment under its condyle: the plateau top leaves exactly cartilage + gap + cartilage free."""
    s = knee_size
    ys, zs = _lowest_point(condyle.ry, condyle.rz, flexion)
    y = pivot[0] + float(ys[np.argmin(zs)]) + _uniform(rng, -3.0, 3.0)
    b = s * (_uniform(rng, 22.0, 26.0) if medial else _uniform(rng, 19.0, 23.0))
    curv = 1.0 / (s * _uniform(rng, 60.0, 90.0)) if medial else -1.0 / (s * _uniform(rng, 50.0, 80.0))
    thickness = _uniform(rng, 2.0, 2.8) if medial else _uniform(rng, 2.2, 3.0)
    dy = pivot[0] + ys - y
    inside = np.abs(dy) < b
    profile = slope * dy + 0.5 * curv * dy * dy
    top = float(np.min((pivot[1] + zs - profile)[inside])) - condyle.thickness - gap - thickness
    return _Plateau(
        x=condyle.x + _uniform(rng, -1.5, 1.5),
        y=y,
        a=condyle.rx * _uniform(rng, 1.1, 1.25),
        b=b,
        top=top,
        sagittal_curvature=curv,
        coronal_curvature=1.0 / (s * _uniform(rng, 40.0, 70.0)),
        thickness=thickness,
        meniscus_height=s * _uniform(rng, 5.0, 8.0),
        meniscus_inner=_uniform(rng, 0.55, 0.68),
        posterior_horn=_uniform(rng, 0.08, 0.18) if medial else _uniform(rng, 0.0, 0.08),
    )


def _sample_defects(rng: np.random.Generator, knee: dict) -> tuple[_Defect, ...]:
    """0-3 focal defects on the condyles, trochlea or plateaus."""
    (yc, zc), out = knee["pivot"], []
    for _ in range(int(rng.integers(0, 4))):
        site = int(rng.integers(0, 4))
        sigma, depth = _uniform(rng, 2.0, 5.0), _uniform(rng, 0.4, 1.0)
        if site < 2:  # a condyle, anywhere from distal to posterior
            cd = knee["condyles"][site]
            psi = _uniform(rng, -0.6, 1.6)
            centre = (cd.x + _uniform(rng, -0.5, 0.5) * cd.rx, yc - cd.ry * math.sin(psi), zc - cd.rz * math.cos(psi))
            out.append(_Defect(centre, sigma, depth, True))
        elif site == 2:  # trochlea, anterior face
            x, y, z, rx, ry, rz = knee["trochlea"]
            centre = (x + _uniform(rng, -0.5, 0.5) * rx, y + ry * 0.9, z + _uniform(rng, -0.3, 0.3) * rz)
            out.append(_Defect(centre, sigma, depth, True))
        else:  # a tibial plateau
            pl = knee["plateaus"][int(rng.integers(0, 2))]
            centre = (pl.x + _uniform(rng, -0.5, 0.5) * pl.a, pl.y + _uniform(rng, -0.5, 0.5) * pl.b, pl.top)
            out.append(_Defect(centre, sigma, depth, False))
    return tuple(out)


def _sample_lesions(rng: np.random.Generator, defects: tuple[_Defect, ...]) -> tuple:
    """Bone-marrow lesions (bright, oedema-like) under some defects: they overlap cartilage in intensity."""
    out = []
    for d in defects:
        if rng.random() < 0.5:
            x, y, z = d.centre
            out.append((x, y, z - 5.0 if not d.femoral else z, _uniform(rng, 4.0, 9.0), d.femoral))
    return tuple(out)


def _sample_dess(rng: np.random.Generator) -> dict[str, float]:
    """Mean DESS (water-excitation) signal per tissue relative to fluid = 1, jittered, then a random gamma (contrast).

    Ranges overlap on purpose: superficial cartilage approaches fluid, lesions and vessels reach cartilage, marrow and
    muscle share a grey level, so no tissue is identified by intensity alone.
    """

    def j(lo: float, hi: float) -> float:
        return _uniform(rng, lo, hi)

    levels = {
        "fluid": j(0.92, 1.05),
        "cartilage": j(0.5, 0.72),
        "patellar_cartilage": j(0.5, 0.75),
        "marrow": j(0.1, 0.2),
        "cortex": j(0.02, 0.05),
        "lesion": j(0.45, 0.75),
        "meniscus": j(0.03, 0.09),
        "ligament": j(0.04, 0.1),
        "acl": j(0.1, 0.22),
        "muscle": j(0.17, 0.28),
        "fat": j(0.05, 0.11),
        "skin": j(0.18, 0.3),
        "vessel": j(0.25, 0.5),
    }
    gamma = j(0.85, 1.2)
    acquisition = {
        "gain": j(550.0, 950.0),
        "snr": j(10.0, 22.0),  # cartilage signal / noise sd
        "blur": j(0.35, 0.6),  # Gaussian PSF sigma as a fraction of the OAI voxel size, per axis
        "bias": j(0.1, 0.3),
    }
    return {**{k: v**gamma for k, v in levels.items()}, **acquisition}


def _trochlea_front(trochlea: tuple, groove: tuple, x: float, z: float) -> float:
    """Femur-frame y of the trochlea's anterior bone surface at (x, z): where the patella must sit in front of."""
    tx, ty, tz, rx, ry, rz = trochlea
    q = math.sqrt(max(1.0 - ((x - tx) / rx) ** 4, 0.0))  # sagittal radius^2 of the superellipsoid at this x
    dz2 = ((z - tz) / rz) ** 2
    return ty + ry * math.sqrt(max(q - dz2, 0.0)) - groove[1] * math.exp(-(((x - groove[0]) / groove[2]) ** 2))


def _patella_clearance(trochlea: tuple, groove: tuple, x_p: float, z_p: float, rx_p: float, ry_p: float) -> float:
    """Smallest patella centre y (femur frame) whose posterior surface, ridge included, clears the trochlea."""
    need = 0.0 - math.inf
    for x in np.linspace(x_p - 0.9 * rx_p, x_p + 0.9 * rx_p, 37):
        x = float(x)
        ridge = 0.8 * groove[1] * math.exp(-(((x - groove[0]) / groove[2]) ** 2))
        back = ry_p * math.sqrt(math.sqrt(max(1.0 - ((x - x_p) / rx_p) ** 4, 0.0)))
        need = max(need, _trochlea_front(trochlea, groove, x, z_p) + ridge + back)
    return need


def _sample_femur(rng: np.random.Generator, s: float, medial: float, x0: float) -> dict:
    """Condyles, trochlea with its groove, shaft; the condyle bottom lands where OAI-ZIB knees have it."""
    flexion = math.radians(_uniform(rng, -3.0, 12.0))
    notch = s * _uniform(rng, 8.0, 11.0)
    rx_m, rx_l = s * _uniform(rng, 12.5, 15.5), s * _uniform(rng, 12.0, 15.0)
    ry_m, ry_l = s * _uniform(rng, 27.0, 31.0), s * _uniform(rng, 25.0, 29.0)
    rz_m, rz_l = s * _uniform(rng, 22.0, 25.0), s * _uniform(rng, 21.0, 24.0)
    yc = _uniform(rng, -9.0, 0.0)
    zc = _uniform(rng, -20.0, -6.0) + rz_m
    condyles = (
        _Condyle(x0 + medial * (notch + rx_m), rx_m, ry_m, rz_m, _uniform(rng, 2.1, 2.9)),
        _Condyle(x0 - medial * (notch + rx_l), rx_l, ry_l, rz_l, _uniform(rng, 2.1, 2.9)),
    )
    front = yc + max(ry_m, ry_l) + s * _uniform(rng, 3.0, 8.0)  # anterior surface of trochlea and shaft
    ry_t, rz_t = s * _uniform(rng, 14.0, 18.0), s * _uniform(rng, 24.0, 30.0)
    x_t = x0 - medial * s * _uniform(rng, 0.0, 3.0)
    ry_s = s * _uniform(rng, 14.0, 18.0)
    return {
        "pivot": (yc, zc),
        "flexion": flexion,
        "condyles": condyles,
        "trochlea": (x_t, front - ry_t, zc + s * _uniform(rng, 8.0, 14.0), 0.9 * (notch + rx_m + rx_l), ry_t, rz_t),
        "groove": (
            x_t - medial * s * _uniform(rng, 0.0, 3.0),
            s * _uniform(rng, 3.0, 6.0),
            s * _uniform(rng, 7.0, 10.0),
        ),
        "trochlea_thickness": _uniform(rng, 2.2, 3.2),
        "shaft": (x_t, front - ry_s - s * _uniform(rng, 0.0, 2.0), s * _uniform(rng, 16.0, 20.0), ry_s),
        "cortex": (_uniform(rng, 0.6, 1.1), _uniform(rng, 2.5, 4.0)),
        "femoral_physis": zc + s * _uniform(rng, 14.0, 22.0),
    }


def _sample_tibia(rng: np.random.Generator, s: float, medial: float, femur: dict) -> dict:
    """Plateaus placed under the condyles, head outline, shaft, tuberosity, spines, fibula head."""
    slope = math.tan(math.radians(_uniform(rng, 3.0, 10.0)))
    pm, pl = (
        _place_plateau(rng, s, cd, femur["pivot"], femur["flexion"], slope, i == 0, _uniform(rng, 0.2, 1.2))
        for i, cd in enumerate(femur["condyles"])
    )
    x_mid, y_mid = 0.5 * (pm.x + pl.x), 0.5 * (pm.y + pl.y)
    outline = (x_mid, y_mid, 0.5 * abs(pm.x - pl.x) + max(pm.a, pl.a) + 2.5 * s, max(pm.b, pl.b) + 4.0 * s)
    top = min(pm.top, pl.top)
    return {
        "plateaus": (pm, pl),
        "slope": slope,
        "spines": (x_mid, y_mid + _uniform(rng, -2.0, 4.0), s * _uniform(rng, 5.0, 8.0)),
        "tibia_outline": outline,
        "tibia_shaft": (x_mid - medial * s * 2.0, y_mid + s * _uniform(rng, 3.0, 7.0), s * 14.0, s * 13.0),
        "tibial_physis": top - s * _uniform(rng, 12.0, 18.0),
        "tuberosity": (x_mid - medial * s * 4.0, top - s * _uniform(rng, 24.0, 32.0), s * _uniform(rng, 2.0, 4.0)),
        "fibula": (
            x_mid - medial * 0.8 * outline[2],
            y_mid - 0.6 * outline[3],
            top - s * _uniform(rng, 14, 20),
            8.5 * s,
        ),
    }


def _sample_patella(rng: np.random.Generator, s: float, medial: float, x0: float, femur: dict) -> dict:
    """Patella in front of the trochlea at a random height; its cartilage a small gap from the trochlear cartilage."""
    rx_p, ry_p = s * _uniform(rng, 19.0, 23.0), s * _uniform(rng, 10.0, 13.0)
    rz_up, rz_dn = s * _uniform(rng, 15.0, 19.0), s * _uniform(rng, 18.0, 23.0)
    trochlea = femur["trochlea"]
    z_p = trochlea[2] + trochlea[5] * _uniform(rng, 0.2, 0.55)
    x_p = x0 - medial * s * _uniform(rng, 2.0, 6.0)
    t_pat = _uniform(rng, 2.8, 4.0)
    clearance = _patella_clearance(trochlea, femur["groove"], x_p, z_p, rx_p, ry_p)
    y_p = clearance + femur["trochlea_thickness"] + _uniform(rng, 0.3, 1.5) + t_pat
    return {"patella": (x_p, y_p, z_p, rx_p, ry_p, rz_up, rz_dn), "patella_thickness": t_pat}


def _sample_soft_tissue(rng: np.random.Generator, s: float, x0: float, femur: dict, patella: dict) -> dict:
    """Limb outline from the patella to well behind the condyles, fat and skin, fluid amounts, Baker's cyst."""
    (yc, zc), med = femur["pivot"], femur["condyles"][0]
    y_p, ry_p = patella["patella"][1], patella["patella"][4]
    fat, skin = s * _uniform(rng, 3.0, 11.0), _uniform(rng, 1.2, 2.2)
    y_ant = y_p + ry_p + _uniform(rng, 2.0, 5.0) + fat + skin
    y_post = yc - med.ry - s * _uniform(rng, 35.0, 50.0)
    body = (
        x0 + _uniform(rng, -3.0, 3.0),
        0.5 * (y_ant + y_post),
        s * _uniform(rng, 50.0, 60.0),
        0.5 * (y_ant - y_post),
    )
    baker_radius = s * _uniform(rng, 5.0, 12.0)
    baker = (med.x, yc - med.ry - s * 8.0, zc - s * 5.0, baker_radius) if rng.random() < 0.25 else None
    return {
        "body": body,
        "fat": fat,
        "skin": skin,
        "fluid": _uniform(rng, 0.3, 1.8),
        "bursa": s * _uniform(rng, 1.0, 5.0),
        "baker_cyst": baker,
    }


def _sample_knee(rng: np.random.Generator, defects: bool) -> _Knee:
    """Draw one knee; every draw happens whatever `defects` is, so a seed gives the same knee with or without them."""
    s = _uniform(rng, 0.9, 1.1)
    medial = -1.0 if rng.random() < 0.5 else 1.0  # right knee: medial towards -x (the patient's left)
    x0 = _uniform(rng, -4.0, 4.0)
    femur = _sample_femur(rng, s, medial, x0)
    tibia = _sample_tibia(rng, s, medial, femur)
    patella = _sample_patella(rng, s, medial, x0, femur)
    soft = _sample_soft_tissue(rng, s, x0, femur, patella)
    focal = _sample_defects(rng, {**femur, **tibia})
    lesions = _sample_lesions(rng, focal)
    waves = tuple(
        (_uniform(rng, -0.25, 0.25), _uniform(rng, -0.25, 0.25), _uniform(rng, -0.25, 0.25), _uniform(rng, 0, 6.3))
        for _ in range(4)
    )
    return _Knee(
        size=s,
        medial=medial,
        x0=x0,
        **femur,
        **tibia,
        **patella,
        **soft,
        defects=focal if defects else (),
        lesions=lesions if defects else (),
        waves=waves,
        dess=_sample_dess(rng),
    )


# ----------------------------------------------------------------------------------------------------------------------
# fields over one box of the grid (computed lazily and cached, so shared SDFs are evaluated once per box)
# ----------------------------------------------------------------------------------------------------------------------


class _Fields:
    """Signed distance and thickness fields of one knee on one box of voxels (open-grid coordinates in mm).

    Each field is computed on first use and cached, so the box's painter evaluates a shared SDF (e.g. the femur, needed
    by the bone, its cartilage and the fluid film) once.

    Args:
        knee: the case's parameters.
        grid, box: the voxels; coordinates X, Y, Z in mm broadcast as (nx, 1, 1), (1, ny, 1), (1, 1, nz).
        tex: the case's textures (fluid patchiness).
    """

    def __init__(self, knee: _Knee, grid: _Grid, box: Box, tex: _Textures) -> None:
        self.k, self.box, self.tex = knee, box, tex
        self.X, self.Y, self.Z = grid.coords(box)

    # --- femur (femur frame: rotated by the flexion angle about the condyle centres) ---
    @cached_property
    def frame(self) -> tuple[np.ndarray, np.ndarray]:
        """Femur-frame (y, z) of every voxel: 2D arrays, cheap, shared by femur, femoral cartilage and patella."""
        (yc, zc), c, s = self.k.pivot, math.cos(self.k.flexion), math.sin(self.k.flexion)
        dy, dz = self.Y - yc, self.Z - zc
        return yc + c * dy + s * dz, zc - s * dy + c * dz

    def _condyle(self, cd: _Condyle) -> np.ndarray:
        yf, zf = self.frame
        return _blob_sdf(self.X - cd.x, yf - self.k.pivot[0], zf - self.k.pivot[1], cd.rx, cd.ry, cd.rz)

    @cached_property
    def condyles(self) -> tuple[np.ndarray, np.ndarray]:
        return self._condyle(self.k.condyles[0]), self._condyle(self.k.condyles[1])

    @cached_property
    def trochlea(self) -> np.ndarray:
        """Anterior distal femur; the patellar groove pushes its surface back near the groove's x."""
        (x, y, z, rx, ry, rz), (gx, depth, width) = self.k.trochlea, self.k.groove
        yf, zf = self.frame
        groove = depth * np.exp(-(((self.X - gx) / width) ** 2))
        return _blob_sdf(self.X - x, yf - y + groove, zf - z, rx, ry, rz)

    @cached_property
    def femur(self) -> np.ndarray:
        """Condyles, then a smooth union with trochlea and shaft (the union's fillet is the metaphyseal flare)."""
        yf, zf = self.frame
        x, y, rx, ry = self.k.shaft
        shaft = np.maximum(_ellipse_sdf(self.X - x, yf - y, rx, ry), self.k.pivot[1] - zf)
        k = 6.0 * self.k.size
        return _smin(_smin(np.minimum(*self.condyles), self.trochlea, k), shaft, k)

    def _modulation(self, X, Y, Z) -> np.ndarray:
        """Smooth +-20 % thickness variation (a few long separable waves), identical at every resolution."""
        out = 1.0
        for kx, ky, kz, phase in self.k.waves:
            out = out + 0.07 * np.cos(kx * X + phase) * np.cos(ky * Y + kz * Z)
        return out

    def _dents(self, femoral: bool) -> np.ndarray | float:
        """Product of the focal defects of one bone: 1 away from them, 1 - depth at their centre."""
        yf, zf = self.frame if femoral else (self.Y, self.Z)
        out: np.ndarray | float = 1.0
        for d in self.k.defects:
            if d.femoral == femoral:
                r2 = (self.X - d.centre[0]) ** 2 + ((yf - d.centre[1]) ** 2 + (zf - d.centre[2]) ** 2)
                out = out * (1.0 - d.depth * np.exp(-r2 / (2.0 * d.sigma**2)))
        return out

    def _condyle_thickness(self, cd: _Condyle) -> np.ndarray:
        """Cartilage on the distal and posterior condyle, up to its posterior top; none on the notch walls."""
        yf, zf = self.frame
        psi = np.arctan2(-(yf - self.k.pivot[0]) / cd.ry, -(zf - self.k.pivot[1]) / cd.rz)  # 0 down, +pi/2 posterior
        cover = _window(psi, math.radians(-95.0), math.radians(140.0), math.radians(18.0))
        across = _taper(np.abs(self.X - cd.x) / cd.rx, 0.8, 0.98)
        return cd.thickness * cover * across

    def _trochlea_thickness(self) -> np.ndarray:
        """Cartilage on the anterior (patellar) face of the trochlea, full width, not on its notch-facing underside."""
        x, y, z, rx, ry, rz = self.k.trochlea
        yf, zf = self.frame
        psi = np.arctan2(-(yf - y) / ry, -(zf - z) / rz)  # -pi/2 anterior
        cover = _window(psi, math.radians(-160.0), math.radians(-55.0), math.radians(15.0))
        across = _taper(np.abs(self.X - x) / rx, 0.7, 0.95)
        return self.k.trochlea_thickness * cover * across

    @cached_property
    def femoral_cartilage(self) -> np.ndarray:
        """SDF of the femoral cartilage: outside the bone and within the local thickness of a condyle or trochlea."""
        yf, zf = self.frame
        scale = self._modulation(self.X, yf, zf) * self._dents(True)
        med, lat = self.condyles
        med = med - self._condyle_thickness(self.k.condyles[0]) * scale
        lat = lat - self._condyle_thickness(self.k.condyles[1]) * scale
        troch = self.trochlea - self._trochlea_thickness() * scale
        return np.maximum(-self.femur, np.minimum(np.minimum(med, lat), troch))

    # --- tibia and fibula (scanner frame) ---
    @cached_property
    def plateau_height(self) -> np.ndarray:
        """Height (z, mm) of the tibial bone surface over (x, y): two compartments, posterior slope, spines."""
        k, X, Y = self.k, self.X, self.Y
        heights = []
        for pl in k.plateaus:
            dx, dy = X - pl.x, Y - pl.y
            sagittal = pl.top + k.slope * dy + 0.5 * pl.sagittal_curvature * dy * dy
            heights.append(sagittal + 0.5 * pl.coronal_curvature * dx * dx)
        w_lat = _smoothstep((X - k.spines[0]) * (-k.medial) / 8.0 + 0.5)
        h = heights[0] * (1.0 - w_lat) + heights[1] * w_lat
        sx, sy, sh = k.spines
        for side in (-1.0, 1.0):
            h = h + sh * np.exp(-(((X - sx - side * 4.0 * k.size) / (3.5 * k.size)) ** 2)) * np.exp(
                -(((Y - sy) / 7.0) ** 2)
            )
        return h

    @cached_property
    def tibia_outline(self) -> np.ndarray:
        """Axial outline (a vertical prism SDF) that narrows from the tibial head to the shaft."""
        k, X, Y, Z = self.k, self.X, self.Y, self.Z
        x_h, y_h, rx_h, ry_h = k.tibia_outline
        x_s, y_s, rx_s, ry_s = k.tibia_shaft
        top = min(p.top for p in k.plateaus)
        w = _smoothstep((Z - (top - 60.0 * k.size)) / (55.0 * k.size))  # 1 at the head, 0 down the shaft (1D in z)
        return _superellipse_sdf(
            X - (x_s + (x_h - x_s) * w), Y - (y_s + (y_h - y_s) * w), rx_s + (rx_h - rx_s) * w, ry_s + (ry_h - ry_s) * w
        )

    @cached_property
    def tibia(self) -> np.ndarray:
        """Plateau surface intersected with the outline, plus the tuberosity."""
        k, X, Y, Z = self.k, self.X, self.Y, self.Z
        head = _smax(self.tibia_outline, Z - self.plateau_height, 1.5)
        (_, y_h, _, ry_h), (_, y_s, _, ry_s) = k.tibia_outline, k.tibia_shaft
        tx, tz, bump = k.tuberosity
        y_front = y_s + ry_s + 0.4 * (y_h + ry_h - y_s - ry_s)
        tub = _ellipsoid_sdf(X - tx, Y - (y_front - 4.0), Z - tz, 10.0 * k.size, 4.0 + bump, 12.0 * k.size)
        return _smin(head, tub, 3.0)

    @cached_property
    def tibial_thickness(self) -> np.ndarray:
        """Local tibial cartilage thickness: tapered over each compartment's articular ellipse, zero on the spines."""
        k, X, Y = self.k, self.X, self.Y
        t = 0.0
        for pl in k.plateaus:
            rho = np.sqrt(((X - pl.x) / pl.a) ** 2 + ((Y - pl.y) / pl.b) ** 2)
            t = t + pl.thickness * _taper(rho, 0.7, 1.0)
        return t * self._modulation(X, Y, self.plateau_height) * self._dents(False)

    @cached_property
    def tibial_cartilage(self) -> np.ndarray:
        """SDF of the tibial cartilage, carved so it never reaches into the femoral cartilage (joint space >= 0.2)."""
        above = self.Z - self.plateau_height
        base = np.maximum(np.maximum(-self.tibia, -above), self.tibia_outline)  # on the plateau, not beyond its rim
        shell = np.maximum(base, above - self.tibial_thickness)
        return np.maximum(shell, 0.2 - self.femoral_cartilage)

    @cached_property
    def fibula(self) -> np.ndarray:
        x, y, z, r = self.k.fibula
        head = _ellipsoid_sdf(self.X - x, self.Y - y, self.Z - z, r, r, 1.3 * r)
        shaft = _capsule_sdf(self.X, self.Y, self.Z, (x, y, z), (x, y + 3.0, z - 200.0), 0.7 * r)
        return _smin(head, shaft, 4.0)

    @cached_property
    def menisci(self) -> np.ndarray:
        """Two C-shaped wedges on the plateau periphery: thin inner edge, tall outer rim, wider posterior horn."""
        k, X, Y = self.k, self.X, self.Y
        v = self.Z - (self.plateau_height + self.tibial_thickness)
        out = None
        for pl in k.plateaus:
            dyn = (Y - pl.y) / (1.05 * pl.b)
            rho = np.sqrt(((X - pl.x) / (1.05 * pl.a)) ** 2 + dyn * dyn)
            inner = pl.meniscus_inner - pl.posterior_horn * np.clip(-dyn, 0.0, 1.0)
            top = pl.meniscus_height * _smoothstep((rho - inner) / (0.97 - inner))
            radial = np.maximum((inner - rho) * pl.b, (rho - 1.07) * pl.b)
            wedge = np.maximum(np.maximum(radial, -v), (v - top) * 0.7)
            out = wedge if out is None else np.minimum(out, wedge)
        return out

    # --- patella (femur frame, so it follows flexion) ---
    @cached_property
    def _patella_offsets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        x, y, z, rx, ry, rz_up, rz_dn = self.k.patella
        yf, zf = self.frame
        dz = zf - z
        return self.X - x, yf - y, dz, np.where(dz < 0, np.float32(rz_dn), np.float32(rz_up))

    @cached_property
    def patella(self) -> np.ndarray:
        """Flattened superellipsoid, pointed apex (longer lower half), with a posterior ridge facing the groove."""
        dx, dy, dz, rz = self._patella_offsets
        ridge = 0.8 * self.k.groove[1] * np.exp(-(((self.X - self.k.groove[0]) / self.k.groove[2]) ** 2))
        return _blob_sdf(dx, dy + ridge, dz, self.k.patella[3], self.k.patella[4], rz)

    @cached_property
    def patellar_thickness(self) -> np.ndarray:
        """Thick cartilage on the posterior (femur-facing) surface of the patella only."""
        dx, dy, dz, rz = self._patella_offsets
        psi = np.arctan2(dz / rz, -dy / self.k.patella[4])  # 0 posterior
        cover = _window(psi, math.radians(-55.0), math.radians(55.0), math.radians(20.0))
        t = self.k.patella_thickness * cover * _taper(np.abs(dx) / self.k.patella[3], 0.6, 0.9)
        return t * self._modulation(self.X, *self.frame)

    @cached_property
    def patellar_cartilage(self) -> np.ndarray:
        return np.maximum(-self.patella, self.patella - self.patellar_thickness)

    # --- synovial fluid: a film over the articular surfaces, inside the capsule (it fills the joint space) ---
    @cached_property
    def capsule(self) -> np.ndarray:
        k = self.k
        x_h, y_h, rx_h, ry_h = k.tibia_outline
        z_mid = 0.5 * (k.pivot[1] + min(p.top for p in k.plateaus))
        return _ellipsoid_sdf(self.X - x_h, self.Y - y_h, self.Z - z_mid, rx_h + 6.0, ry_h + 8.0, 32.0 * k.size)

    def fluid_film(self, part: str) -> np.ndarray:
        """SDF of the fluid within `knee.fluid` mm of the cartilage that `part`'s box holds (and its neighbour)."""
        if part == "femur":
            near = self.femoral_cartilage
        elif part == "tibia":
            near = np.minimum(self.tibial_cartilage, self.femoral_cartilage)
        else:  # patella: only over its cartilage, not around the whole bone
            near = np.minimum(
                np.maximum(self.patellar_cartilage, 0.5 - self.patellar_thickness), self.femoral_cartilage
            )
        return np.maximum(near - self.k.fluid * self.patchiness, self.capsule)

    @cached_property
    def patchiness(self) -> np.ndarray:
        """0..1.4 slowly varying factor: fluid pools in places and is absent in others."""
        return np.clip(0.6 + 0.5 * self.tex.get("blob", self.box), 0.0, 1.4)


# ----------------------------------------------------------------------------------------------------------------------
# grid, textures and the painter
# ----------------------------------------------------------------------------------------------------------------------

Box = tuple[slice, slice, slice]


class _Grid:
    """Voxel centres in mm (RAS, centred on the field of view) and boxes of them addressed by mm bounds."""

    def __init__(self, shape: Sequence[int], spacing: Sequence[float]) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.origin = tuple(-0.5 * (n - 1) * s for n, s in zip(self.shape, self.spacing))
        self.axes = [
            np.float32(o) + np.float32(s) * np.arange(n, dtype=np.float32)
            for o, s, n in zip(self.origin, self.spacing, self.shape)
        ]
        self.full: Box = tuple(slice(0, n) for n in self.shape)  # type: ignore[assignment]

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> Box | None:
        """Index slices of the voxels inside [lo, hi] mm (None if the box misses the grid)."""
        out = []
        for ax, a, b in zip(self.axes, lo, hi):
            i0, i1 = int(np.searchsorted(ax, a)), int(np.searchsorted(ax, b, side="right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, z = (ax[s] for ax, s in zip(self.axes, box))
        return x[:, None, None], y[None, :, None], z[None, None, :]


class _Textures:
    """Tileable noise blocks sampled at physical coordinates: marrow trabeculae, muscle fibres, slow heterogeneity.

    Tiles are drawn once per case (independent of the grid), so a knee's texture is the same at every resolution; each
    is looked up once over the whole grid (on first use) and boxes are views into it.
    """

    _SPECS = {"fine": (0.3, (1.0, 1.0, 1.0)), "streak": (0.35, (1.2, 1.2, 8.0)), "blob": (1.0, (2.5, 2.5, 2.5))}

    def __init__(self, rng: np.random.Generator, grid: _Grid, size: int = 96) -> None:
        self.grid, self.size, self.tiles, self.cache = grid, size, {}, {}
        for name, (_, sigma) in self._SPECS.items():
            tile = ndimage.gaussian_filter(rng.standard_normal((size,) * 3, dtype=np.float32), sigma, mode="wrap")
            self.tiles[name] = (tile - tile.mean()) / (tile.std() + 1e-6)
        self.offsets = rng.integers(0, size, size=3)

    def get(self, name: str, box: Box) -> np.ndarray:
        """Texture `name` (mean 0, std 1) on `box`."""
        if name not in self.cache:
            cell = self._SPECS[name][0]
            idx = [
                (np.floor(ax / cell).astype(np.int64) + int(o)) % self.size
                for ax, o in zip(self.grid.axes, self.offsets)
            ]
            self.cache[name] = self.tiles[name].take(idx[0], 0).take(idx[1], 1).take(idx[2], 2)
        return self.cache[name][box]


class _Canvas:
    """Image and tissue map painted back to front: each layer's alpha comes from its SDF (partial volume)."""

    def __init__(self, grid: _Grid) -> None:
        self.grid = grid
        self.image = np.zeros(grid.shape, dtype=np.float32)
        self.tissues = np.zeros(grid.shape, dtype=np.uint8)
        self.voxel = float(np.prod(grid.spacing) ** (1.0 / 3.0))

    def paint(self, box: Box, sdf: np.ndarray, value: np.ndarray | float, tissue: int, soft: float = 0.0) -> None:
        """Blend `value` where `sdf` < ~half a voxel (+ `soft` mm for diffuse soft-tissue borders); set `tissue` inside.

        The tissue map takes voxels whose centre is inside (sdf < 0), exactly where alpha > 0.5: label and image agree.
        """
        image = self.image[box]
        sdf = np.broadcast_to(sdf, image.shape)
        alpha = np.clip(0.5 - sdf * np.float32(1.0 / (self.voxel + soft)), 0.0, 1.0)
        image += alpha * (value - image)
        self.tissues[box][sdf < 0] = tissue


# ----------------------------------------------------------------------------------------------------------------------
# painting the knee
# ----------------------------------------------------------------------------------------------------------------------


def _to_scanner(knee: _Knee, y: float, z: float) -> tuple[float, float]:
    """Femur-frame (y, z) -> scanner (y, z): the inverse of `_Fields.frame`."""
    (yc, zc), c, s = knee.pivot, math.cos(knee.flexion), math.sin(knee.flexion)
    return yc + c * (y - yc) - s * (z - zc), zc + s * (y - yc) + c * (z - zc)


def _frame_box(knee: _Knee, lo: Sequence[float], hi: Sequence[float]) -> tuple[tuple, tuple]:
    """Scanner mm bounds of a femur-frame box (its rotated corners)."""
    corners = [_to_scanner(knee, y, z) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    ys, zs = zip(*corners)
    return (lo[0], min(ys), min(zs)), (hi[0], max(ys), max(zs))


def _femur_boxes(knee: _Knee, grid: _Grid) -> tuple[Box | None, Box | None]:
    """Distal femur (condyles, trochlea, their cartilage) and the shaft above it, from femur-frame bounds."""
    (yc, zc), tx, tz, trz = knee.pivot, knee.trochlea[0], knee.trochlea[2], knee.trochlea[5]
    xs = [c.x + sign * c.rx for c in knee.condyles for sign in (-1.0, 1.0)] + [
        tx - knee.trochlea[3],
        tx + knee.trochlea[3],
    ]
    front = max(knee.trochlea[1] + knee.trochlea[4], knee.shaft[1] + knee.shaft[3])
    lo = (min(xs) - 6.0, yc - max(c.ry for c in knee.condyles) - 6.0, zc - max(c.rz for c in knee.condyles) - 6.0)
    distal = grid.box(*_frame_box(knee, lo, (max(xs) + 6.0, front + 8.0, tz + trz + 6.0)))
    sx, sy, srx, sry = knee.shaft
    shaft = grid.box(*_frame_box(knee, (sx - srx - 8, sy - sry - 8, tz + trz - 4), (sx + srx + 8, sy + sry + 8, 400)))
    return distal, shaft


def _tibia_boxes(knee: _Knee, grid: _Grid) -> tuple[Box | None, Box | None]:
    """Tibial head (plateaus, cartilage, menisci, fibula head) and the shafts below it."""
    x_h, y_h, rx_h, ry_h = knee.tibia_outline
    fx, _, _, fr = knee.fibula
    x_lo, x_hi = min(x_h - rx_h, fx - fr) - 6.0, max(x_h + rx_h, fx + fr) + 6.0
    tops = [p.top for p in knee.plateaus]
    split = min(tops) - 30.0 * knee.size
    head = grid.box((x_lo, y_h - ry_h - 6.0, split), (x_hi, y_h + ry_h + 10.0, max(tops) + 18.0))
    below = grid.box((x_lo, y_h - ry_h - 6.0, -400.0), (x_hi, y_h + ry_h + 10.0, split))
    return head, below


def _patella_box(knee: _Knee, grid: _Grid) -> Box | None:
    """Patella and its cartilage, reaching back over the patellofemoral joint to the trochlear cartilage."""
    px, py, pz, prx, pry, prz_up, prz_dn = knee.patella
    back = pry + knee.patella_thickness + knee.trochlea_thickness + 8.0
    lo, hi = (px - prx - 4.0, py - back, pz - prz_dn - 4.0), (px + prx + 4.0, py + pry + 4.0, pz + prz_up + 4.0)
    return grid.box(*_frame_box(knee, lo, hi))


def _part_boxes(knee: _Knee, grid: _Grid) -> dict[str, Box]:
    """One box per part; fields are evaluated only inside them, which keeps a full-size phantom at a few seconds.

    Shaft boxes are cut to start where the joint boxes end, so no voxel's bone is painted twice.
    """
    femur, femoral_shaft = _femur_boxes(knee, grid)
    tibia, tibial_shaft = _tibia_boxes(knee, grid)
    if femur is not None and femoral_shaft is not None:
        z = femoral_shaft[2]
        femoral_shaft = (*femoral_shaft[:2], slice(max(z.start, femur[2].stop), z.stop))
    if tibia is not None and tibial_shaft is not None:
        z = tibial_shaft[2]
        tibial_shaft = (*tibial_shaft[:2], slice(z.start, min(z.stop, tibia[2].start)))
    boxes = {
        "femur": femur,
        "femoral shaft": femoral_shaft,
        "tibia": tibia,
        "tibial shaft": tibial_shaft,
        "patella": _patella_box(knee, grid),
    }
    return {k: v for k, v in boxes.items() if v is not None and v[2].stop > v[2].start}


def _paint_body(canvas: _Canvas, knee: _Knee, tex: _Textures) -> None:
    """Skin, subcutaneous fat and muscle (with fibre streaks and fat septa) fill the limb's elliptic cross-section."""
    g, dess, box = canvas.grid, knee.dess, canvas.grid.full
    X, Y, Z = g.coords(box)
    bx, by, rx, ry = knee.body
    body = _ellipse_sdf(X - bx, Y - by, rx, ry) - 0.1 * (Z - knee.pivot[1])  # thigh a little wider than the calf
    streak = tex.get("streak", box)
    canvas.paint(box, body, dess["skin"], _T["skin"])
    canvas.paint(box, body + knee.skin, dess["fat"] * (1.0 + 0.25 * streak), _T["fat"])
    muscle = dess["muscle"] * (1.0 + 0.1 * streak - 0.3 * np.clip(streak - 1.5, 0.0, None))
    canvas.paint(box, body + (knee.skin + knee.fat), muscle, _T["muscle"], soft=0.5)


def _paint_ellipsoid(canvas: _Canvas, centre, radii, value: float | Callable, tissue: int, soft: float = 0.0) -> None:
    """Paint one ellipsoid in its own bounding box; `value` may be a function of the box (a texture)."""
    g = canvas.grid
    box = g.box(
        [c - r - 2.0 - soft for c, r in zip(centre, radii)], [c + r + 2.0 + soft for c, r in zip(centre, radii)]
    )
    if box is None:
        return
    X, Y, Z = g.coords(box)
    sdf = _ellipsoid_sdf(X - centre[0], Y - centre[1], Z - centre[2], *radii)
    canvas.paint(box, sdf, value(box) if callable(value) else value, tissue, soft)


def _paint_soft_tissue(canvas: _Canvas, knee: _Knee, tex: _Textures) -> None:
    """Fat pads in front of and behind the joint, popliteal vessels, suprapatellar bursa, optional Baker's cyst."""
    g, dess, s = canvas.grid, knee.dess, knee.size
    (yc, zc), (px, py, pz, _, _, prz_up, _) = knee.pivot, knee.patella
    top = min(p.top for p in knee.plateaus)
    ry_m, x_h = knee.condyles[0].ry, knee.tibia_outline[0]
    shaft_front = _to_scanner(knee, knee.shaft[1] + knee.shaft[3], pz + prz_up + 15.0)  # above the patella
    py, pz = _to_scanner(knee, py, pz)
    fat_blobs = [
        # anterior knee (patella, tendons and retinacula sit in fat, not muscle), Hoffa's pad, popliteal fossa,
        # prefemoral fat behind the quadriceps tendon
        ((px, py - 2.0, 0.5 * (pz + top)), (45.0 * s, 16.0 * s, 0.5 * (pz + prz_up - top) + 4.0)),
        ((x_h, yc + ry_m + 6.0 * s, 0.5 * (zc - knee.condyles[0].rz + top) + 2.0), (22.0 * s, 10.0 * s, 12.0 * s)),
        ((x_h, yc - ry_m - 10.0 * s, zc), (15.0 * s, 10.0 * s, 40.0 * s)),
        ((knee.shaft[0], shaft_front[0] + 5.0, shaft_front[1]), (20.0 * s, 5.0 * s, 20.0 * s)),
    ]
    for centre, radii in fat_blobs:
        _paint_ellipsoid(
            canvas, centre, radii, lambda b: dess["fat"] * (1.0 + 0.25 * tex.get("blob", b)), _T["fat"], 3.0
        )
    y_vessel = yc - ry_m - 9.0 * s
    for dx, dy, r, val in ((2.0, 0.0, 3.0, dess["vessel"]), (-3.0, -5.0, 4.5, 0.8 * dess["vessel"])):
        box = g.box((x_h + dx - r - 2, y_vessel + dy - r - 10, -1e3), (x_h + dx + r + 2, y_vessel + dy + r + 10, 1e3))
        if box is not None:
            X, Y, Z = g.coords(box)
            canvas.paint(box, _ellipse_sdf(X - x_h - dx, Y - y_vessel - dy - 0.05 * Z, r, r), val, _T["vessel"])
    bursa = (knee.shaft[0], shaft_front[0] + 3.0 + knee.bursa, shaft_front[1] - 5.0)
    _paint_ellipsoid(canvas, bursa, (18.0 * s, knee.bursa, 20.0 * s), dess["fluid"], _T["synovial fluid"])
    if knee.baker_cyst is not None:
        x, y, z, r = knee.baker_cyst
        _paint_ellipsoid(canvas, (x, y, z), (0.8 * r, r, 1.8 * r), dess["fluid"], _T["synovial fluid"])


def _paint_ligaments(canvas: _Canvas, knee: _Knee, tex: _Textures) -> None:
    """Cruciates in the notch, collaterals at the sides, patellar and quadriceps tendons: all dark, all unlabelled."""
    g, s, dess = canvas.grid, knee.size, knee.dess
    (yc, zc), med, lat = knee.pivot, knee.condyles[0], knee.condyles[1]
    top, (sx, sy, _) = min(p.top for p in knee.plateaus), knee.spines
    x_h, y_h, rx_h, ry_h = knee.tibia_outline
    notch = 0.5 * abs(med.x - lat.x) - 0.5 * (med.rx + lat.rx)
    pcl_f = (sx + knee.medial * 0.6 * notch, *_to_scanner(knee, yc + 0.3 * med.ry, zc - 0.1 * med.rz))
    pcl_t = (sx, y_h - 0.85 * ry_h, top - 8.0 * s)
    pcl_m = (sx + knee.medial * 2.0, 0.5 * (pcl_f[1] + pcl_t[1]) - 5.0 * s, 0.5 * (pcl_f[2] + pcl_t[2]) + 6.0 * s)
    acl_f = (sx - knee.medial * 0.6 * notch, *_to_scanner(knee, yc - 0.45 * lat.ry, zc + 0.05 * lat.rz))
    acl_t = (sx - knee.medial * 1.5, sy + 9.0 * s, top + 1.0)
    px, py, pz, prx, pry, prz_up, prz_dn = knee.patella
    pat_lo, pat_hi = (
        _to_scanner(knee, py + 0.2 * pry, pz - 0.9 * prz_dn),
        _to_scanner(knee, py + 0.3 * pry, pz + prz_up),
    )
    tx, tz, bump = knee.tuberosity
    y_tub = knee.tibia_shaft[1] + knee.tibia_shaft[3] + 0.4 * (y_h + ry_h - knee.tibia_shaft[1] - knee.tibia_shaft[3])
    layers = [
        ("capsule", (pcl_f, pcl_m, 4.0 * s), dess["ligament"]),
        ("capsule", (pcl_m, pcl_t, 4.0 * s), dess["ligament"]),
        ("capsule", (acl_f, acl_t, 3.2 * s), dess["acl"]),
        ("band", ((px, *pat_lo), (tx, y_tub + bump, tz), 2.5 * s, 13.0 * s), dess["ligament"]),
        ("band", ((px, *pat_hi), (px, pat_hi[0] - 6.0, 120.0), 3.5 * s, 15.0 * s), dess["ligament"]),
    ]
    for side, cd in ((knee.medial, med), (-knee.medial, lat)):
        x_side = knee.x0 + side * (max(abs(cd.x + side * cd.rx - knee.x0), abs(x_h + side * rx_h - knee.x0)) + 2.0)
        y_side = y_h - (0.0 if side == knee.medial else 0.5 * ry_h)
        layers.append(
            ("capsule", ((x_side, yc, zc + 8.0), (x_side, y_side, top - 40.0 * s), 2.2 * s), dess["ligament"])
        )
    for kind, args, value in layers:
        pts = np.array([p for p in args if isinstance(p, tuple)])
        pad = max(a for a in args if not isinstance(a, tuple)) + 2.0
        box = g.box(pts.min(axis=0) - pad, pts.max(axis=0) + pad)
        if box is None:
            continue
        X, Y, Z = g.coords(box)
        sdf = _capsule_sdf(X, Y, Z, *args) if kind == "capsule" else _band_sdf(X, Y, Z, *args)
        canvas.paint(box, sdf, value * (1.0 + 0.3 * tex.get("streak", box)), _T["ligament or tendon"])


def _bone_fields(knee: _Knee, f: _Fields, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(SDF, distance from the joint along the bone, signed distance to the physeal scar or None) of one bone."""
    if name == "femoral bone":
        return f.femur, f.frame[1] - knee.pivot[1], f.frame[1] - knee.femoral_physis
    if name == "tibial bone":
        return f.tibia, min(p.top for p in knee.plateaus) - f.Z, f.Z - knee.tibial_physis
    if name == "fibula":
        return f.fibula, np.float32(30.0), None
    return f.patella, np.float32(0.0), None


def _paint_bone(canvas: _Canvas, knee: _Knee, tex: _Textures, box: Box, f: _Fields, name: str) -> None:
    """Dark cortex, then fat-suppressed marrow inside it (trabecular texture, wavy physeal scar).

    The cortex thickens away from the joint, as in the real diaphysis; under the cartilage it is the thin dark
    subchondral plate that separates the bright cartilage from the marrow.
    """
    sdf, along, physis = _bone_fields(knee, f, name)
    c0, c1 = knee.cortex
    cortex = c0 + (c1 - c0) * _smoothstep((along - 20.0) / 30.0)
    marrow = knee.dess["marrow"] * (1.0 + 0.15 * tex.get("fine", box))
    if physis is not None:
        marrow = marrow * (1.0 - 0.45 * np.exp(-(((physis + 1.2 * np.sin(f.X / 6.0)) / 0.8) ** 2)))
    canvas.paint(box, sdf, knee.dess["cortex"], _T[name])
    canvas.paint(box, sdf + cortex, marrow, _T[name])


def _paint_lesions(canvas: _Canvas, knee: _Knee, box: Box, f: _Fields, femoral: bool) -> None:
    """Bright subchondral marrow lesions under some defects (kept inside the marrow): they rival cartilage signal."""
    bone, name = (f.femur, "femoral bone") if femoral else (f.tibia, "tibial bone")
    yy, zz = f.frame if femoral else (f.Y, f.Z)
    for x, y, z, r, on_femur in knee.lesions:
        if on_femur == femoral:
            blob = _ellipsoid_sdf(f.X - x, yy - y, zz - z, r, r, 0.7 * r)
            canvas.paint(box, np.maximum(blob, bone + 1.5), knee.dess["lesion"], _T[name], soft=1.0)


def _cartilage_value(tex: _Textures, box: Box, depth: np.ndarray, level: float) -> np.ndarray:
    """Cartilage signal: darker deep (calcified, radial zone), brighter superficial, slowly heterogeneous."""
    rel = 0.8 + 0.3 * _smoothstep(depth * np.float32(1.0 / 2.5))
    return level * rel * (1.0 + 0.04 * tex.get("fine", box) + 0.08 * tex.get("blob", box))


def _paint_joint(canvas: _Canvas, knee: _Knee, tex: _Textures) -> None:
    """Everything articular, back to front: fluid film, ligaments, menisci, bones, marrow lesions, cartilage."""
    g, dess = canvas.grid, knee.dess
    boxes = _part_boxes(knee, g)
    fields = {name: _Fields(knee, g, box, tex) for name, box in boxes.items()}
    for part in ("femur", "tibia", "patella"):
        if part in boxes:
            value = dess["fluid"] * (1.0 + 0.04 * tex.get("blob", boxes[part]))
            canvas.paint(boxes[part], fields[part].fluid_film(part), value, _T["synovial fluid"])
    _paint_ligaments(canvas, knee, tex)
    if "tibia" in boxes:
        value = dess["meniscus"] * (1.0 + 0.3 * tex.get("fine", boxes["tibia"]))
        canvas.paint(boxes["tibia"], fields["tibia"].menisci, value, _T["meniscus"])
    bones = {
        "tibial shaft": ("fibula", "tibial bone"),
        "tibia": ("fibula", "tibial bone"),
        "femoral shaft": ("femoral bone",),
        "femur": ("femoral bone",),
        "patella": ("patellar bone",),
    }
    for part, names in bones.items():
        for name in names if part in boxes else ():
            _paint_bone(canvas, knee, tex, boxes[part], fields[part], name)
    for part, femoral in (("femur", True), ("tibia", False)):
        if part in boxes:
            _paint_lesions(canvas, knee, boxes[part], fields[part], femoral)
    cartilages = (
        ("femur", "femoral cartilage", "femur", dess["cartilage"]),
        ("tibia", "tibial cartilage", "tibia", dess["cartilage"]),
        ("patella", "patellar cartilage", "patella", dess["patellar_cartilage"]),
    )
    for part, name, bone, level in cartilages:
        if part in boxes:
            f = fields[part]
            sdf = {"femur": f.femoral_cartilage, "tibia": f.tibial_cartilage, "patella": f.patellar_cartilage}[part]
            depth = getattr(f, bone)
            canvas.paint(boxes[part], sdf, _cartilage_value(tex, boxes[part], depth, level), _T[name])


# ----------------------------------------------------------------------------------------------------------------------
# acquisition: point-spread function, bias field, Rician noise
# ----------------------------------------------------------------------------------------------------------------------


def _bias_field(grid: _Grid, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative field (coil sensitivity): exp of low-order terms in mm, built from 1D/2D pieces."""
    x, y, z = (ax / (0.5 * f) for ax, f in zip(grid.axes, FIELD_OF_VIEW_MM))  # about -1..1 over OAI's field of view
    c = [float(v) for v in rng.uniform(-1.0, 1.0, size=9)]
    log_b = (c[0] * x + c[1] * x * x + c[7] * np.cos(2.0 * x + c[8]))[:, None, None]
    log_b = (
        log_b + ((c[2] * y + c[3] * y * y)[:, None] + (c[4] * z + c[5] * z * z)[None, :] + c[6] * np.outer(y, z))[None]
    )
    return np.exp(np.float32(strength / 3.0) * log_b)


def _acquire(canvas: _Canvas, knee: _Knee, rng: np.random.Generator) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------------


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
        return _LABEL_OF_TISSUE[self.tissues]

    @property
    def affine(self) -> np.ndarray:
        """RAS voxel-to-world matrix: diag(spacing) plus the origin (nibabel's aff2axcodes gives R, A, S)."""
        aff = np.diag([*self.spacing, 1.0])
        aff[:3, 3] = self.origin
        return aff


def default_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Spacing that keeps OAI's physical field of view (112 x 140 x 140 mm) at any `shape`."""
    return tuple(float(f / n) for f, n in zip(FIELD_OF_VIEW_MM, _as_shape(shape)))  # type: ignore[return-value]


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
    shape = _as_shape(shape)
    spacing = default_spacing(shape) if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive numbers in mm, got {spacing}")
    anatomy_seq, texture_seq, noise_seq = np.random.SeedSequence(int(seed)).spawn(3)
    knee = _sample_knee(np.random.default_rng(anatomy_seq), defects)
    grid = _Grid(shape, spacing)
    tex = _Textures(np.random.default_rng(texture_seq), grid)
    canvas = _Canvas(grid)
    _paint_body(canvas, knee, tex)
    _paint_soft_tissue(canvas, knee, tex)
    _paint_joint(canvas, knee, tex)
    image = _acquire(canvas, knee, np.random.default_rng(noise_seq))
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


# ----------------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------------


def _as_shape(shape: Sequence[int] | str | int) -> tuple[int, int, int]:
    """Accept (D, H, W), "D,H,W" or "DxHxW" (the CLI) and check it is three sizes of at least 8 voxels."""
    if isinstance(shape, str):
        shape = [v for v in shape.replace("x", ",").strip("()[] ").split(",") if v.strip()]
    values = tuple(int(v) for v in (shape if isinstance(shape, Sequence) else [shape]))
    if len(values) != 3 or min(values) < 8:
        raise ValueError(f"shape must be three sizes (D, H, W) of at least 8 voxels, got {shape!r}")
    return values  # type: ignore[return-value]


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """NIfTI with qform and sform both set to the RAS affine (scanner code), units mm."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def _write_metaimage(path: Path, array: np.ndarray, spacing: Sequence[float], origin: Sequence[float]) -> None:
    """MetaImage (.mhd + .raw, like the OAI-ZIB masks) in ITK's LPS world, so ITK readers see the same RAS volume.

    ITK names the .raw after the header, so it writes into a staging folder beside the target; each file then moves
    into place atomically, the .raw before the .mhd that points to it.
    """
    import itk

    image = itk.image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0)))  # ITK wants (z, y, x) memory order
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([-float(origin[0]), -float(origin[1]), float(origin[2])])  # RAS -> LPS
    image.SetDirection(itk.matrix_from_array(np.diag([-1.0, -1.0, 1.0])))
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=path.parent))
    try:
        itk.imwrite(image, str(stage / path.name), compression=False)
        raw = path.with_suffix(".raw")
        for staged, target in ((stage / raw.name, raw), (stage / path.name, path)):
            with atomic_path(target) as tmp:
                os.replace(staged, tmp)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _write_volume(path: Path, array: np.ndarray, knee: KneePhantom, fmt: str) -> None:
    if fmt == "nii.gz":
        _write_nifti(path, array, knee.affine)
    else:
        _write_metaimage(path, array, knee.spacing, knee.origin)


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless `overwrite`: generated files must never silently mix with a user's data."""
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"{output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output folder {output_dir} is not empty; choose an empty or new folder, or pass --overwrite True "
            "(overwrite=True in Python) to replace the phantom files in it"
        )


def write_phantom_dataset(
    output_dir: str | os.PathLike,
    num_cases: int = 12,
    shape: Sequence[int] | str = DEFAULT_SHAPE,
    seed: int = 0,
    num_test: int = 3,
    fmt: str = "nii.gz",
    overwrite: bool = False,
    defects: bool = True,
) -> Path:
    """Write `num_cases` phantoms in the OAIZIB-CM layout plus `datalist.json`; return the datalist's path.

    Cases 0 .. num_cases - num_test - 1 go to imagesTr/labelsTr, the last `num_test` to imagesTs/labelsTs. Case i uses
    `case_seed(seed, i)`. The datalist is written last, so its presence marks a complete dataset. With `overwrite`,
    files of the same names are replaced and other files in the folder are left alone.
    """
    output_dir = Path(output_dir)
    shape = _as_shape(shape)
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {sorted(_FORMATS)}, got {fmt!r}")
    if int(num_cases) < 1 or not 0 <= int(num_test) <= int(num_cases):
        raise ValueError(f"need num_cases >= 1 and 0 <= num_test <= num_cases, got {num_cases=} {num_test=}")
    _check_output_dir(output_dir, overwrite)
    num_cases, num_test = int(num_cases), int(num_test)
    width = max(3, len(str(num_cases - 1)))
    ext = _FORMATS[fmt][0]
    lists: dict[str, list[dict[str, str]]] = {"training": [], "test": []}
    start = time.perf_counter()
    for i in range(num_cases):
        subject = f"phantom_{i:0{width}d}"
        split, suffix = ("training", "Tr") if i < num_cases - num_test else ("test", "Ts")
        knee = simulate_knee(shape, case_seed(seed, i), defects=defects)
        item = {
            "image": f"images{suffix}/{subject}{ext}",
            "label": f"labels{suffix}/{subject}{ext}",
            "subject": subject,
        }
        (output_dir / f"images{suffix}").mkdir(parents=True, exist_ok=True)
        (output_dir / f"labels{suffix}").mkdir(parents=True, exist_ok=True)
        _write_volume(output_dir / item["image"], knee.image, knee, fmt)
        _write_volume(output_dir / item["label"], knee.label, knee, fmt)
        lists[split].append(item)
        elapsed = time.perf_counter() - start
        eta = elapsed / (i + 1) * (num_cases - i - 1)
        logger.info("phantom %d/%d %s (%s), %.1f s elapsed, ETA %.0f s", i + 1, num_cases, subject, split, elapsed, eta)
    datalist = {
        "name": "knee phantoms",
        "description": "procedural DESS-like knee MR phantoms (scripts/phantom.py); label codes as OAI-ZIB",
        "label_preset": "oai-zib",
        "labels": {str(c): TISSUES[c] for c in range(5)},
        "shape": list(shape),
        "spacing": list(default_spacing(shape)),
        "seed": int(seed),
        "format": fmt,
        "training": lists["training"],
        "test": lists["test"],
    }
    return atomic_write_text(output_dir / "datalist.json", json.dumps(datalist, indent=2) + "\n")


def main(
    output_dir: str,
    num_cases: int = 12,
    shape: str | Sequence[int] = "160,384,384",
    seed: int = 0,
    num_test: int = 3,
    format: str = "nii.gz",
    overwrite: bool = False,
    defects: bool = True,
) -> str:
    """Generate knee MR phantoms (DESS-like images, OAI-ZIB labels) into OUTPUT_DIR; prints the datalist's path.

    Args:
        output_dir: folder to create (must be empty or new unless --overwrite).
        num_cases: number of knees; the last `num_test` go to imagesTs/labelsTs, the rest to imagesTr/labelsTr.
        shape: D,H,W voxels (left-right, posterior-anterior, inferior-superior), e.g. 40,96,96; the spacing scales
            so the field of view stays OAI's 112 x 140 x 140 mm (160,384,384 -> 0.7 x 0.3646 x 0.3646 mm).
        seed: dataset seed; case i uses a seed derived from (seed, i).
        num_test: number of test cases.
        format: nii.gz (NIfTI, OAIZIB-CM style) or mhd (MetaImage .mhd + .raw, OAI-ZIB style).
        overwrite: allow writing into a non-empty folder, replacing files of the same names.
        defects: add focal cartilage defects and bone-marrow lesions.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        overwrite, defects = as_bool(overwrite, "overwrite"), as_bool(defects, "defects")  # `--overwrite false`: False
        path = write_phantom_dataset(output_dir, num_cases, shape, seed, num_test, format, overwrite, defects)
    except (FileExistsError, NotADirectoryError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None  # a clear one-line message, not a traceback
    return str(path)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
