"""Cartilage morphometry: thickness against shapes of known thickness, flags, the M/L split, the CSV, the CLI and the
inference-config step. Tiny arrays; the one real-anatomy test skips where ../shared is absent."""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor

from scripts.quantify import (
    CSV_COLUMNS,
    CartilageReportd,
    csv_text,
    infer_laterality,
    main,
    measure_file,
    measure_label_map,
    over_plate,
    split_plates,
    tibial_subregions,
)
from scripts.thickness import local_thickness, weighted_quantile

SPACINGS = [(0.7, 0.3646, 0.3646), (1.5, 0.3125, 0.3125)]
REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------------
# synthetic shapes
# ---------------------------------------------------------------------------------------------------------------------
def _grid_mm(shape, spacing):
    """World coordinates (mm) of voxel centres, shape (*shape, 3)."""
    return np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), axis=-1)


def _slab(spacing, thickness, normal, extent=24.0, seed=0):
    """Voxel-centre digitised slab |n.(x - c)| <= T/2 and a weight mask that keeps away from its cut rims."""
    shape = tuple(int(extent / s) for s in spacing)
    xyz = _grid_mm(shape, spacing)
    centre = xyz.reshape(-1, 3).mean(0) + np.random.default_rng(seed).uniform(-0.5, 0.5, 3)
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    mask = np.abs((xyz - centre) @ n) <= thickness / 2
    interior = np.all(np.abs(xyz - centre) < extent / 2 - 4.0, axis=-1)
    return mask, interior


def _shell(spacing, thickness, kind, radius=14.0, seed=0):
    """Spherical shell, or cylindrical shell around axis 0 (normals in the sagittal plane, as for cartilage)."""
    extent = 2 * radius + thickness + 6
    shape = tuple(int(extent / s) for s in spacing)
    xyz = _grid_mm(shape, spacing)
    centre = xyz.reshape(-1, 3).mean(0) + np.random.default_rng(seed).uniform(-0.5, 0.5, 3)
    offset = xyz - centre
    if kind == "cylinder":
        offset = offset[..., 1:]
    return np.abs(np.linalg.norm(offset, axis=-1) - radius) <= thickness / 2


def _surface_mean(result, keep=None):
    w = result.surface_weight if keep is None else np.where(keep, result.surface_weight, 0)
    return float(np.average(result.thickness[w > 0], weights=w[w > 0]))


def _affine(spacing, origin=(60.0, -40.0, -30.0), flip_x=False):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    if flip_x:
        a[0, 0] = -spacing[0]
    return a


def _knee(shape=(44, 60, 56), medial_low_index=True):
    """Toy knee in the bundle's classes: a femoral block over two tibial plates separated along axis 0 (left-right).
    The plate at low axis-0 index is made larger so that it can be recognised after the split."""
    labels = np.zeros(shape, np.uint8)
    labels[4:40, 8:52, 36:42] = 1  # femoral cartilage, 6 voxels thick
    big, small = (slice(3, 19), slice(26, 38)) if medial_low_index else (slice(26, 42), slice(6, 18))
    labels[big, 10:50, 20:26] = 2
    labels[small, 14:46, 20:26] = 2
    return labels


# ---------------------------------------------------------------------------------------------------------------------
# thickness against known truth
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("n_voxels", [4, 7])
def test_axis_aligned_slab_exact(spacing, axis, n_voxels):
    """A slab n voxels thick along an axis is n * spacing thick: the 0.5-level surface is halfway between centres."""
    shape = [int(20 / s) for s in spacing]
    mask = np.zeros(shape, bool)
    index = [slice(None)] * 3
    index[axis] = slice(shape[axis] // 2, shape[axis] // 2 + n_voxels)
    mask[tuple(index)] = True
    result = local_thickness(mask, spacing)
    interior = np.zeros(shape, bool)
    inner = [slice(s // 4, 3 * s // 4) for s in shape]
    interior[tuple(inner)] = True
    assert _surface_mean(result, interior) == pytest.approx(n_voxels * spacing[axis], abs=0.02)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("thickness", [1.5, 2.5, 3.5])
def test_oblique_slab_within_half_voxel(spacing, thickness):
    """Oblique slabs (normals in the sagittal plane and tilted out of it): mean within half the largest voxel."""
    rng = np.random.default_rng(int(thickness * 10))
    errors = []
    for k, normal in enumerate([(0.0, 1.0, 1.0), (0.3, 1.0, 0.4), (0.5, 0.2, 1.0)]):
        mask, interior = _slab(spacing, thickness, normal, seed=int(rng.integers(1000)) + k)
        errors.append(_surface_mean(local_thickness(mask, spacing), interior) - thickness)
    assert max(abs(e) for e in errors) <= 0.5 * max(spacing), errors


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("kind", ["cylinder", "sphere"])
@pytest.mark.parametrize("thickness", [1.5, 3.5])
def test_curved_shell(spacing, kind, thickness):
    """Curved shells (all surface orientations): mean and median within a quarter of the largest voxel, and the
    area-weighted summaries do not depend on which axis is coarse."""
    mask = _shell(spacing, thickness, kind)
    result = local_thickness(mask, spacing)
    values, weights = result.thickness[result.surface_weight > 0], result.surface_weight[result.surface_weight > 0]
    assert np.average(values, weights=weights) == pytest.approx(thickness, abs=0.25 * max(spacing))
    assert weighted_quantile(values, weights, 0.5) == pytest.approx(thickness, abs=0.25 * max(spacing))


def test_sphere_surface_area():
    """Surface area (both faces of a spherical shell) within 3 % of 4 pi (Ro^2 + Ri^2): faces are not over-counted."""
    spacing, thickness, radius = SPACINGS[0], 2.5, 14.0
    area = local_thickness(_shell(spacing, thickness, "sphere", radius), spacing).surface_weight.sum()
    truth = 4 * math.pi * ((radius + thickness / 2) ** 2 + (radius - thickness / 2) ** 2)
    assert area == pytest.approx(truth, rel=0.03)


def test_thickness_independent_of_array_orientation():
    """Flipping and permuting the array (with its affine) does not change the numbers: no reorientation is needed."""
    labels = _knee()
    spacing = (0.7, 0.3646, 0.3646)
    base = measure_label_map(labels, _affine(spacing), scan="a").rows
    permuted = np.transpose(labels, (2, 1, 0))[::-1]
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    # new axis 0 = old axis 2 reversed, new axis 2 = old axis 0
    n0 = labels.shape[2]
    affine[:3, 0] = [0, 0, -spacing[2]]
    affine[:3, 1] = [0, spacing[1], 0]
    affine[:3, 2] = [spacing[0], 0, 0]
    affine[:3, 3] = _affine(spacing)[:3, 3] + [0, 0, (n0 - 1) * spacing[2]]
    other = measure_label_map(permuted, affine, scan="b").rows
    for r1, r2 in zip(base, other):
        assert r1.compartment == r2.compartment
        assert r1.volume_mm3 == pytest.approx(r2.volume_mm3)
        assert r1.thickness_mean_mm == pytest.approx(r2.thickness_mean_mm, abs=0.05)


# ---------------------------------------------------------------------------------------------------------------------
# volume and flags
# ---------------------------------------------------------------------------------------------------------------------
def test_volume_is_voxel_count_times_voxel_volume():
    labels = _knee()
    spacing = (0.7, 0.3646, 0.3646)
    rows = {r.compartment: r for r in measure_label_map(labels, _affine(spacing)).rows}
    vox = float(np.prod(spacing))
    assert rows["femoral"].volume_mm3 == pytest.approx((labels == 1).sum() * vox, rel=1e-9)
    assert rows["tibial"].volume_mm3 == pytest.approx((labels == 2).sum() * vox, rel=1e-9)
    assert rows["tibial_medial"].volume_mm3 + rows["tibial_lateral"].volume_mm3 == pytest.approx(
        rows["tibial"].volume_mm3
    )


def test_empty_compartment_is_flagged_not_silent():
    labels = _knee()
    labels[labels == 2] = 0
    rows = {r.compartment: r for r in measure_label_map(labels, _affine((0.7, 0.3646, 0.3646))).rows}
    assert rows["tibial"].volume_mm3 == 0
    assert math.isnan(rows["tibial"].thickness_mean_mm)
    assert "empty" in rows["tibial"].flags.split(";")
    assert "empty" in rows["tibial_medial"].flags.split(";")
    assert "empty" not in rows["femoral"].flags


def test_thick_over_7mm_flag():
    labels = np.zeros((30, 60, 60), np.uint8)
    labels[5:25, 10:50, 15:40] = 1  # 25 voxels * 0.3646 = 9.1 mm thick
    rows = {r.compartment: r for r in measure_label_map(labels, _affine((0.7, 0.3646, 0.3646))).rows}
    assert "thick_over_7mm" in rows["femoral"].flags
    assert rows["femoral"].thickness_p95_mm > 7


def test_fragmented_flag():
    labels = _knee()
    labels[20:24, :, :][labels[20:24] == 1] = 0  # cut the femoral block into two large pieces
    rows = {r.compartment: r for r in measure_label_map(labels, _affine((0.7, 0.3646, 0.3646))).rows}
    assert rows["femoral"].n_large_components == 2
    assert "fragmented" in rows["femoral"].flags
    assert "fragmented" not in rows["tibial"].flags  # two plates are the tibia's normal anatomy


def test_touches_border_flag():
    labels = _knee()
    labels[0, 10:50, 36:42] = 1
    rows = {r.compartment: r for r in measure_label_map(labels, _affine((0.7, 0.3646, 0.3646))).rows}
    assert "touches_border" in rows["femoral"].flags


def test_unknown_label_code_is_an_error():
    labels = _knee()
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match="does not know"):
        measure_label_map(labels, _affine((0.7, 0.3646, 0.3646)))


# ---------------------------------------------------------------------------------------------------------------------
# laterality and the medial / lateral split
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x0, expected", [(30.0, "right"), (-30.0, "left"), (5.0, "unknown"), (-5.0, "unknown")])
def test_laterality_from_ras_x(x0, expected):
    """RAS x grows toward the patient's right: a knee at +x is a right knee; near the midline we do not guess."""
    assert infer_laterality(x0, True)[0] == expected


def test_laterality_override_and_conflict():
    assert infer_laterality(30.0, True, "left") == ("left", "override", True)
    assert infer_laterality(30.0, True, "right") == ("right", "override", False)
    assert infer_laterality(30.0, False) == ("unknown", "none", False)


@pytest.mark.parametrize("knee", ["right", "left"])
def test_medial_lateral_split(knee):
    """Right knee (at +x): medial plate at low x. Left knee (mirrored affine, at -x): medial plate at high x. The
    array is the same, so in both cases the big plate (low index = low x right, high x left) must be medial."""
    spacing = (0.7, 0.3646, 0.3646)
    labels = _knee()
    if knee == "right":
        affine = _affine(spacing, origin=(60.0, -40.0, -30.0))
    else:
        affine = _affine(spacing, origin=(-60.0, -40.0, -30.0), flip_x=True)
    big = (labels[:22] == 2).sum() * np.prod(spacing)
    rows = {r.compartment: r for r in measure_label_map(labels, affine).rows}
    assert rows["femoral"].laterality == knee and rows["femoral"].laterality_source == "affine"
    assert rows["tibial_medial"].volume_mm3 == pytest.approx(big)
    assert rows["tibial_lateral"].volume_mm3 == pytest.approx(rows["tibial"].volume_mm3 - big)
    assert rows["tibial_medial"].ml_split == "anatomy"
    assert "ml_split_uncertain" not in rows["tibial_medial"].flags


def test_unknown_laterality_names_plates_not_sides():
    labels = _knee()
    rows = measure_label_map(labels, np.diag([0.7, 0.3646, 0.3646, 1.0]), has_geometry=False).rows
    names = [r.compartment for r in rows]
    assert names == ["femoral", "tibial", "tibial_plate_A", "tibial_plate_B"]
    assert all("laterality_unknown" in r.flags for r in rows)
    assert all(r.laterality == "unknown" for r in rows)


def test_split_plates_finds_the_gap():
    spacing = (0.7, 0.3646, 0.3646)
    affine = _affine(spacing)
    split = split_plates(_knee() == 2, affine)
    gap_x = affine[0, 3] + np.array([19, 25]) * spacing[0]  # plates end at index 18 and start at 26
    assert gap_x[0] <= split.split_x_mm <= gap_x[1]
    assert not split.uncertain and split.depth_ratio == 0


@pytest.mark.parametrize("slice_mm", [0.7, 1.5, 3.5, 5.0])
def test_split_plates_at_thick_sagittal_slices(slice_mm):
    """Clinical 2D scans have sagittal slices 3-5 mm apart: the empty 1-mm bins between slices must not be taken for
    the gap between the plates. Plates at world x 0-30 mm and 40-65 mm, sampled at the slice spacing."""
    centres = np.arange(0.0, 66.0, slice_mm)
    mask = np.zeros((len(centres), 40, 12), bool)
    mask[centres <= 30.0, 5:35, 4:8] = True
    mask[(centres >= 40.0) & (centres <= 65.0), 8:32, 4:8] = True
    split = split_plates(mask, _affine((slice_mm, 0.3125, 0.3125), origin=(0.0, 0.0, 0.0)))
    assert 30.0 - slice_mm / 2 <= split.split_x_mm <= 40.0 + slice_mm / 2
    assert not split.uncertain


def test_oaizib_cm_codes_used_and_anatomical_split_agrees():
    """OAIZIB-CM labels the plates (4 medial, 5 lateral): they are used directly, and the anatomical split (with the
    laterality from the affine) agrees with them on a synthetic right knee on every voxel."""
    spacing = (0.7, 0.3646, 0.3646)
    toy = _knee()
    labels = np.zeros_like(toy)
    labels[toy == 1] = 2  # femoral cartilage code in OAI-ZIB
    tibial = toy == 2
    labels[tibial & (np.arange(toy.shape[0]) < 22)[:, None, None]] = 4  # low x = medial on a right knee
    labels[tibial & (np.arange(toy.shape[0]) >= 22)[:, None, None]] = 5
    affine = _affine(spacing)
    coded = {r.compartment: r for r in measure_label_map(labels, affine, label_preset="oaizib-cm").rows}
    anatomical = {r.compartment: r for r in measure_label_map(toy, affine).rows}
    assert coded["tibial_medial"].ml_split == "labels"
    assert "ml_labels_disagree" not in coded["tibial_medial"].flags
    for side in ("tibial_medial", "tibial_lateral"):
        assert coded[side].volume_mm3 == pytest.approx(anatomical[side].volume_mm3)  # 100 % voxel agreement
    wrong = {r.compartment: r for r in measure_label_map(labels, affine, "x", "oaizib-cm", "left").rows}
    assert "ml_labels_disagree" in wrong["tibial_medial"].flags  # a wrong side is caught, not silently used


def _condyle_over_plate(shape=(6, 48, 48)):
    """A condyle seen from the side: a ring of cartilage (radius 10-12 voxels around (y, z) = (24, 28)) extruded along
    x, over a flat plate (z 12-13) from y 16 to 35. A column at |y - 24| < 10 meets the ring twice."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r = np.hypot(y - 24, z - 28)
    ring = (r >= 10) & (r <= 12)
    plate = (z >= 12) & (z <= 13) & (y >= 16) & (y <= 35)
    return ring, plate


def _lowest_runs_by_loop(mask, z_axis_up=True):
    """Reference for the lowest-run rule, a plain loop over columns of a (x, y, z) array."""
    out = np.zeros_like(mask)
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            col = mask[i, j] if z_axis_up else mask[i, j, ::-1]
            hits = np.flatnonzero(col)
            if hits.size == 0:
                continue
            k = hits[0]
            while k < col.size and col[k]:
                k += 1
            keep = np.zeros(col.size, bool)
            keep[hits[0] : k] = True
            out[i, j] = keep if z_axis_up else keep[::-1]
    return out


@pytest.mark.parametrize("flip_z", [False, True])
def test_weight_bearing_region_by_hand(flip_z):
    """Notch = the plate's 97.5 % quantile of y (240 voxels, 12 per y from 16 to 35: it falls on 35), posterior end =
    the condyle's 0.5 % quantile of y (the ring's 6 voxels at y = 12 hold it); kept: y in [35 - 0.6 x 23, 35] =
    [21.2, 35], and of that the lowest run per column only.
    The same in world space when the array's z axis runs downward."""
    ring, plate = _condyle_over_plate()
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    if flip_z:
        ring, plate = ring[..., ::-1], plate[..., ::-1]
        affine[2, 2], affine[2, 3] = -1.0, ring.shape[2] - 1.0  # world z = 47 - k: the same world positions
    y = np.arange(ring.shape[1])[None, :, None]
    expected = _lowest_runs_by_loop(ring & (y >= 21.2) & (y <= 35), z_axis_up=not flip_z)
    region = over_plate(ring, plate, affine)
    np.testing.assert_array_equal(region, expected)
    world = np.argwhere(region) @ affine[:3, :3].T + affine[:3, 3]
    twice = np.abs(world[:, 1] - 24) < 10  # columns that meet the ring twice keep its lower crossing only
    assert twice.any() and world[twice, 2].max() < 28
    assert region.any() and not (region & ~ring).any()


def test_weight_bearing_rows_with_split_femur():
    """Rows for both condyles' weight-bearing parts; each lies within its femoral half, and no plate means empty."""
    spacing = (0.7, 0.3646, 0.3646)
    labels = _knee()
    rows = {r.compartment: r for r in measure_label_map(labels, _affine(spacing), split_femur=True).rows}
    for side in ("medial", "lateral"):
        region, half = rows[f"femoral_{side}_weight_bearing"], rows[f"femoral_{side}"]
        assert 0 < region.volume_mm3 < half.volume_mm3
        assert region.ml_split == "anatomy" and not region.flags
    no_tibia = np.where(labels == 2, 0, labels)
    rows = {r.compartment: r for r in measure_label_map(no_tibia, _affine(spacing), split_femur=True).rows}
    assert all("empty" in rows[f"femoral_{side}_weight_bearing"].flags for side in ("medial", "lateral"))


SUBREGIONS = ("central", "anterior", "posterior", "interior", "exterior")


@pytest.mark.parametrize("flip_x", [False, True])
@pytest.mark.parametrize("medial_low_index", [True, False])
def test_tibial_subregions_partition_the_plate(flip_x, medial_low_index):
    """Five disjoint parts that make up the plate; the central ellipse holds 20 % of the footprint and sits at its
    centre; anterior / posterior lie in front of / behind it (RAS y), interior toward the other plate, whichever way
    the array runs and whichever side the plate is on."""
    spacing = (0.7, 0.3646, 0.3646)
    affine = _affine(spacing, flip_x=flip_x)
    tibial = _knee(medial_low_index=medial_low_index) == 2
    x_index = np.arange(tibial.shape[0])[:, None, None]
    low = tibial & (x_index < 22)
    for plate, other in ((low, tibial & ~low), (tibial & ~low, low)):
        parts = tibial_subregions(plate, other, affine)
        assert sorted(parts) == sorted(SUBREGIONS)
        stacked = np.stack([parts[name] for name in SUBREGIONS])
        assert (stacked.sum(0) == plate).all()  # disjoint, and together the plate
        world = {name: _world_of(parts[name], affine) for name in SUBREGIONS}
        columns = {name: {tuple(ij) for ij in np.argwhere(parts[name])[:, :2]} for name in SUBREGIONS}
        footprint = {tuple(ij) for ij in np.argwhere(plate)[:, :2]}
        assert 0.17 <= len(columns["central"]) / len(footprint) <= 0.25
        centre = _world_of(plate, affine).mean(axis=0)
        assert np.abs(world["central"].mean(axis=0)[:2] - centre[:2]).max() < 0.75
        assert (world["anterior"][:, 1] > centre[1]).all() and (world["posterior"][:, 1] < centre[1]).all()
        other_x = _world_of(other, affine)[:, 0].mean()
        toward = np.sign(other_x - centre[0])
        assert (toward * (world["interior"][:, 0] - centre[0]) > 0).all()
        assert (toward * (world["exterior"][:, 0] - centre[0]) < 0).all()
        assert all(parts[name].any() for name in SUBREGIONS)


def _world_of(mask, affine):
    ijk = np.argwhere(mask).astype(float)
    return ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def test_tibial_subregions_empty_without_the_other_plate():
    affine = _affine((0.7, 0.3646, 0.3646))
    tibial = _knee() == 2
    parts = tibial_subregions(tibial, np.zeros_like(tibial), affine)
    assert sorted(parts) == sorted(SUBREGIONS) and not any(p.any() for p in parts.values())


def _plates_in_any_layout(spacing, order, flips, size, gap, depth):
    """Two plates side by side along world x, stored with the array axes permuted and flipped; returns the plate
    masks in that layout, their affine, and the map back to the canonical (x, y, z) layout."""
    shape = (2 * size[0] + gap + 4, size[1] + 4, depth + 4)
    left = np.zeros(shape, bool)
    right = np.zeros(shape, bool)
    left[2 : 2 + size[0], 2 : 2 + size[1], 2 : 2 + depth] = True
    right[2 + size[0] + gap : 2 + 2 * size[0] + gap, 3 : 1 + size[1], 2 : 2 + depth] = True
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    stored = []
    for mask in (left, right):
        m = np.transpose(mask, order)
        for axis, flip in enumerate(flips):
            m = np.flip(m, axis) if flip else m
        stored.append(np.ascontiguousarray(m))
    for j, (k, flip) in enumerate(zip(order, flips)):
        affine[k, j] = -spacing[k] if flip else spacing[k]
        if flip:
            affine[k, 3] += (shape[k] - 1) * spacing[k]

    def back(m):
        for axis, flip in enumerate(flips):
            m = np.flip(m, axis) if flip else m
        return np.transpose(m, np.argsort(order))

    return stored, affine, back


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    spacing=st.tuples(*[st.sampled_from([0.3125, 0.3646, 0.7, 1.5])] * 3),
    order=st.permutations([0, 1, 2]),
    flips=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    size=st.tuples(st.integers(3, 14), st.integers(3, 14)),
    gap=st.integers(1, 6),
    depth=st.integers(1, 4),
)
def test_tibial_subregions_in_any_array_layout(spacing, order, flips, size, gap, depth):
    """Random plate sizes, voxel sizes, axis orders and flips: the five parts always make up the plate, lie where
    their names say (means), and are the same voxels however the array is laid out (ties of the regular grid
    included)."""
    stored, affine, back = _plates_in_any_layout(spacing, order, flips, size, gap, depth)
    canonical_affine = np.diag([*spacing, 1.0])
    plates = [back(m) for m in stored]
    for k in (0, 1):
        parts = tibial_subregions(stored[k], stored[1 - k], affine)
        assert (np.stack([parts[n] for n in SUBREGIONS]).sum(0) == stored[k]).all()
        canonical = tibial_subregions(plates[k], plates[1 - k], canonical_affine)
        disagree = sum(int((back(parts[n]) != canonical[n]).sum()) for n in SUBREGIONS)
        assert disagree == 0
        world = {n: _world_of(canonical[n], canonical_affine) for n in SUBREGIONS if canonical[n].any()}
        assert "central" in world
        if "anterior" in world and "posterior" in world:
            assert world["anterior"][:, 1].mean() > world["posterior"][:, 1].mean()
        if "interior" in world and "exterior" in world:
            other_x = _world_of(plates[1 - k], canonical_affine)[:, 0].mean()
            assert abs(world["interior"][:, 0].mean() - other_x) < abs(world["exterior"][:, 0].mean() - other_x)


def test_tibial_subregion_rows_with_split_tibia():
    """Ten more rows, named by side; their volumes add up to their plate's; a plate thicker in its middle reads
    thicker in the central subregion than at the rims (the pattern of real tibiae); no tibia: empty and flagged."""
    spacing = (0.7, 0.3646, 0.3646)
    labels = _knee()
    labels[7:15, 24:36, 26:29] = 2  # a thicker middle on the larger (medial) plate: 9 voxels instead of 6
    rows = {r.compartment: r for r in measure_label_map(labels, _affine(spacing), split_tibia=True).rows}
    names = [f"tibial_{side}_{name}" for side in ("medial", "lateral") for name in SUBREGIONS]
    assert list(rows)[4:] == names
    for side in ("medial", "lateral"):
        parts = [rows[f"tibial_{side}_{name}"] for name in SUBREGIONS]
        assert sum(r.volume_mm3 for r in parts) == pytest.approx(rows[f"tibial_{side}"].volume_mm3)
        assert all(r.volume_mm3 > 0 and not r.flags and r.ml_split == "anatomy" for r in parts)
    central = rows["tibial_medial_central"].thickness_mean_mm
    assert central > 2.6 and all(central > rows[f"tibial_medial_{name}"].thickness_mean_mm for name in SUBREGIONS[1:])
    no_tibia = np.where(labels == 2, 0, labels)
    rows = {r.compartment: r for r in measure_label_map(no_tibia, _affine(spacing), split_tibia=True).rows}
    assert all("empty" in rows[name].flags for name in names)


# ---------------------------------------------------------------------------------------------------------------------
# CSV, files, CLI, transform
# ---------------------------------------------------------------------------------------------------------------------
def test_csv_header_and_rows():
    rows = measure_label_map(_knee(), _affine((0.7, 0.3646, 0.3646)), scan="knee1").rows
    rows += measure_label_map(_knee(), _affine((0.7, 0.3646, 0.3646)), scan="knee2").rows
    table = list(csv.reader(csv_text(rows).splitlines()))
    assert tuple(table[0]) == CSV_COLUMNS
    assert len(table) == 1 + 2 * 4  # one row per scan and compartment
    for column in ("volume_mm3", "surface_area_mm2", "thickness_mean_mm", "thickness_p95_mm"):
        assert column in table[0]
    keys = [(r[0], r[1]) for r in table[1:]]
    assert len(set(keys)) == len(keys)
    assert all(len(r) == len(CSV_COLUMNS) for r in table)


def _write_nifti(path, labels, affine):
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), str(path))
    return path


def test_cli_end_to_end_and_overwrite_refusal(tmp_path):
    spacing = (0.7, 0.3646, 0.3646)
    a = _write_nifti(tmp_path / "a.nii.gz", _knee(), _affine(spacing))
    b = _write_nifti(tmp_path / "b.nii.gz", _knee(), _affine(spacing, origin=(-60.0, -40.0, -30.0), flip_x=True))
    out = tmp_path / "out" / "m.csv"
    argv = [str(a), str(b), "--output", str(out), "--thickness_dir", str(tmp_path / "maps")]
    argv += ["--png_dir", str(tmp_path / "png")]
    fire.Fire(main, command=argv)
    table = list(csv.DictReader(out.open()))
    assert [(r["scan"], r["compartment"]) for r in table][:2] == [("a", "femoral"), ("a", "tibial")]
    assert len(table) == 8
    assert {r["laterality"] for r in table} == {"right", "left"}
    assert (tmp_path / "png" / "a_overview.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="already exists; pass --overwrite True"):
        main(str(a), output=str(out))
    main(str(a), output=str(out), overwrite=True)
    assert len(list(csv.DictReader(out.open()))) == 4
    # a file named twice (on its own and through its folder's other spelling) is measured once
    main(str(a), str(tmp_path / "." / "a.nii.gz"), output=str(out), overwrite=True)
    assert [r["scan"] for r in csv.DictReader(out.open())] == ["a"] * 4


def test_thickness_map_has_input_geometry(tmp_path):
    affine = _affine((0.7, 0.3646, 0.3646))
    affine[:3, :3] = affine[:3, :3] @ np.array([[0.99, -0.14, 0], [0.14, 0.99, 0], [0, 0, 1]])  # oblique scan
    src = _write_nifti(tmp_path / "k.nii.gz", _knee(), affine)
    main(str(src), output=str(tmp_path / "m.csv"), thickness_dir=str(tmp_path))
    source, thickness = nib.load(str(src)), nib.load(str(tmp_path / "k_thickness.nii.gz"))
    assert thickness.shape == source.shape
    np.testing.assert_allclose(thickness.affine, source.affine, atol=1e-6)
    # the folder now holds a label map and its thickness map, as an inference output folder does: only the label map
    # is measured (a thickness map is not a label map and would fail as one)
    main(str(tmp_path), output=str(tmp_path / "again.csv"))
    assert {r["scan"] for r in csv.DictReader((tmp_path / "again.csv").open())} == {"k"}
    data = thickness.get_fdata()
    assert np.all(data[_knee() == 0] == 0) and np.all(data[_knee() > 0] > 0)


def test_measure_file_reads_metaimage(tmp_path):
    """OAI-ZIB ships .mhd masks: read through MONAI's ITK reader, geometry preserved."""
    itk = pytest.importorskip("itk")
    labels = _knee()
    image = itk.image_from_array(np.ascontiguousarray(np.transpose(labels, (2, 1, 0))))  # itk wants z, y, x
    image.SetSpacing([0.7, 0.3646, 0.3646])
    image.SetOrigin([-60.0, 40.0, -30.0])  # LPS: x = -60 is RAS +60, the patient's right
    itk.imwrite(image, str(tmp_path / "k.mhd"))
    _, m = measure_file(tmp_path / "k.mhd")
    rows = {r.compartment: r for r in m.rows}
    assert rows["femoral"].volume_mm3 == pytest.approx((labels == 1).sum() * 0.7 * 0.3646 * 0.3646, rel=1e-4)
    assert rows["femoral"].laterality == "right"


def test_cartilage_reportd_writes_outputs(tmp_path):
    affine = torch.as_tensor(_affine((0.7, 0.3646, 0.3646)))
    pred = MetaTensor(torch.as_tensor(_knee()[None].astype(np.float32)), affine=affine)
    pred.meta["filename_or_obj"] = str(tmp_path / "scans" / "knee7.nii.gz")
    image = MetaTensor(torch.rand(1, 8, 8, 8), affine=affine)  # another shape: blank background, no crash
    step = CartilageReportd(keys="pred", output_dir=str(tmp_path / "out"))
    data = {"pred": pred, "image": image}
    out = step(data)
    assert out["pred"] is pred and out["image"] is image
    assert len(out["measurements"]) == 4
    for name in ("knee7_thickness.nii.gz", "knee7_overview.png", "measurements.csv"):
        assert (tmp_path / "out" / name).is_file(), name
    thickness = nib.load(str(tmp_path / "out" / "knee7_thickness.nii.gz"))
    np.testing.assert_allclose(thickness.affine, affine.numpy(), atol=1e-6)
    assert thickness.shape == _knee().shape
    pred2 = pred.clone()
    pred2.meta["filename_or_obj"] = str(tmp_path / "scans" / "knee8.nii.gz")
    step({"pred": pred2})
    assert len(list(csv.DictReader((tmp_path / "out" / "measurements.csv").open()))) == 8
    with pytest.raises(FileExistsError):  # a new run does not clobber the previous run's CSV
        CartilageReportd(keys="pred", output_dir=str(tmp_path / "out"), write_png=False)({"pred": pred2})


def test_weight_bearing_regions_same_with_labelled_plates():
    """OAIZIB-CM labels its tibial plates; the condyles' regions still pair with the plate on their own side of the
    split, so they equal those of the same knee in plain classes."""
    toy = _knee()
    labels = np.zeros_like(toy)
    labels[toy == 1] = 2
    low_x = (np.arange(toy.shape[0]) < 22)[:, None, None]
    labels[(toy == 2) & low_x], labels[(toy == 2) & ~low_x] = 4, 5
    affine = _affine((0.7, 0.3646, 0.3646))
    coded = {r.compartment: r for r in measure_label_map(labels, affine, "k", "oaizib-cm", split_femur=True).rows}
    plain = {r.compartment: r for r in measure_label_map(toy, affine, "k", split_femur=True).rows}
    for side in ("medial", "lateral"):
        name = f"femoral_{side}_weight_bearing"
        assert coded[name].volume_mm3 == pytest.approx(plain[name].volume_mm3) and coded[name].volume_mm3 > 0


@pytest.mark.parametrize(
    "switch, n_rows, second_last",
    [("split_femur", 8, "femoral_medial_weight_bearing"), ("split_tibia", 14, "tibial_lateral_interior")],
)
def test_cartilage_reportd_split_switches(tmp_path, switch, n_rows, second_last):
    """The config keys split_femur and split_tibia reach the measurement: 8 rows per scan with the femoral halves and
    their weight-bearing parts, 14 with the tibial subregions, equal to measure_label_map's."""
    affine = _affine((0.7, 0.3646, 0.3646))
    pred = MetaTensor(torch.as_tensor(_knee()[None].astype(np.float32)), affine=torch.as_tensor(affine))
    pred.meta["filename_or_obj"] = str(tmp_path / "knee7.nii.gz")
    step = CartilageReportd(keys="pred", output_dir=str(tmp_path), write_png=False, **{switch: True})
    rows = step({"pred": pred})["measurements"]
    direct = measure_label_map(_knee(), affine, scan="knee7", **{switch: True}).rows
    assert [r["compartment"] for r in rows] == [r.compartment for r in direct]
    assert len(rows) == n_rows and rows[-2]["compartment"] == second_last
    assert [r["volume_mm3"] for r in rows] == pytest.approx([r.volume_mm3 for r in direct])


# ---------------------------------------------------------------------------------------------------------------------
# the command line on bad input: one `error: ...` paragraph naming the file, never a traceback or a lost file
# ---------------------------------------------------------------------------------------------------------------------
def _tiny_labels() -> np.ndarray:
    """8 x 32 x 32 map in the bundle's classes: a femoral and a tibial slab, 4 voxels thick."""
    labels = np.zeros((8, 32, 32), np.uint8)
    labels[1:7, 4:28, 20:24] = 1
    labels[1:7, 4:28, 10:14] = 2
    return labels


def _tiny_map(path, labels=None, dtype=np.uint8):
    affine = _affine((1.5, 0.5, 0.5), origin=(60.0, -10.0, -10.0))
    nib.save(nib.Nifti1Image(np.asarray(_tiny_labels() if labels is None else labels, dtype), affine), str(path))
    return path


def _bad_map(tmp_path, kind):
    """A label map that cannot be measured, and the words the failure must contain."""
    good = _tiny_map(tmp_path / "spare.nii.gz").read_bytes()
    labels = _tiny_labels().astype(np.float32)
    if kind == "truncated":
        (tmp_path / "bad.nii.gz").write_bytes(good[: len(good) // 2])
        return tmp_path / "bad.nii.gz", "the file is truncated"
    if kind == "gzip_named_nii":
        (tmp_path / "bad.nii").write_bytes(good)
        return tmp_path / "bad.nii", "gzip data but its name does not end in .gz"
    if kind == "mhd_without_raw":
        itk = pytest.importorskip("itk")
        itk.imwrite(itk.image_from_array(np.ascontiguousarray(_tiny_labels())), str(tmp_path / "bad.mhd"))
        (tmp_path / "bad.raw").unlink()
        return tmp_path / "bad.mhd", "its data file bad.raw"
    if kind == "2d":
        return _tiny_map(tmp_path / "bad.nii.gz", _tiny_labels()[4]), r"must be 3D .* \(2D\)"
    if kind == "4d":
        return _tiny_map(tmp_path / "bad.nii.gz", np.stack([_tiny_labels()] * 2, -1)), r"must be 3D .* \(4D\)"
    if kind == "nan":
        labels[0, 0, 0] = np.nan
        return _tiny_map(tmp_path / "bad.nii.gz", labels, np.float32), "contains NaN"
    labels[0, 0, 0] = 7  # "outside_preset"
    return _tiny_map(tmp_path / "bad.nii.gz", labels), r"holds values \[7\] that label_preset 'cartilage'"


def _rows(path):
    return list(csv.DictReader(path.open()))


@pytest.mark.parametrize(
    "kind", ["truncated", "gzip_named_nii", "mhd_without_raw", "2d", "4d", "nan", "outside_preset"]
)
def test_cli_bad_map_is_named_by_full_path_and_the_good_ones_are_measured(tmp_path, kind):
    good = _tiny_map(tmp_path / "good.nii.gz")
    bad, why = _bad_map(tmp_path, kind)
    out = tmp_path / "out" / "m.csv"
    with pytest.raises(SystemExit) as err:
        fire.Fire(main, command=[str(good), str(bad), "--output", str(out)])
    message = str(err.value.code)
    assert message.startswith("error: 1 of 2 label map(s) failed and were skipped (1 measured")
    assert re.search(rf"\n  (label map )?{re.escape(str(bad))}:? .*{why}", message), message
    assert {r["scan"] for r in _rows(out)} == {"good"} and len(_rows(out)) == 4  # the good map's rows are written
    failures = _rows(tmp_path / "out" / "m_failures.csv")
    assert [f["scan"] for f in failures] == [str(bad)] and re.search(why, failures[0]["error"])


def test_cli_all_maps_bad_writes_no_csv(tmp_path):
    bad, _ = _bad_map(tmp_path, "truncated")
    with pytest.raises(SystemExit, match=r"1 of 1 label map\(s\) failed .*\(0 measured, no CSV written\)"):
        main(str(bad), output=str(tmp_path / "m.csv"))
    assert not (tmp_path / "m.csv").exists() and (tmp_path / "m_failures.csv").is_file()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["{good}"], "^error: --output is required"),
        (["--output", "{out}"], "^error: no label maps given"),
        (["{empty}", "--output", "{out}"], "^error: folder .*empty holds no label maps"),
        (["{good}", "--output", "{out}", "--label_preset", "nope"], "^error: unknown label_preset 'nope'; choose one"),
        (["{good}", "--output", "{out}", "--laterality", "up"], "^error: laterality must be 'auto', 'left' or 'right'"),
        (["{tmp}/absent.nii.gz", "--output", "{out}"], "^error: label map .*absent.nii.gz does not exist$"),
        (["{good}", "--output", "{out}", "--overwrite", "maybe"], "^error: --overwrite maybe: 'overwrite' is a switch"),
        (["{good}", "--output", "{out}", "--split_femur", "2"], "^error: --split_femur 2: 'split_femur' is a switch"),
        (["{good}", "--output", "{out}", "--split_tibia", "3"], "^error: --split_tibia 3: .split_tibia. is a switch"),
        (["{good}", "--output", "{tmp}"], "^error: --output: .* is an existing folder, not a file name"),
    ],
)
def test_cli_argument_errors_are_one_paragraph(tmp_path, argv, expected):
    (tmp_path / "empty").mkdir()
    names = {"good": _tiny_map(tmp_path / "good.nii.gz"), "out": tmp_path / "m.csv", "empty": tmp_path / "empty"}
    with pytest.raises(SystemExit) as err:
        fire.Fire(main, command=[a.format(tmp=tmp_path, **names) for a in argv])
    assert re.search(expected, str(err.value.code)), err.value.code
    assert "\n" not in str(err.value.code) and not (tmp_path / "m.csv").exists()


def test_cli_never_writes_over_an_input(tmp_path):
    good = _tiny_map(tmp_path / "a.nii.gz")
    before = good.read_bytes()
    with pytest.raises(SystemExit, match="is one of the input label maps, .*not even with --overwrite True"):
        fire.Fire(main, command=[str(good), "--output", str(good), "--overwrite", "True"])
    # a thickness map named like another input (a -> a_thickness.nii.gz) is refused too, before anything is measured
    other = _tiny_map(tmp_path / "a_thickness.nii.gz")
    with pytest.raises(SystemExit, match=r"^error: --thickness_dir: .*a_thickness.nii.gz is one of the input"):
        main(str(good), str(other), output=str(tmp_path / "m.csv"), thickness_dir=str(tmp_path), overwrite=True)
    assert good.read_bytes() == before and not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize("flag", ["false", "False", "no", "0"])
def test_cli_lowercase_false_keeps_an_existing_csv(tmp_path, flag):
    good = _tiny_map(tmp_path / "a.nii.gz")
    out = tmp_path / "m.csv"
    out.write_text("earlier results\n")
    with pytest.raises(SystemExit, match=r"^error: --output: .*m.csv already exists; pass --overwrite True to"):
        fire.Fire(main, command=[str(good), "--output", str(out), "--overwrite", flag])
    assert out.read_text() == "earlier results\n"


def test_cli_true_spellings_overwrite_and_split_femur(tmp_path):
    good = _tiny_map(tmp_path / "a.nii.gz")
    out = tmp_path / "m.csv"
    out.write_text("earlier results\n")
    fire.Fire(main, command=[str(good), "--output", str(out), "--overwrite", "true", "--split_femur", "yes"])
    assert [r["compartment"] for r in _rows(out)][-4:] == [
        "femoral_medial",
        "femoral_lateral",
        "femoral_medial_weight_bearing",
        "femoral_lateral_weight_bearing",
    ]
    fire.Fire(main, command=[str(good), "--output", str(out), "--overwrite", "true", "--split_tibia", "True"])
    assert [r["compartment"] for r in _rows(out)][-5:] == [f"tibial_lateral_{name}" for name in SUBREGIONS]


def test_cli_subprocess_exit_code_and_no_traceback(tmp_path):
    good = _tiny_map(tmp_path / "good.nii.gz")
    bad, _ = _bad_map(tmp_path, "truncated")
    out = tmp_path / "m.csv"
    cmd = [sys.executable, "-m", "scripts.quantify", str(good), str(bad), "--output", str(out)]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=_env())
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"skipped a scan: {bad}: cannot be read: the gzip data ends early" in result.stderr  # the log line
    assert "error: 1 of 2 label map(s) failed and were skipped (1 measured" in result.stderr  # the summary
    assert len(_rows(out)) == 4


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


# ---------------------------------------------------------------------------------------------------------------------
# real anatomy
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.shared
def test_real_oai_map_femoral_thickness(oai_label_files):
    _, m = measure_file(oai_label_files[0], label_preset="oai-labels")
    rows = {r.compartment: r for r in m.rows}
    assert 1.0 <= rows["femoral"].thickness_mean_mm <= 3.5
    assert 1.0 <= rows["tibial"].thickness_mean_mm <= 3.5
    assert rows["femoral"].laterality in ("left", "right")
    assert "empty" not in rows["tibial_medial"].flags and "empty" not in rows["tibial_lateral"].flags
