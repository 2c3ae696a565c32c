"""Painting one knee onto the grid, back to front, with partial-volume alpha from each structure's SDF.

The tissue map is written where the SDF is negative, exactly where the image's alpha passes 0.5: label and image agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from scripts.phantom.anatomy import Knee
from scripts.phantom.conventions import TISSUE_CODES
from scripts.phantom.fields import Box, Fields, Grid, Textures
from scripts.phantom.sdf import band_sdf, capsule_sdf, ellipse_sdf, ellipsoid_sdf, smoothstep


class Canvas:
    """Image and tissue map painted back to front: each layer's alpha comes from its SDF (partial volume)."""

    def __init__(self, grid: Grid) -> None:
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


def _to_scanner(knee: Knee, y: float, z: float) -> tuple[float, float]:
    """Femur-frame (y, z) -> scanner (y, z): the inverse of `Fields.frame`."""
    (yc, zc), c, s = knee.pivot, math.cos(knee.flexion), math.sin(knee.flexion)
    return yc + c * (y - yc) - s * (z - zc), zc + s * (y - yc) + c * (z - zc)


def _frame_box(knee: Knee, lo: Sequence[float], hi: Sequence[float]) -> tuple[tuple, tuple]:
    """Scanner mm bounds of a femur-frame box (its rotated corners)."""
    corners = [_to_scanner(knee, y, z) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    ys, zs = zip(*corners)
    return (lo[0], min(ys), min(zs)), (hi[0], max(ys), max(zs))


def _femur_boxes(knee: Knee, grid: Grid) -> tuple[Box | None, Box | None]:
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


def _tibia_boxes(knee: Knee, grid: Grid) -> tuple[Box | None, Box | None]:
    """Tibial head (plateaus, cartilage, menisci, fibula head) and the shafts below it."""
    x_h, y_h, rx_h, ry_h = knee.tibia_outline
    fx, _, _, fr = knee.fibula
    x_lo, x_hi = min(x_h - rx_h, fx - fr) - 6.0, max(x_h + rx_h, fx + fr) + 6.0
    tops = [p.top for p in knee.plateaus]
    split = min(tops) - 30.0 * knee.size
    head = grid.box((x_lo, y_h - ry_h - 6.0, split), (x_hi, y_h + ry_h + 10.0, max(tops) + 18.0))
    below = grid.box((x_lo, y_h - ry_h - 6.0, -400.0), (x_hi, y_h + ry_h + 10.0, split))
    return head, below


def _patella_box(knee: Knee, grid: Grid) -> Box | None:
    """Patella and its cartilage, reaching back over the patellofemoral joint to the trochlear cartilage."""
    px, py, pz, prx, pry, prz_up, prz_dn = knee.patella
    back = pry + knee.patella_thickness + knee.trochlea_thickness + 8.0
    lo, hi = (px - prx - 4.0, py - back, pz - prz_dn - 4.0), (px + prx + 4.0, py + pry + 4.0, pz + prz_up + 4.0)
    return grid.box(*_frame_box(knee, lo, hi))


def _part_boxes(knee: Knee, grid: Grid) -> dict[str, Box]:
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


def paint_body(canvas: Canvas, knee: Knee, tex: Textures) -> None:
    """Skin, subcutaneous fat and muscle (with fibre streaks and fat septa) fill the limb's elliptic cross-section."""
    g, dess, box = canvas.grid, knee.dess, canvas.grid.full
    X, Y, Z = g.coords(box)
    bx, by, rx, ry = knee.body
    body = ellipse_sdf(X - bx, Y - by, rx, ry) - 0.1 * (Z - knee.pivot[1])  # thigh a little wider than the calf
    streak = tex.get("streak", box)
    canvas.paint(box, body, dess["skin"], TISSUE_CODES["skin"])
    canvas.paint(box, body + knee.skin, dess["fat"] * (1.0 + 0.25 * streak), TISSUE_CODES["fat"])
    muscle = dess["muscle"] * (1.0 + 0.1 * streak - 0.3 * np.clip(streak - 1.5, 0.0, None))
    canvas.paint(box, body + (knee.skin + knee.fat), muscle, TISSUE_CODES["muscle"], soft=0.5)


def _paint_ellipsoid(canvas: Canvas, centre, radii, value: float | Callable, tissue: int, soft: float = 0.0) -> None:
    """Paint one ellipsoid in its own bounding box; `value` may be a function of the box (a texture)."""
    g = canvas.grid
    box = g.box(
        [c - r - 2.0 - soft for c, r in zip(centre, radii)], [c + r + 2.0 + soft for c, r in zip(centre, radii)]
    )
    if box is None:
        return
    X, Y, Z = g.coords(box)
    sdf = ellipsoid_sdf(X - centre[0], Y - centre[1], Z - centre[2], *radii)
    canvas.paint(box, sdf, value(box) if callable(value) else value, tissue, soft)


def paint_soft_tissue(canvas: Canvas, knee: Knee, tex: Textures) -> None:
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
            canvas, centre, radii, lambda b: dess["fat"] * (1.0 + 0.25 * tex.get("blob", b)), TISSUE_CODES["fat"], 3.0
        )
    y_vessel = yc - ry_m - 9.0 * s
    for dx, dy, r, val in ((2.0, 0.0, 3.0, dess["vessel"]), (-3.0, -5.0, 4.5, 0.8 * dess["vessel"])):
        box = g.box((x_h + dx - r - 2, y_vessel + dy - r - 10, -1e3), (x_h + dx + r + 2, y_vessel + dy + r + 10, 1e3))
        if box is not None:
            X, Y, Z = g.coords(box)
            canvas.paint(
                box, ellipse_sdf(X - x_h - dx, Y - y_vessel - dy - 0.05 * Z, r, r), val, TISSUE_CODES["vessel"]
            )
    bursa = (knee.shaft[0], shaft_front[0] + 3.0 + knee.bursa, shaft_front[1] - 5.0)
    _paint_ellipsoid(canvas, bursa, (18.0 * s, knee.bursa, 20.0 * s), dess["fluid"], TISSUE_CODES["synovial fluid"])
    if knee.baker_cyst is not None:
        x, y, z, r = knee.baker_cyst
        _paint_ellipsoid(canvas, (x, y, z), (0.8 * r, r, 1.8 * r), dess["fluid"], TISSUE_CODES["synovial fluid"])


def _paint_ligaments(canvas: Canvas, knee: Knee, tex: Textures) -> None:
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
        sdf = capsule_sdf(X, Y, Z, *args) if kind == "capsule" else band_sdf(X, Y, Z, *args)
        canvas.paint(box, sdf, value * (1.0 + 0.3 * tex.get("streak", box)), TISSUE_CODES["ligament or tendon"])


def _bone_fields(knee: Knee, f: Fields, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(SDF, distance from the joint along the bone, signed distance to the physeal scar or None) of one bone."""
    if name == "femoral bone":
        return f.femur, f.frame[1] - knee.pivot[1], f.frame[1] - knee.femoral_physis
    if name == "tibial bone":
        return f.tibia, min(p.top for p in knee.plateaus) - f.Z, f.Z - knee.tibial_physis
    if name == "fibula":
        return f.fibula, np.float32(30.0), None
    return f.patella, np.float32(0.0), None


def _paint_bone(canvas: Canvas, knee: Knee, tex: Textures, box: Box, f: Fields, name: str) -> None:
    """Dark cortex, then fat-suppressed marrow inside it (trabecular texture, wavy physeal scar).

    The cortex thickens away from the joint, as in the real diaphysis; under the cartilage it is the thin dark
    subchondral plate that separates the bright cartilage from the marrow.
    """
    sdf, along, physis = _bone_fields(knee, f, name)
    c0, c1 = knee.cortex
    cortex = c0 + (c1 - c0) * smoothstep((along - 20.0) / 30.0)
    marrow = knee.dess["marrow"] * (1.0 + 0.15 * tex.get("fine", box))
    if physis is not None:
        marrow = marrow * (1.0 - 0.45 * np.exp(-(((physis + 1.2 * np.sin(f.X / 6.0)) / 0.8) ** 2)))
    canvas.paint(box, sdf, knee.dess["cortex"], TISSUE_CODES[name])
    canvas.paint(box, sdf + cortex, marrow, TISSUE_CODES[name])


def _paint_lesions(canvas: Canvas, knee: Knee, box: Box, f: Fields, femoral: bool) -> None:
    """Bright subchondral marrow lesions under some defects (kept inside the marrow): they rival cartilage signal."""
    bone, name = (f.femur, "femoral bone") if femoral else (f.tibia, "tibial bone")
    yy, zz = f.frame if femoral else (f.Y, f.Z)
    for x, y, z, r, on_femur in knee.lesions:
        if on_femur == femoral:
            blob = ellipsoid_sdf(f.X - x, yy - y, zz - z, r, r, 0.7 * r)
            canvas.paint(box, np.maximum(blob, bone + 1.5), knee.dess["lesion"], TISSUE_CODES[name], soft=1.0)


def _cartilage_value(tex: Textures, box: Box, depth: np.ndarray, level: float) -> np.ndarray:
    """Cartilage signal: darker deep (calcified, radial zone), brighter superficial, slowly heterogeneous."""
    rel = 0.8 + 0.3 * smoothstep(depth * np.float32(1.0 / 2.5))
    return level * rel * (1.0 + 0.04 * tex.get("fine", box) + 0.08 * tex.get("blob", box))


def paint_joint(canvas: Canvas, knee: Knee, tex: Textures) -> None:
    """Everything articular, back to front: fluid film, ligaments, menisci, bones, marrow lesions, cartilage."""
    g, dess = canvas.grid, knee.dess
    boxes = _part_boxes(knee, g)
    fields = {name: Fields(knee, g, box, tex) for name, box in boxes.items()}
    for part in ("femur", "tibia", "patella"):
        if part in boxes:
            value = dess["fluid"] * (1.0 + 0.04 * tex.get("blob", boxes[part]))
            canvas.paint(boxes[part], fields[part].fluid_film(part), value, TISSUE_CODES["synovial fluid"])
    _paint_ligaments(canvas, knee, tex)
    if "tibia" in boxes:
        value = dess["meniscus"] * (1.0 + 0.3 * tex.get("fine", boxes["tibia"]))
        canvas.paint(boxes["tibia"], fields["tibia"].menisci, value, TISSUE_CODES["meniscus"])
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
            canvas.paint(boxes[part], sdf, _cartilage_value(tex, boxes[part], depth, level), TISSUE_CODES[name])
