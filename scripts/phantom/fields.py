"""The voxel grid, per-case textures, and the knee's signed-distance and thickness fields over boxes of the grid.

Fields are computed lazily and cached per box, so an SDF shared by several layers (e.g. the femur, needed by the bone,
its cartilage and the fluid film) is evaluated once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property

import numpy as np
from scipy import ndimage

from scripts.phantom.anatomy import Condyle, Knee
from scripts.phantom.sdf import (
    blob_sdf,
    capsule_sdf,
    ellipse_sdf,
    ellipsoid_sdf,
    smax,
    smin,
    smoothstep,
    superellipse_sdf,
    taper,
    window,
)

Box = tuple[slice, slice, slice]


class Grid:
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


class Textures:
    """Tileable noise blocks sampled at physical coordinates: marrow trabeculae, muscle fibres, slow heterogeneity.

    Tiles are drawn once per case (independent of the grid), so a knee's texture is the same at every resolution; each
    is looked up once over the whole grid (on first use) and boxes are views into it.
    """

    _SPECS = {"fine": (0.3, (1.0, 1.0, 1.0)), "streak": (0.35, (1.2, 1.2, 8.0)), "blob": (1.0, (2.5, 2.5, 2.5))}

    def __init__(self, rng: np.random.Generator, grid: Grid, size: int = 96) -> None:
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


class Fields:
    """Signed distance and thickness fields of one knee on one box of voxels (open-grid coordinates in mm).

    Each field is computed on first use and cached, so the box's painter evaluates a shared SDF (e.g. the femur, needed
    by the bone, its cartilage and the fluid film) once.

    Args:
        knee: the case's parameters.
        grid, box: the voxels; coordinates X, Y, Z in mm broadcast as (nx, 1, 1), (1, ny, 1), (1, 1, nz).
        tex: the case's textures (fluid patchiness).
    """

    def __init__(self, knee: Knee, grid: Grid, box: Box, tex: Textures) -> None:
        self.k, self.box, self.tex = knee, box, tex
        self.X, self.Y, self.Z = grid.coords(box)

    # --- femur (femur frame: rotated by the flexion angle about the condyle centres) ---
    @cached_property
    def frame(self) -> tuple[np.ndarray, np.ndarray]:
        """Femur-frame (y, z) of every voxel: 2D arrays, cheap, shared by femur, femoral cartilage and patella."""
        (yc, zc), c, s = self.k.pivot, math.cos(self.k.flexion), math.sin(self.k.flexion)
        dy, dz = self.Y - yc, self.Z - zc
        return yc + c * dy + s * dz, zc - s * dy + c * dz

    def _condyle(self, cd: Condyle) -> np.ndarray:
        yf, zf = self.frame
        return blob_sdf(self.X - cd.x, yf - self.k.pivot[0], zf - self.k.pivot[1], cd.rx, cd.ry, cd.rz)

    @cached_property
    def condyles(self) -> tuple[np.ndarray, np.ndarray]:
        return self._condyle(self.k.condyles[0]), self._condyle(self.k.condyles[1])

    @cached_property
    def trochlea(self) -> np.ndarray:
        """Anterior distal femur; the patellar groove pushes its surface back near the groove's x."""
        (x, y, z, rx, ry, rz), (gx, depth, width) = self.k.trochlea, self.k.groove
        yf, zf = self.frame
        groove = depth * np.exp(-(((self.X - gx) / width) ** 2))
        return blob_sdf(self.X - x, yf - y + groove, zf - z, rx, ry, rz)

    @cached_property
    def femur(self) -> np.ndarray:
        """Condyles, then a smooth union with trochlea and shaft (the union's fillet is the metaphyseal flare)."""
        yf, zf = self.frame
        x, y, rx, ry = self.k.shaft
        shaft = np.maximum(ellipse_sdf(self.X - x, yf - y, rx, ry), self.k.pivot[1] - zf)
        k = 6.0 * self.k.size
        return smin(smin(np.minimum(*self.condyles), self.trochlea, k), shaft, k)

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

    def _condyle_thickness(self, cd: Condyle) -> np.ndarray:
        """Cartilage on the distal and posterior condyle, up to its posterior top; none on the notch walls."""
        yf, zf = self.frame
        psi = np.arctan2(-(yf - self.k.pivot[0]) / cd.ry, -(zf - self.k.pivot[1]) / cd.rz)  # 0 down, +pi/2 posterior
        cover = window(psi, math.radians(-95.0), math.radians(140.0), math.radians(18.0))
        across = taper(np.abs(self.X - cd.x) / cd.rx, 0.8, 0.98)
        return cd.thickness * cover * across

    def _trochlea_thickness(self) -> np.ndarray:
        """Cartilage on the anterior (patellar) face of the trochlea, full width, not on its notch-facing underside."""
        x, y, z, rx, ry, rz = self.k.trochlea
        yf, zf = self.frame
        psi = np.arctan2(-(yf - y) / ry, -(zf - z) / rz)  # -pi/2 anterior
        cover = window(psi, math.radians(-160.0), math.radians(-55.0), math.radians(15.0))
        across = taper(np.abs(self.X - x) / rx, 0.7, 0.95)
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
        w_lat = smoothstep((X - k.spines[0]) * (-k.medial) / 8.0 + 0.5)
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
        w = smoothstep((Z - (top - 60.0 * k.size)) / (55.0 * k.size))  # 1 at the head, 0 down the shaft (1D in z)
        return superellipse_sdf(
            X - (x_s + (x_h - x_s) * w), Y - (y_s + (y_h - y_s) * w), rx_s + (rx_h - rx_s) * w, ry_s + (ry_h - ry_s) * w
        )

    @cached_property
    def tibia(self) -> np.ndarray:
        """Plateau surface intersected with the outline, plus the tuberosity."""
        k, X, Y, Z = self.k, self.X, self.Y, self.Z
        head = smax(self.tibia_outline, Z - self.plateau_height, 1.5)
        (_, y_h, _, ry_h), (_, y_s, _, ry_s) = k.tibia_outline, k.tibia_shaft
        tx, tz, bump = k.tuberosity
        y_front = y_s + ry_s + 0.4 * (y_h + ry_h - y_s - ry_s)
        tub = ellipsoid_sdf(X - tx, Y - (y_front - 4.0), Z - tz, 10.0 * k.size, 4.0 + bump, 12.0 * k.size)
        return smin(head, tub, 3.0)

    @cached_property
    def tibial_thickness(self) -> np.ndarray:
        """Local tibial cartilage thickness: tapered over each compartment's articular ellipse, zero on the spines."""
        k, X, Y = self.k, self.X, self.Y
        t = 0.0
        for pl in k.plateaus:
            rho = np.sqrt(((X - pl.x) / pl.a) ** 2 + ((Y - pl.y) / pl.b) ** 2)
            t = t + pl.thickness * taper(rho, 0.7, 1.0)
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
        head = ellipsoid_sdf(self.X - x, self.Y - y, self.Z - z, r, r, 1.3 * r)
        shaft = capsule_sdf(self.X, self.Y, self.Z, (x, y, z), (x, y + 3.0, z - 200.0), 0.7 * r)
        return smin(head, shaft, 4.0)

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
            top = pl.meniscus_height * smoothstep((rho - inner) / (0.97 - inner))
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
        return blob_sdf(dx, dy + ridge, dz, self.k.patella[3], self.k.patella[4], rz)

    @cached_property
    def patellar_thickness(self) -> np.ndarray:
        """Thick cartilage on the posterior (femur-facing) surface of the patella only."""
        dx, dy, dz, rz = self._patella_offsets
        psi = np.arctan2(dz / rz, -dy / self.k.patella[4])  # 0 posterior
        cover = window(psi, math.radians(-55.0), math.radians(55.0), math.radians(20.0))
        t = self.k.patella_thickness * cover * taper(np.abs(dx) / self.k.patella[3], 0.6, 0.9)
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
        return ellipsoid_sdf(self.X - x_h, self.Y - y_h, self.Z - z_mid, rx_h + 6.0, ry_h + 8.0, 32.0 * k.size)

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
