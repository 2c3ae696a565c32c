"""Anatomy parameters of one knee, drawn once per case, all in mm and radians, independent of the grid.

Why separate from the painter: one seed gives the same physical knee at any shape, so nothing here may depend on voxels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Condyle:
    """One femoral condyle; centre (y, z) is the femur-frame pivot shared by both condyles."""

    x: float
    rx: float
    ry: float
    rz: float
    thickness: float


@dataclass(frozen=True)
class Plateau:
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
class Defect:
    """Focal cartilage thinning: a Gaussian dent of relative `depth` (1 = full thickness) around `centre`."""

    centre: tuple[float, float, float]
    sigma: float
    depth: float
    femoral: bool  # femur-frame coordinates if True, scanner coordinates otherwise


@dataclass(frozen=True)
class Knee:
    """All random choices of one phantom (mm, radians): geometry, cartilage thickness, lesions and DESS contrast."""

    size: float
    medial: float  # +1 or -1: the x direction of the medial side (right knee: -1, towards the patient's left)
    x0: float
    pivot: tuple[float, float]  # (y, z) of the condyle centres = femur-frame rotation centre
    flexion: float  # radians
    condyles: tuple[Condyle, Condyle]  # medial, lateral
    trochlea: tuple[float, float, float, float, float, float]  # x, y, z, rx, ry, rz
    groove: tuple[float, float, float]  # x, depth, width
    trochlea_thickness: float
    shaft: tuple[float, float, float, float]  # x, y, rx, ry
    cortex: tuple[float, float]  # subchondral and diaphyseal cortical thickness
    femoral_physis: float
    plateaus: tuple[Plateau, Plateau]  # medial, lateral
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
    defects: tuple[Defect, ...]
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
    rng: np.random.Generator, knee_size: float, condyle: Condyle, pivot, flexion, slope, medial: bool, gap: float
) -> Plateau:
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
    return Plateau(
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


def _sample_defects(rng: np.random.Generator, knee: dict) -> tuple[Defect, ...]:
    """0-3 focal defects on the condyles, trochlea or plateaus."""
    (yc, zc), out = knee["pivot"], []
    for _ in range(int(rng.integers(0, 4))):
        site = int(rng.integers(0, 4))
        sigma, depth = _uniform(rng, 2.0, 5.0), _uniform(rng, 0.4, 1.0)
        if site < 2:  # a condyle, anywhere from distal to posterior
            cd = knee["condyles"][site]
            psi = _uniform(rng, -0.6, 1.6)
            centre = (cd.x + _uniform(rng, -0.5, 0.5) * cd.rx, yc - cd.ry * math.sin(psi), zc - cd.rz * math.cos(psi))
            out.append(Defect(centre, sigma, depth, True))
        elif site == 2:  # trochlea, anterior face
            x, y, z, rx, ry, rz = knee["trochlea"]
            centre = (x + _uniform(rng, -0.5, 0.5) * rx, y + ry * 0.9, z + _uniform(rng, -0.3, 0.3) * rz)
            out.append(Defect(centre, sigma, depth, True))
        else:  # a tibial plateau
            pl = knee["plateaus"][int(rng.integers(0, 2))]
            centre = (pl.x + _uniform(rng, -0.5, 0.5) * pl.a, pl.y + _uniform(rng, -0.5, 0.5) * pl.b, pl.top)
            out.append(Defect(centre, sigma, depth, False))
    return tuple(out)


def _sample_lesions(rng: np.random.Generator, defects: tuple[Defect, ...]) -> tuple:
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
        Condyle(x0 + medial * (notch + rx_m), rx_m, ry_m, rz_m, _uniform(rng, 2.1, 2.9)),
        Condyle(x0 - medial * (notch + rx_l), rx_l, ry_l, rz_l, _uniform(rng, 2.1, 2.9)),
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


def sample_knee(rng: np.random.Generator, defects: bool) -> Knee:
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
    return Knee(
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
