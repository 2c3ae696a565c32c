"""Cartilage morphometry of one label map: compartments, laterality, tibial plate split, volume, area and thickness,
and the plausibility flags that replace numbers which cannot be trusted."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from scripts.checks import unreadable_reason
from scripts.labels import LabelPreset, check_label_values, get_preset
from scripts.thickness import ThicknessResult, local_thickness, thickness_stats

FEMORAL, TIBIAL = 1, 2
MAX_PLAUSIBLE_THICKNESS_MM = 7.0
THICK_AREA_FRACTION = 0.01  # flag when more than this share of the surface area is thicker than the limit
FRAGMENT_FRACTION = 0.05  # a connected piece holding at least this share of the compartment volume counts as large
WEIGHT_BEARING_FRACTION = 0.6  # cMF / cLF: from the notch back to 60 % of the way to the condyle's posterior end
CENTRAL_FRACTION = 0.2  # cMT / cLT: an ellipse holding 20 % of the plate's area (Wirth & Eckstein 2008)
TIBIAL_SUBREGIONS = ("central", "anterior", "posterior", "interior", "exterior")
LATERALITY_MARGIN_MM = 20.0  # |x| of the cartilage centroid below this: too close to the midline to tell the side
CROP_MARGIN = 3
_NIFTI_SUFFIXES = (".nii.gz", ".nii")

CSV_COLUMNS: tuple[str, ...] = (
    "scan",
    "compartment",
    "laterality",
    "laterality_source",
    "volume_mm3",
    "surface_area_mm2",
    "thickness_mean_mm",
    "thickness_sd_mm",
    "thickness_median_mm",
    "thickness_p95_mm",
    "thickness_max_mm",
    "n_components",
    "n_large_components",
    "voxel_size_mm",
    "ml_split",
    "flags",
    "expected_dice",
)


# ----------------------------------------------------------------------------------------------------------------------
# data containers
# ----------------------------------------------------------------------------------------------------------------------
class LabelMapError(ValueError):
    """A label map file that cannot be read; the message names the full path and says why."""


@dataclass
class LabelVolume:
    """A label map in its own voxel grid.

    Args:
        array: integer codes, 3D, in file order (no reorientation: results must not depend on it).
        affine: 4x4 voxel -> RAS world (mm), as nibabel and MONAI report it.
        source: file name or a description, for messages and the `scan` column.
        has_geometry: False when the file carries no scanner position (NIfTI q/sform codes 0, or an identity-like
            affine), so laterality cannot be read from it.
        nifti_header: the source NIfTI header, so a thickness map can copy its q/sform exactly.
    """

    array: np.ndarray
    affine: np.ndarray
    source: str
    has_geometry: bool = True
    nifti_header: object | None = None


@dataclass
class PlateSplit:
    """Two plates of one compartment separated along the world left-right axis (RAS x).

    Args:
        split_x_mm: world x (RAS mm) of the split plane; below it lies the patient's-left plate.
        uncertain: the LR profile has no clear gap between two plates (plates touch, or one plate is tiny).
        depth_ratio: profile at the split / smaller of the two plate peaks (0 = clean gap).
    """

    split_x_mm: float
    uncertain: bool
    depth_ratio: float


@dataclass
class CompartmentRow:
    """One CSV row; field order is the CSV column order, units are in the names."""

    scan: str
    compartment: str
    laterality: str
    laterality_source: str
    volume_mm3: float
    surface_area_mm2: float
    thickness_mean_mm: float
    thickness_sd_mm: float
    thickness_median_mm: float
    thickness_p95_mm: float
    thickness_max_mm: float
    n_components: int
    n_large_components: int
    voxel_size_mm: str
    ml_split: str
    flags: str
    expected_dice: str = ""  # of the prediction this row measures (scripts.confidence); empty for a given label map


@dataclass
class ScanMeasurement:
    """Everything measured on one scan: the CSV rows, the thickness map and the compartment label map."""

    rows: list[CompartmentRow]
    thickness_map: np.ndarray  # float32 mm, NaN where not measured (background); written with 0 there
    compartments: np.ndarray  # uint8 codes, see COMPARTMENT_CODES
    laterality: str
    laterality_source: str
    thickness_values: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # name -> (T, weight)


# codes of the compartment map used for the PNG overlay
COMPARTMENT_CODES = {"femoral": 1, "tibial_medial": 2, "tibial_lateral": 3, "tibial_plate_A": 2, "tibial_plate_B": 3}


# ----------------------------------------------------------------------------------------------------------------------
# geometry helpers
# ----------------------------------------------------------------------------------------------------------------------
def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) per array axis: the column norms of the affine, whatever the orientation."""
    return np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)


def voxel_volume(affine: np.ndarray) -> float:
    """Volume of one voxel (mm^3); |det| is right even for a sheared affine."""
    return float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3])))


def bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of `mask` grown by `margin` voxels, clipped to the array: EDTs then run on the cartilage only."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        slices.append(slice(max(hit[0] - margin, 0), min(hit[-1] + margin + 1, mask.shape[axis])))
    return tuple(slices)


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """World (RAS mm) coordinates of integer voxel indices (N, 3)."""
    a = np.asarray(affine, float)
    return ijk @ a[:3, :3].T + a[:3, 3]


def _components(mask: np.ndarray) -> np.ndarray:
    """Voxel counts of the 26-connected pieces of `mask`, largest first."""
    labelled, n = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros(0, int)
    return np.sort(np.bincount(labelled.ravel())[1:])[::-1]


# ----------------------------------------------------------------------------------------------------------------------
# laterality and the medial / lateral split
# ----------------------------------------------------------------------------------------------------------------------
def infer_laterality(
    centroid_x_mm: float, has_geometry: bool, override: str = "auto", margin_mm: float = LATERALITY_MARGIN_MM
) -> tuple[str, str, bool]:
    """Which knee this is: (laterality, source, conflict).

    RAS world x grows toward the patient's RIGHT (NIfTI/MONAI convention; DICOM's LPS x grows toward the left) and
    the scanner isocentre lies near the body midline, so cartilage centred at x > +margin is a right knee and at
    x < -margin a left knee. Closer to the midline, or with no scanner geometry, it is 'unknown', never a guess.
    An explicit `override` ('left'/'right') wins; `conflict` says the affine pointed the other way.
    """
    override = str(override).lower()
    if override not in ("auto", "left", "right"):
        raise ValueError(f"laterality must be 'auto', 'left' or 'right', got {override!r}")
    if not has_geometry:
        from_affine = "unknown"
    elif centroid_x_mm > margin_mm:
        from_affine = "right"
    elif centroid_x_mm < -margin_mm:
        from_affine = "left"
    else:
        from_affine = "unknown"
    if override != "auto":
        return override, "override", from_affine not in ("unknown", override)
    return from_affine, ("affine" if from_affine != "unknown" else "none"), False


def split_plates(mask: np.ndarray, affine: np.ndarray, bin_mm: float = 1.0) -> PlateSplit:
    """Split a two-plate compartment at the gap of its left-right (world x) profile.

    The medial and lateral tibial plates are separated by the intercondylar eminence, which carries no cartilage:
    the cartilage volume per mm of world x has two humps and a trough between them. The split plane is the deepest
    point of the (lightly smoothed) profile within its central 60 %, or the middle of an empty stretch there. The bins
    are at least as wide as the largest step of a voxel index along world x: with sagittal slices 3.5 mm apart, 1-mm
    bins between two slices would be empty, and such a trough inside a plate would be taken for the gap.
    """
    ijk = np.argwhere(mask)
    x = _world(affine, ijk)[:, 0]
    bin_mm = max(bin_mm, float(np.abs(np.asarray(affine, float)[0, :3]).max()))
    edges = np.arange(np.floor(x.min()), np.ceil(x.max()) + bin_mm, bin_mm)
    if len(edges) < 4:
        return PlateSplit(float(np.median(x)), True, 1.0)
    profile = np.convolve(np.histogram(x, edges)[0].astype(float), [0.25, 0.5, 0.25], mode="same")
    centres = 0.5 * (edges[:-1] + edges[1:])
    lo, hi = np.quantile(x, [0.2, 0.8])
    window = np.flatnonzero((centres >= lo) & (centres <= hi))
    if window.size == 0:
        return PlateSplit(float(np.median(x)), True, 1.0)
    k = window[np.argmin(profile[window])]
    run = _contiguous_run(window[profile[window] <= profile[k] + 1e-9], k)
    split = float(centres[run].mean())
    left_peak, right_peak = profile[: run[0] + 1].max(), profile[run[-1] :].max()
    depth = float(profile[k] / max(min(left_peak, right_peak), 1e-9))
    share = min((x < split).mean(), (x >= split).mean())
    return PlateSplit(split, bool(depth > 0.5 or share < 0.15), depth)


def _contiguous_run(indices: np.ndarray, k: int) -> np.ndarray:
    """The stretch of consecutive indices in `indices` that contains `k`."""
    pos = int(np.flatnonzero(indices == k)[0])
    start = pos
    while start > 0 and indices[start - 1] == indices[start] - 1:
        start -= 1
    stop = pos
    while stop < len(indices) - 1 and indices[stop + 1] == indices[stop] + 1:
        stop += 1
    return indices[start : stop + 1]


def _medial_is_low_x(laterality: str) -> bool | None:
    """Right knee: medial faces the other knee, i.e. the patient's left = low RAS x. Left knee: the reverse."""
    return {"right": True, "left": False}.get(laterality)


# ----------------------------------------------------------------------------------------------------------------------
# loading and remapping
# ----------------------------------------------------------------------------------------------------------------------
def has_scanner_geometry(affine: np.ndarray) -> bool:
    """An origin exactly at 0 with no rotation is what readers invent when a file has no position: no laterality."""
    a = np.asarray(affine, float)
    return not (np.allclose(a[:3, 3], 0) and np.allclose(a[:3, :3], np.diag(np.diag(a[:3, :3]))))


def load_label_map(path: str | Path) -> LabelVolume:
    """Read a label map: nibabel for NIfTI (keeps the header for the thickness map), MONAI's ITK reader for MetaImage
    and NRRD (affine converted to RAS, array in the same index order as the affine). A reader failure becomes a
    LabelMapError that names the file and the reason (truncated gzip, missing .raw, ...), not the reader's traceback."""
    path = Path(path)
    try:
        return _read_label_map(path)
    except Exception as e:  # noqa: BLE001 - any reader failure means "cannot be read", reported with its cause
        raise LabelMapError(f"{path}: {unreadable_reason(path, e)}") from e


def _read_label_map(path: Path) -> LabelVolume:
    if path.name.lower().endswith(_NIFTI_SUFFIXES):
        import nibabel as nib

        img = nib.load(str(path))
        header = img.header
        coded = int(header["sform_code"]) > 0 or int(header["qform_code"]) > 0
        array = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, float)
        return LabelVolume(array, affine, str(path), coded and has_scanner_geometry(affine), header)
    from monai.transforms import LoadImage

    image = LoadImage(reader="ITKReader", image_only=True)(str(path))
    affine = np.asarray(image.affine, float)
    return LabelVolume(np.asarray(image), affine, str(path), has_scanner_geometry(affine))


def _present_codes(array: np.ndarray) -> np.ndarray:
    """Codes present in the map; a bincount for integer maps (a sort of 20 M voxels takes seconds)."""
    if np.issubdtype(array.dtype, np.integer) and array.size and array.min() >= 0 and array.max() < 2**16:
        return np.flatnonzero(np.bincount(array.ravel()))
    return np.unique(array)


def _remap(array: np.ndarray, preset: LabelPreset, source: str) -> np.ndarray:
    """Class map (uint8: 0, 1 femoral, 2 tibial) after checking that every code is known to the preset."""
    codes = _present_codes(array)
    check_label_values(codes, preset, source)  # non-integer, non-finite or unknown codes: an error naming the file
    lut = np.zeros(int(max(codes.max(initial=0), max(preset.known_codes))) + 1, np.uint8)
    for code, cls in preset.to_class.items():
        lut[code] = cls
    return lut[array if np.issubdtype(array.dtype, np.integer) else np.rint(array).astype(np.int64)]


def _ml_codes(preset: LabelPreset) -> tuple[int, int] | None:
    """(medial, lateral) tibial codes when the preset labels the plates itself (OAIZIB-CM: 4 and 5)."""
    by_name = {name: code for code, name in preset.tissues.items()}
    medial, lateral = by_name.get("medial tibial cartilage"), by_name.get("lateral tibial cartilage")
    return (medial, lateral) if medial is not None and lateral is not None else None


# ----------------------------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------------------------
def _class_thickness(classes: np.ndarray, cls: int, spacing: np.ndarray) -> tuple[tuple[slice, ...], ThicknessResult]:
    """Thickness of one tissue class on its bounding box (the other class counts as outside: contact = surface)."""
    mask = classes == cls
    box = bounding_box(mask, CROP_MARGIN)
    return box, local_thickness(mask[box], spacing)


def _touches_border(mask: np.ndarray, faces: Iterable[tuple[int, int]]) -> bool:
    """Cartilage on the image's outermost voxel layer (`faces`, in crop indices): the field of view may cut it, so
    its volume is a lower bound."""
    return any(np.take(mask, index, axis=axis).any() for axis, index in faces)


def _row(
    scan: str,
    name: str,
    mask: np.ndarray,
    thickness: np.ndarray,
    weights: np.ndarray,
    context: dict,
    expected_pieces: int,
    ml_split: str,
    extra_flags: Iterable[str] = (),
) -> tuple[CompartmentRow, tuple[np.ndarray, np.ndarray]]:
    """Measure one compartment and collect its flags."""
    flags = list(context["scan_flags"])
    n_vox = int(mask.sum())
    pieces = _components(mask)
    large = int((pieces >= FRAGMENT_FRACTION * max(n_vox, 1)).sum()) if n_vox else 0
    surf = mask & (weights > 0)
    values, w = thickness[surf], weights[surf]
    stats = thickness_stats(values, w)
    if n_vox == 0:
        flags.append("empty")
    else:
        if not np.isfinite(stats["mean"]):
            flags.append("no_thickness")
        elif w[values > MAX_PLAUSIBLE_THICKNESS_MM].sum() > THICK_AREA_FRACTION * w.sum():
            flags.append("thick_over_7mm")
        if large > expected_pieces:
            flags.append("fragmented")
        if _touches_border(mask, context["border"]):
            flags.append("touches_border")
    flags.extend(extra_flags)
    row = CompartmentRow(
        scan=scan,
        compartment=name,
        laterality=context["laterality"],
        laterality_source=context["laterality_source"],
        volume_mm3=n_vox * context["voxel_volume"],
        surface_area_mm2=float(w.sum()),
        thickness_mean_mm=stats["mean"],
        thickness_sd_mm=stats["sd"],
        thickness_median_mm=stats["median"],
        thickness_p95_mm=stats["p95"],
        thickness_max_mm=stats["max"],
        n_components=len(pieces),
        n_large_components=large,
        voxel_size_mm="x".join(f"{s:.4g}" for s in context["spacing"]),
        ml_split=ml_split,
        flags=";".join(dict.fromkeys(flags)),
    )
    return row, (values[np.isfinite(values)], w[np.isfinite(values)])


def measure_label_map(
    labels: np.ndarray,
    affine: np.ndarray,
    scan: str = "scan",
    label_preset: str = "cartilage",
    laterality: str = "auto",
    has_geometry: bool = True,
    split_femur: bool = False,
    source: str | None = None,
    split_tibia: bool = False,
) -> ScanMeasurement:
    """Measure femoral and tibial cartilage (and the medial / lateral tibial plates) of one label map.

    Args:
        labels: 3D label map in its file's voxel grid (a leading channel of size 1 is dropped).
        affine: 4x4 voxel -> RAS mm.
        scan: name for the `scan` column.
        label_preset: which codes the map uses (scripts.labels presets); unknown codes are an error.
        laterality: 'auto' (from the affine), 'left' or 'right' (override: scanner coordinates can be wrong).
        has_geometry: False if the affine is not a real scanner position (then laterality 'auto' gives 'unknown').
        split_femur: also report femoral_medial / femoral_lateral halves, split at the tibial plane (whole
            femoral cartilage including the trochlea), and their weight-bearing parts over the tibial plates
            (`femoral_medial_weight_bearing`, ...: see `over_plate`; a stand-in for the OAI's cMF / cLF).
        source: the file for error messages (default `scan`): a user with many maps needs the full path.
        split_tibia: also report the five subregions of each tibial plate (`tibial_medial_central`, ..._anterior,
            ..._posterior, ..._interior, ..._exterior: see `tibial_subregions`; a stand-in for the OAI's cMT etc.).

    Returns:
        ScanMeasurement: rows (one per compartment), the thickness map (NaN outside cartilage), compartment codes.
    """
    source = source or scan
    labels = np.asarray(labels)
    if labels.ndim == 4 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != 3:
        raise ValueError(
            f"{source}: a label map must be 3D (optionally 1 x D x H x W), got shape {labels.shape} ({labels.ndim}D)"
        )
    full_affine = np.asarray(affine, float)
    preset = get_preset(label_preset)
    full_classes = _remap(labels, preset, source)
    box = (
        bounding_box(full_classes > 0, CROP_MARGIN) if full_classes.any() else tuple(slice(0, n) for n in labels.shape)
    )
    classes, labels, affine = full_classes[box], labels[box], _crop_affine(full_affine, box)
    spacing = voxel_spacing(affine)
    thickness_map, weights = _thickness_maps(classes, spacing)
    femoral, tibial = classes == FEMORAL, classes == TIBIAL
    cart = femoral | tibial
    centroid_x = float(_world(affine, np.argwhere(cart)).mean(axis=0)[0]) if cart.any() else 0.0
    lat, lat_source, conflict = infer_laterality(centroid_x, has_geometry and bool(cart.any()), laterality)
    split = split_plates(tibial, affine) if tibial.sum() >= 2 else None
    ml_codes = _ml_codes(preset)
    plate_flags: list[str] = []
    if ml_codes is not None:
        plates = (labels == ml_codes[0], labels == ml_codes[1])
        ml_source = "labels"
        if lat == "unknown" and plates[0].any() and plates[1].any():
            lat, lat_source = _laterality_from_plates(affine, *plates), "labels"
        elif split is not None and lat != "unknown":
            if _split_agreement(_plate_masks(tibial, affine, split, lat)[0], plates[0], tibial) < 0.9:
                plate_flags.append("ml_labels_disagree")
    else:
        ml_source = "anatomy"
        plates = _plate_masks(tibial, affine, split, lat) if split is not None else (tibial & False,) * 2
        if tibial.any() and (split is None or split.uncertain):
            plate_flags.append("ml_split_uncertain")
    context = {
        "laterality": lat,
        "laterality_source": lat_source,
        "voxel_volume": voxel_volume(affine),
        "spacing": spacing,
        "scan_flags": (["laterality_unknown"] if lat == "unknown" else []) + (["laterality_conflict"] * conflict),
        "border": _border_faces(box, full_classes.shape),
    }
    sides = ("medial", "lateral") if lat != "unknown" else ("plate_A", "plate_B")
    on_plates = (plates[0] & tibial, plates[1] & tibial)
    compartments: list[tuple[str, np.ndarray, int, str, list[str]]] = [
        ("femoral", femoral, 1, "", []),
        ("tibial", tibial, 2, "", []),
        (f"tibial_{sides[0]}", on_plates[0], 1, ml_source, plate_flags),
        (f"tibial_{sides[1]}", on_plates[1], 1, ml_source, plate_flags),
    ]
    if split_femur:
        halves = _plate_masks(femoral, affine, split, lat) if split is not None else (femoral & False,) * 2
        femur_flags = ["ml_split_uncertain"] if femoral.any() and (split is None or split.uncertain) else []
        compartments += [(f"femoral_{sides[k]}", halves[k], 1, "anatomy", femur_flags) for k in (0, 1)]
        # each condyle over the tibial plate on its own side of the same split (labelled plates may name sides
        # that an unknown laterality cannot place)
        if ml_source == "anatomy":
            below = plates
        else:
            below = _plate_masks(tibial, affine, split, lat) if split is not None else (tibial & False,) * 2
        compartments += [
            (
                f"femoral_{sides[k]}_weight_bearing",
                over_plate(halves[k], below[k], affine),
                1,
                "anatomy",
                femur_flags,
            )
            for k in (0, 1)
        ]
    if split_tibia:
        for k in (0, 1):
            regions = tibial_subregions(on_plates[k], on_plates[1 - k], affine)
            compartments += [
                (f"tibial_{sides[k]}_{name}", regions[name], 1, ml_source, plate_flags) for name in TIBIAL_SUBREGIONS
            ]
    full_thickness = np.full(full_classes.shape, np.nan, np.float32)
    full_thickness[box] = thickness_map
    measurement = ScanMeasurement([], full_thickness, np.zeros(full_classes.shape, np.uint8), lat, lat_source)
    for name, mask, pieces, ml, extra in compartments:
        row, values = _row(scan, name, mask, thickness_map, weights, context, pieces, ml, extra)
        measurement.rows.append(row)
        measurement.thickness_values[name] = values
        if name in COMPARTMENT_CODES:
            measurement.compartments[box][mask] = COMPARTMENT_CODES[name]
    return measurement


def _crop_affine(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """Affine of a crop: the same axes, origin moved to the crop's first voxel (world coordinates stay exact)."""
    out = np.array(affine, float)
    out[:3, 3] = _world(affine, np.array([[s.start for s in box]]))[0]
    return out


def _border_faces(box: tuple[slice, ...], shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """(axis, index in the crop) of the crop faces that are faces of the whole image."""
    faces = []
    for axis, (sl, n) in enumerate(zip(box, shape)):
        if sl.start == 0:
            faces.append((axis, 0))
        if sl.stop == n:
            faces.append((axis, sl.stop - sl.start - 1))
    return faces


def _thickness_maps(classes: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(thickness map, surface-area weights) over the whole grid, each tissue class measured on its own crop."""
    thickness_map = np.full(classes.shape, np.nan, np.float32)
    weights = np.zeros(classes.shape, np.float32)
    for cls in (FEMORAL, TIBIAL):
        if (classes == cls).any():
            box, result = _class_thickness(classes, cls, spacing)
            inside = classes[box] == cls
            thickness_map[box][inside] = result.thickness[inside]
            weights[box][inside] = result.surface_weight[inside]
    return thickness_map, weights


def _plate_masks(
    mask: np.ndarray, affine: np.ndarray, split: PlateSplit, laterality: str
) -> tuple[np.ndarray, np.ndarray]:
    """(medial, lateral) parts of `mask` at the split plane; (low x, high x) = (plate A, plate B) if the side is
    unknown."""
    ijk = np.argwhere(mask)
    low = np.zeros(mask.shape, bool)
    low[tuple(ijk[_world(affine, ijk)[:, 0] < split.split_x_mm].T)] = True
    high = mask & ~low
    return (high, low) if _medial_is_low_x(laterality) is False else (low, high)


def over_plate(
    femoral_part: np.ndarray,
    plate: np.ndarray,
    affine: np.ndarray,
    fraction: float = WEIGHT_BEARING_FRACTION,
) -> np.ndarray:
    """The weight-bearing part of one femoral condyle's cartilage, a label-map stand-in for the OAI's cMF / cLF.

    The OAI's central femoral regions run from the trochlear notch back to 60 % of the distance between the notch
    and the posterior end of the condyle (Wirth & Eckstein 2008), on landmarks a reader sets by hand. Here, along the
    world anterior-posterior axis (RAS y): the notch is taken as the anterior end of the tibial plate below the
    condyle (its 97.5 % quantile of y: in the extended knee of a DESS scan the notch sits over the front of the
    plateau), the posterior end as the condyle cartilage's own (its 0.5 % quantile), and the part within `fraction`
    of that distance behind the notch is kept. Of it, per column along the scan axis closest to inferior-superior,
    only the lowest run of cartilage: a column that also meets the condyle's cartilage higher up (where it curls
    back) is not on the joint surface there.

    Why: thinning in knee OA shows first where the femur meets the tibia, and studies report it there, not over the
    whole femoral cartilage with trochlea and posterior condyle. The landmarks differ from a reader's, so values
    compare within this tool (across visits, scans, models), not one to one with published cMF / cLF.
    """
    out = np.zeros(femoral_part.shape, bool)
    if not femoral_part.any() or not plate.any():
        return out
    notch = float(np.quantile(_world(affine, np.argwhere(plate))[:, 1], 0.975))
    ijk = np.argwhere(femoral_part)
    y = _world(affine, ijk)[:, 1]
    posterior_end = float(np.quantile(y, 0.005))
    back = notch - fraction * max(notch - posterior_end, 0.0)
    out[tuple(ijk[(y >= back) & (y <= notch)].T)] = True
    return _lowest_run(out, affine)


def tibial_subregions(
    plate: np.ndarray,
    other_plate: np.ndarray,
    affine: np.ndarray,
    central_fraction: float = CENTRAL_FRACTION,
) -> dict[str, np.ndarray]:
    """The five subregions of one tibial plate, a label-map stand-in for the OAI's cMT / aMT / pMT / iMT / eMT.

    The OAI divides each tibial plate, seen from above, into a central ellipse holding 20 % of its area and four
    peripheral parts around it: anterior, posterior, interior (toward the intercondylar eminence) and exterior
    (Wirth & Eckstein 2008), on the subchondral bone area a reader outlines. Here the plate's cartilage footprint in
    the world transverse plane (RAS x, y; one cell per voxel step along each axis) stands for that area: the ellipse
    is centred on the footprint's centroid with axes in the ratio of its left-right and anterior-posterior extents
    (1st to 99th percentile) and scaled so that `central_fraction` of the footprint's cells lie inside; every other
    voxel goes to the peripheral part whose sector, between the ellipse frame's diagonals, it lies in. Interior is
    the side that faces `other_plate`, so no laterality is needed; without the other plate (or with an empty plate)
    all five are empty.

    Why: in knee OA the central, weight-bearing tibial cartilage thins first and most, and the whole plate averages
    that change with the rims. As for `over_plate`, the values compare within this tool, not one to one with a
    reader's subregions.
    """
    regions = {name: np.zeros(plate.shape, bool) for name in TIBIAL_SUBREGIONS}
    if not plate.any() or not other_plate.any():
        return regions
    ijk = np.argwhere(plate)
    xy = _world(affine, ijk)[:, :2]
    a = np.asarray(affine, float)
    cell = np.maximum(np.abs(a[:2, :3]).max(axis=1), 1e-6)  # the largest voxel step along world x and along y
    cells = np.unique(np.round((xy - xy[0]) / cell).astype(np.int64), axis=0)  # cells centred on voxel centres
    footprint = xy[0] + cells * cell
    centre = footprint.mean(axis=0)
    lo, hi = np.percentile(footprint, [1, 99], axis=0)
    half = np.maximum((hi - lo) / 2, cell)
    # rounded so that the ties of a regular grid (cells at equal radius, voxels on a sector diagonal) fall the same
    # way whatever the array's axis order, not by the last bit of a world coordinate
    radius = np.round(np.hypot(*((footprint - centre) / half).T), 9)
    scale = float(np.quantile(radius, central_fraction))
    u, v = np.round((xy - centre) / half, 9).T
    central = np.round(np.hypot(u, v), 9) <= scale
    other_x = float(_world(affine, np.argwhere(other_plate))[:, 0].mean())
    toward_other = np.sign(other_x - centre[0]) * u > 0
    along_ap = np.abs(v) >= np.abs(u)
    parts = {
        "central": central,
        "anterior": ~central & along_ap & (v > 0),  # RAS y grows toward anterior
        "posterior": ~central & along_ap & (v <= 0),
        "interior": ~central & ~along_ap & toward_other,
        "exterior": ~central & ~along_ap & ~toward_other,
    }
    for name, keep in parts.items():
        regions[name][tuple(ijk[keep].T)] = True
    return regions


def _lowest_run(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Per column along the array axis closest to world inferior-superior, the first run of `mask` from below."""
    a = np.asarray(affine, float)[:3, :3]
    axis = int(np.argmax(np.abs(a[2])))
    upward = a[2, axis] > 0  # index grows toward superior
    m = np.moveaxis(mask, axis, -1)
    if not upward:
        m = m[..., ::-1]
    started = np.cumsum(m, axis=-1, dtype=np.int32) > 0
    ended = np.cumsum(started & ~m, axis=-1, dtype=np.int32) > 0
    keep = m & ~ended
    if not upward:
        keep = keep[..., ::-1]
    return np.ascontiguousarray(np.moveaxis(keep, -1, axis))


def _split_agreement(anatomical_medial: np.ndarray, labelled_medial: np.ndarray, tibial: np.ndarray) -> float:
    """Share of tibial voxels on which the anatomical split and the labels' medial/lateral codes agree."""
    n = int(tibial.sum())
    return float(((anatomical_medial == labelled_medial) & tibial).sum() / n) if n else math.nan


def _laterality_from_plates(affine: np.ndarray, medial: np.ndarray, lateral: np.ndarray) -> str:
    """Side from labelled plates: medial plate at lower RAS x than the lateral one means a right knee."""
    mx = _world(affine, np.argwhere(medial))[:, 0].mean()
    lx = _world(affine, np.argwhere(lateral))[:, 0].mean()
    return "right" if mx < lx else "left"
