"""Cartilage morphometry per compartment: volume, surface area and 3D thickness, with plausibility flags.

Segmentation is a means; knee osteoarthritis studies measure cartilage. This module turns a label map (the bundle's
prediction or any dataset's manual labels, via a label preset) into one CSV row per scan and compartment (femoral,
tibial, medial and lateral tibial cartilage), a thickness map NIfTI in the scan's own geometry and a PNG overview.
Numbers that cannot be trusted carry a flag instead of being silently 0 or NaN.

Thickness: `scripts.thickness` (the method, its validation on shapes of known thickness and its known bias).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from scripts.batch import FailureLog, describe_failure
from scripts.checks import short_error, unreadable_reason
from scripts.cli import as_bool
from scripts.datalist import IMAGE_SUFFIXES, case_name
from scripts.io_utils import atomic_path, check_writable_target
from scripts.labels import LabelPreset, check_label_values, get_preset
from scripts.thickness import ThicknessResult, local_thickness, thickness_stats

__all__ = [
    "CSV_COLUMNS",
    "csv_cell",
    "CartilageReportd",
    "CompartmentRow",
    "LabelMapError",
    "LabelVolume",
    "PlateSplit",
    "ScanMeasurement",
    "infer_laterality",
    "load_label_map",
    "main",
    "measure_label_map",
    "split_plates",
    "write_csv",
    "write_overview_png",
    "write_thickness_map",
]

logger = logging.getLogger(__name__)

FEMORAL, TIBIAL = 1, 2
MAX_PLAUSIBLE_THICKNESS_MM = 7.0
THICK_AREA_FRACTION = 0.01  # flag when more than this share of the surface area is thicker than the limit
FRAGMENT_FRACTION = 0.05  # a connected piece holding at least this share of the compartment volume counts as large
LATERALITY_MARGIN_MM = 20.0  # |x| of the cartilage centroid below this: too close to the midline to tell the side
CROP_MARGIN = 3
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_LABEL_SUFFIXES = IMAGE_SUFFIXES

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


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
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
    point of the (lightly smoothed) profile within its central 60 %, or the middle of an empty stretch there.
    """
    ijk = np.argwhere(mask)
    x = _world(affine, ijk)[:, 0]
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
def _has_scanner_geometry(affine: np.ndarray) -> bool:
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
        return LabelVolume(array, affine, str(path), coded and _has_scanner_geometry(affine), header)
    from monai.transforms import LoadImage

    image = LoadImage(reader="ITKReader", image_only=True)(str(path))
    affine = np.asarray(image.affine, float)
    return LabelVolume(np.asarray(image), affine, str(path), _has_scanner_geometry(affine))


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
    box = _bbox(mask, CROP_MARGIN)
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
            femoral cartilage including the trochlea: not the OAI's weight-bearing cMF/cLF subregions).
        source: the file for error messages (default `scan`): a user with many maps needs the full path.

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
    box = _bbox(full_classes > 0, CROP_MARGIN) if full_classes.any() else tuple(slice(0, n) for n in labels.shape)
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
    compartments: list[tuple[str, np.ndarray, int, str, list[str]]] = [
        ("femoral", femoral, 1, "", []),
        ("tibial", tibial, 2, "", []),
        (f"tibial_{sides[0]}", plates[0] & tibial, 1, ml_source, plate_flags),
        (f"tibial_{sides[1]}", plates[1] & tibial, 1, ml_source, plate_flags),
    ]
    if split_femur:
        halves = _plate_masks(femoral, affine, split, lat) if split is not None else (femoral & False,) * 2
        femur_flags = ["ml_split_uncertain"] if femoral.any() and (split is None or split.uncertain) else []
        compartments += [(f"femoral_{sides[k]}", halves[k], 1, "anatomy", femur_flags) for k in (0, 1)]
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


def _split_agreement(anatomical_medial: np.ndarray, labelled_medial: np.ndarray, tibial: np.ndarray) -> float:
    """Share of tibial voxels on which the anatomical split and the labels' medial/lateral codes agree."""
    n = int(tibial.sum())
    return float(((anatomical_medial == labelled_medial) & tibial).sum() / n) if n else math.nan


def _laterality_from_plates(affine: np.ndarray, medial: np.ndarray, lateral: np.ndarray) -> str:
    """Side from labelled plates: medial plate at lower RAS x than the lateral one means a right knee."""
    mx = _world(affine, np.argwhere(medial))[:, 0].mean()
    lx = _world(affine, np.argwhere(lateral))[:, 0].mean()
    return "right" if mx < lx else "left"


# ----------------------------------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------------------------------
def csv_cell(value: object) -> str:
    """CSV cell: floats with 4 decimals (mm is plenty), NaN as 'nan' (always next to a flag that explains it)."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def csv_text(rows: Sequence[CompartmentRow]) -> str:
    """The CSV document: a header with units in the column names, then one line per scan and compartment."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([csv_cell(v) for v in asdict(row).values()])
    return buffer.getvalue()


def write_csv(rows: Sequence[CompartmentRow], path: str | Path, overwrite: bool = False) -> Path:
    """Write the measurement CSV atomically; refuse to replace an existing file unless `overwrite`."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(csv_text(rows), encoding="utf-8")
    return Path(path)


def write_thickness_map(
    thickness: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    source_header: object | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the thickness map (float32 mm, 0 outside cartilage) as NIfTI with the label map's shape and affine, so
    it overlays the scan in ITK-SNAP / 3D Slicer. With a NIfTI source its q/sform (and their codes) are copied."""
    import nibabel as nib

    img = nib.Nifti1Image(np.nan_to_num(thickness, nan=0.0).astype(np.float32), np.asarray(affine, float))
    if source_header is not None and hasattr(source_header, "get_qform"):
        img.header.set_qform(source_header.get_qform(), code=int(source_header["qform_code"]))
        img.header.set_sform(source_header.get_sform(), code=int(source_header["sform_code"]))
    else:
        img.header.set_sform(np.asarray(affine, float), code=1)
        img.header.set_qform(np.asarray(affine, float), code=1)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"cartilage thickness (mm)"
    with atomic_path(path, overwrite) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


_OVERLAY_COLOURS = {1: (1.0, 0.55, 0.1), 2: (0.2, 0.5, 1.0), 3: (0.2, 0.85, 0.3)}


def _to_ras_axes(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip a volume to RAS axis order for display only (measurements never reorient); returns (volume,
    spacing) so that volume[i] is a sagittal slice with axes (anterior, superior)."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(np.asarray(affine, float))
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = voxel_spacing(affine)
    return nio.apply_orientation(volume, ornt), spacing


def _display_image(image: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Scan intensities scaled to 0-1 (1st-99th percentile), or a blank background if none matches the label grid."""
    if image is None:
        return np.zeros(shape, np.float32)
    image = np.asarray(image, np.float32)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.shape != tuple(shape):
        return np.zeros(shape, np.float32)
    lo, hi = np.percentile(image[:: max(1, image.shape[0] // 16)], [1, 99])
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)


def write_overview_png(
    path: str | Path,
    measurement: ScanMeasurement,
    affine: np.ndarray,
    image: np.ndarray | None = None,
    title: str = "",
    overwrite: bool = False,
    n_slices: int = 4,
) -> Path:
    """PNG for a quick visual check: sagittal slices with the compartments overlaid (top), the thickness map on the
    same slices (bottom) and the area-weighted thickness distribution per compartment (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comp, spacing = _to_ras_axes(measurement.compartments, affine)
    thick, _ = _to_ras_axes(measurement.thickness_map, affine)
    background, _ = _to_ras_axes(_display_image(image, measurement.compartments.shape), affine)
    fig, axes = plt.subplots(2, n_slices + 1, figsize=(2.6 * (n_slices + 1), 5.4), dpi=80, squeeze=False)
    if comp.any():
        box = _bbox(comp > 0, 0)
        pad_a, pad_s = (int(round(12 / spacing[k])) for k in (1, 2))
        a0, a1 = max(box[1].start - pad_a, 0), min(box[1].stop + pad_a, comp.shape[1])
        s0, s1 = max(box[2].start - pad_s, 0), min(box[2].stop + pad_s, comp.shape[2])
        xs = np.argwhere(comp > 0)[:, 0]
        picks = np.quantile(xs, np.linspace(0.15, 0.85, n_slices)).round().astype(int)
        vmax = max(4.0, float(np.nanpercentile(thick[comp > 0], 99)))
        for col, i in enumerate(picks):
            extent = (a0 * spacing[1], a1 * spacing[1], s0 * spacing[2], s1 * spacing[2])
            rgb = np.repeat(background[i, a0:a1, s0:s1].T[..., None], 3, axis=2)
            labels = comp[i, a0:a1, s0:s1].T
            for code, colour in _OVERLAY_COLOURS.items():
                rgb[labels == code] = 0.35 * rgb[labels == code] + 0.65 * np.array(colour)
            axes[0, col].imshow(rgb, origin="lower", extent=extent)
            tslice = np.where(labels > 0, thick[i, a0:a1, s0:s1].T, np.nan)
            axes[1, col].imshow(background[i, a0:a1, s0:s1].T, cmap="gray", origin="lower", extent=extent)
            shown = axes[1, col].imshow(tslice, cmap="viridis", vmin=0, vmax=vmax, origin="lower", extent=extent)
            axes[0, col].set_title(f"sagittal {i} (R-L index)", fontsize=8)
        fig.colorbar(shown, ax=axes[1, n_slices - 1], fraction=0.046, label="thickness (mm)")
    for ax in axes[:, :n_slices].ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1, 0].set_xlabel("anterior ->", fontsize=8)
    axes[1, 0].set_ylabel("superior ->", fontsize=8)
    _histogram(axes[0, n_slices], measurement)
    _summary_text(axes[1, n_slices], measurement)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, overwrite) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def _histogram(ax, measurement: ScanMeasurement) -> None:
    """Area-weighted thickness histograms per compartment."""
    bins = np.arange(0, 7.25, 0.25)
    for name, (values, weights) in measurement.thickness_values.items():
        if name in ("tibial",) or name.startswith("femoral_") or values.size == 0:
            continue
        colour = _OVERLAY_COLOURS.get(COMPARTMENT_CODES.get(name, 0), (0.4, 0.4, 0.4))
        hist_kw = {"bins": bins, "histtype": "step", "color": colour, "label": name}
        ax.hist(np.clip(values, 0, 7), weights=weights / weights.sum(), **hist_kw)
    ax.set_xlabel("thickness (mm)", fontsize=8)
    ax.set_ylabel("area fraction", fontsize=8)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=7)


def _summary_text(ax, measurement: ScanMeasurement) -> None:
    """Key numbers and flags as text, so the PNG alone tells whether the scan needs a look."""
    ax.axis("off")
    lines = [f"laterality: {measurement.laterality} ({measurement.laterality_source})"]
    for row in measurement.rows:
        lines.append(f"{row.compartment}: {row.volume_mm3:.0f} mm3, {row.thickness_mean_mm:.2f} mm")
        if row.flags:
            lines.append(f"   flags: {row.flags}")
    ax.text(0, 1, "\n".join(lines), va="top", fontsize=7, family="monospace", transform=ax.transAxes)


# ----------------------------------------------------------------------------------------------------------------------
# file-level driver (CLI) and the inference-config step
# ----------------------------------------------------------------------------------------------------------------------
def _unique_name(stem: str, used: set[str], parent: str = "") -> str:
    """Output names must not collide when two scans share a file name (e.g. case1/image, case2/image)."""
    name = stem
    if name in used and parent:
        name = f"{parent}_{stem}"
    base, k = name, 1
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def measure_file(
    path: str | Path,
    label_preset: str = "cartilage",
    laterality: str = "auto",
    split_femur: bool = False,
    scan: str | None = None,
) -> tuple[LabelVolume, ScanMeasurement]:
    """Load and measure one label map file."""
    volume = load_label_map(path)
    measurement = measure_label_map(
        volume.array,
        volume.affine,
        scan=scan or case_name(path),
        label_preset=label_preset,
        laterality=laterality,
        has_geometry=volume.has_geometry,
        split_femur=split_femur,
        source=str(path),
    )
    return volume, measurement


def _expand_inputs(labelmaps: Iterable[object]) -> list[Path]:
    """Files as given, and the label maps inside any folder given. A missing path or a folder without label maps is a
    ValueError naming it: a typo must not end as a CSV with fewer scans than the user meant."""
    paths: list[Path] = []
    for item in labelmaps:
        path = Path(str(item))
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.name.lower().endswith(_LABEL_SUFFIXES))
            if not found:
                raise ValueError(f"folder {path} holds no label maps (files ending in {', '.join(_LABEL_SUFFIXES)})")
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            raise ValueError(f"label map {path} does not exist")
    seen: dict[Path, Path] = {}  # a file named twice (on its own and inside a folder given) is measured once
    for path in paths:
        seen.setdefault(path.resolve(), path)
    if len(seen) < len(paths):
        logger.warning("%d label map(s) were given more than once; each is measured once", len(paths) - len(seen))
    return list(seen.values())


def _planned_outputs(
    output: str, names: Sequence[str], thickness_dir: str | None, png_dir: str | None
) -> list[tuple[str, Path]]:
    """(flag, file) of every file the run will write, so that all can be checked before hours of measuring."""
    targets = [("--output", Path(str(output)))]  # str(): Fire hands `--output 5` over as an int
    for name in names:
        if thickness_dir:
            targets.append(("--thickness_dir", Path(str(thickness_dir)) / f"{name}_thickness.nii.gz"))
        if png_dir:
            targets.append(("--png_dir", Path(str(png_dir)) / f"{name}_overview.png"))
    return targets


def _check_outputs(targets: Sequence[tuple[str, Path]], inputs: Sequence[Path], overwrite: bool) -> None:
    """Refuse to write over an input (even with overwrite), into a folder's name, or over an existing file unless
    `overwrite`; the message says which flag to change."""
    own = {p.resolve() for p in inputs}
    for flag, target in targets:
        if target.resolve() in own:
            raise ValueError(
                f"{flag}: {target} is one of the input label maps, and an input is never written over (not even with "
                "--overwrite True); choose another file or folder"
            )
        if target.is_dir():
            raise ValueError(f"{flag}: {target} is an existing folder, not a file name")
        if target.exists() and not overwrite:
            raise ValueError(f"{flag}: {target} already exists; pass --overwrite True to replace it")
    for flag, folder in {(f, t.parent) for f, t in targets if f != "--output"}:
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{flag}: {folder} is a file, not a folder")


def _check_arguments(
    labelmaps: Sequence[object],
    output: str | None,
    label_preset: str,
    laterality: str,
    thickness_dir: str | None,
    png_dir: str | None,
    overwrite: bool,
) -> tuple[list[Path], list[str]]:
    """Validate everything that does not need a label map read; return the input files and their output names."""
    if output is None:
        raise ValueError("--output is required: name the CSV to write, e.g. --output measurements.csv")
    if not labelmaps:
        raise ValueError("no label maps given: name label map files or folders before --output")
    get_preset(label_preset)
    infer_laterality(0.0, False, laterality)
    paths = _expand_inputs(labelmaps)
    used: set[str] = set()
    names = [_unique_name(case_name(p), used, p.parent.name) for p in paths]
    _check_outputs(_planned_outputs(output, names, thickness_dir, png_dir), paths, overwrite)
    return paths, names


@dataclass
class _RunOptions:
    """The CLI's per-map settings."""

    label_preset: str
    laterality: str
    split_femur: bool
    thickness_dir: str | None
    png_dir: str | None
    overwrite: bool


def _measure_one(path: Path, name: str, opts: _RunOptions) -> list[CompartmentRow]:
    """Measure one map and write its thickness map and PNG; returns its CSV rows."""
    volume, measurement = measure_file(path, opts.label_preset, opts.laterality, opts.split_femur, scan=name)
    if opts.thickness_dir:
        target = Path(opts.thickness_dir) / f"{name}_thickness.nii.gz"
        write_thickness_map(measurement.thickness_map, volume.affine, target, volume.nifti_header, opts.overwrite)
    if opts.png_dir:
        target = Path(opts.png_dir) / f"{name}_overview.png"
        write_overview_png(target, measurement, volume.affine, None, name, opts.overwrite)
    return measurement.rows


def _failure_message(exc: BaseException, path: Path) -> str:
    """Our own errors name the full path already (LabelMapError, the shape and label-code checks): keep them as they
    are; anything else is described by `scripts.batch.describe_failure`, as in batch inference."""
    text = " ".join(str(exc).split())
    return text if str(path) in text else describe_failure(exc, str(path))


def _measure_all(
    paths: Sequence[Path], names: Sequence[str], opts: _RunOptions, failures: FailureLog
) -> list[CompartmentRow]:
    """Measure every map; a map that fails is logged and listed in `failures`, and the others go on."""
    rows: list[CompartmentRow] = []
    start = time.time()
    for k, (path, name) in enumerate(zip(paths, names), 1):
        t0 = time.time()
        try:
            scan_rows = _measure_one(path, name, opts)
        except Exception as e:  # noqa: BLE001 - one bad map must not cost the measurements of the others
            failures.record(str(path), _failure_message(e, path))
            continue
        failures.succeeded += 1
        rows.extend(scan_rows)
        logger.info(
            "[%d/%d] %s: %.1f s (ETA %.0f s) %s",
            k,
            len(paths),
            name,
            time.time() - t0,
            (time.time() - start) / k * (len(paths) - k),
            "; ".join(f"{r.compartment} {r.thickness_mean_mm:.2f} mm" for r in scan_rows[:2]),
        )
    return rows


def _write_rows(rows: Sequence[CompartmentRow], output: str, overwrite: bool) -> None:
    """Write the CSV, if any map was measured (a run where all fail must not replace an earlier CSV with a header)."""
    if not rows:
        return
    try:
        write_csv(rows, output, overwrite)
    except OSError as e:  # e.g. the CSV appeared during the run, or the disk is full
        raise SystemExit(f"error: cannot write --output {output}: {short_error(e)}") from None


def _finish(failures: FailureLog, total: int, output: str) -> None:
    """Log success, or exit with code 1 and one line per failed map."""
    if not failures.failures:
        logger.info("all %d label map(s) measured; rows in %s", total, output)
        if (earlier := failures.output_dir / failures.file_name).exists():
            logger.warning("%s is from an earlier run (this run had no failures); it is kept as it was", earlier)
        return
    where = f"rows of the others in {output}" if failures.succeeded else "no CSV written"
    listed = "\n  ".join(message for _, message in failures.failures)
    raise SystemExit(
        f"error: {len(failures.failures)} of {total} label map(s) failed and were skipped ({failures.succeeded} "
        f"measured, {where}); the failures are listed in {failures.path}:\n  {listed}"
    )


def main(
    *labelmaps: str,
    output: str | None = None,
    label_preset: str = "cartilage",
    laterality: str = "auto",
    thickness_dir: str | None = None,
    png_dir: str | None = None,
    split_femur: bool = False,
    overwrite: bool = False,
) -> str:
    """Measure cartilage volume, surface area and 3D thickness per compartment of label maps; write one CSV.

    One CSV row per scan and compartment (femoral, tibial, tibial_medial, tibial_lateral; tibial_plate_A/B when the
    knee's side is unknown), units in the column names, plausibility flags in `flags` (empty, thick_over_7mm,
    fragmented, touches_border, ml_split_uncertain, no_thickness, laterality_unknown, laterality_conflict,
    ml_labels_disagree). See docs/measurements.md for the method and its validation.

    Bad arguments stop the run before any map is read (`error: ...`, exit code 1). A map that cannot be measured
    (unreadable, not 3D, NaN or codes outside the preset) is logged and listed in `<output stem>_failures.csv` beside
    the CSV; the other maps are measured and written, and the run ends with exit code 1 and one line per failure.

    Args:
        labelmaps: label map files (.nii, .nii.gz, .mhd, .mha, .nrrd) or folders of them.
        output: the CSV to write (required); an existing file is kept unless --overwrite True; never an input file.
        label_preset: codes of the maps: cartilage (0/1/2, the bundle's predictions), oai-zib, oaizib-cm (medial and
            lateral tibial codes used directly), oai-labels (the 0-9 OAI AKOA maps).
        laterality: auto (from the affine: RAS x of the cartilage centre > +20 mm = right knee, < -20 mm = left),
            left or right (override for all given maps).
        thickness_dir: if set, write <scan>_thickness.nii.gz there (same shape and affine as the label map).
        png_dir: if set, write <scan>_overview.png there (sagittal slices with overlays, thickness distribution).
        split_femur: also report femoral_medial / femoral_lateral (split at the tibial plane; includes the trochlea).
        overwrite: replace existing outputs (True/False; a lowercase false is read as False, not as a true text).

    Returns:
        The path of the CSV written.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        split_femur, overwrite = as_bool(split_femur, "split_femur"), as_bool(overwrite, "overwrite")
        paths, names = _check_arguments(labelmaps, output, label_preset, laterality, thickness_dir, png_dir, overwrite)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None  # one paragraph, not a traceback
    folders = (str(thickness_dir) if thickness_dir else None, str(png_dir) if png_dir else None)
    opts = _RunOptions(label_preset, laterality, split_femur, *folders, overwrite)
    target = Path(str(output))
    failures = FailureLog(str(target.parent), f"{target.stem}_failures.csv", overwrite)
    rows = _measure_all(paths, names, opts, failures)
    _write_rows(rows, str(output), overwrite)
    _finish(failures, len(paths), str(output))
    return str(output)


try:  # the transform needs MONAI; the measurement functions above do not
    from monai.transforms import MapTransform as _MapTransform
except ImportError:  # pragma: no cover
    _MapTransform = object  # type: ignore[misc,assignment]


class CartilageReportd(_MapTransform):
    """Inference-config step: measure each predicted label map and write its thickness map, overview PNG and the run's
    measurement CSV, so every inferred scan gets its numbers.

    Place it after `Invertd` (the label map must be in the scan's original geometry: its `.affine` and
    `meta['filename_or_obj']` are the scan's). The CSV is rewritten atomically after each scan with all rows of this
    run, so an interrupted run still leaves a complete CSV of the scans done. The data dict is returned unchanged but
    for the rows, added under `rows_key`.

    Args:
        keys: key of the label map (channel-first MetaTensor, 1 x D x H x W; C > 1 is taken as one-hot/probabilities
            and argmax-ed).
        output_dir: folder for `<scan>_thickness.nii.gz`, `<scan>_overview.png` and the CSV.
        image_key: key of the scan drawn under the overlays; if absent or of another shape, a blank background.
        label_preset: codes of the label map (the bundle predicts the 'cartilage' classes).
        laterality: 'auto', 'left' or 'right' (see `infer_laterality`).
        write_thickness_map: write the thickness NIfTI.
        write_png: write the overview PNG.
        csv_name: file name of the CSV in `output_dir`.
        overwrite: replace outputs that exist before this run (a rerun into the same folder otherwise stops).
        rows_key: key under which the scan's CSV rows (dicts) are added.
        expected_dice_key: key of `scripts.confidence.ExpectedDiced`'s per-class scores, written into each row of
            that class's compartments (`femoral*`, `tibial*`); the column stays empty where the key is absent.
        allow_missing_keys: don't raise if `keys` is absent.
    """

    def __init__(
        self,
        keys,
        output_dir: str,
        image_key: str | None = "image",
        label_preset: str = "cartilage",
        laterality: str = "auto",
        write_thickness_map: bool = True,
        write_png: bool = True,
        csv_name: str = "measurements.csv",
        overwrite: bool = False,
        rows_key: str = "measurements",
        expected_dice_key: str | None = "expected_dice",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.expected_dice_key = expected_dice_key
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.label_preset = get_preset(label_preset).name
        infer_laterality(0.0, False, laterality)  # validate early
        self.laterality = laterality
        self.write_thickness = write_thickness_map
        self.write_png = write_png
        self.csv_path = self.output_dir / csv_name
        self.overwrite = overwrite
        self.rows_key = rows_key
        self.rows: list[CompartmentRow] = []
        self._used_names: set[str] = set()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            scores = d.get(self.expected_dice_key) if self.expected_dice_key else None
            rows = self._report(d[key], d.get(self.image_key) if self.image_key else None, scores)
            d[self.rows_key] = [asdict(r) for r in rows]
        return d

    def _report(self, pred: object, image: object, scores: Mapping[str, float] | None = None) -> list[CompartmentRow]:
        """Measure one prediction and write its outputs."""
        labels, affine, source = _label_array_of(pred)
        if not self.rows:
            check_writable_target(self.csv_path, self.overwrite)  # a previous run's CSV: only with overwrite
        name = _unique_name(case_name(source) if source else f"scan{len(self._used_names)}", self._used_names)
        measurement = measure_label_map(
            labels,
            affine,
            scan=name,
            label_preset=self.label_preset,
            laterality=self.laterality,
            has_geometry=_has_scanner_geometry(affine),
            source=source or name,
        )
        for row in measurement.rows if scores else ():
            cls = row.compartment.split("_")[0]  # femoral_medial -> femoral, tibial_plate_A -> tibial
            if cls in scores:
                row.expected_dice = f"{float(scores[cls]):.4f}"
        if self.write_thickness:
            target = self.output_dir / f"{name}_thickness.nii.gz"
            write_thickness_map(measurement.thickness_map, affine, target, overwrite=self.overwrite)
        if self.write_png:
            img = _array_of(image) if image is not None else None
            target = self.output_dir / f"{name}_overview.png"
            write_overview_png(target, measurement, affine, img, name, overwrite=self.overwrite)
        self.rows.extend(measurement.rows)
        write_csv(self.rows, self.csv_path, overwrite=True)
        return measurement.rows


def _array_of(value: object) -> np.ndarray:
    """numpy array of a tensor or array (CPU copy)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _label_array_of(pred: object) -> tuple[np.ndarray, np.ndarray, str]:
    """(3D label array, RAS affine, source file name) of a channel-first MetaTensor (or array + identity affine)."""
    array = _array_of(pred)
    if array.ndim == 4:
        array = array[0] if array.shape[0] == 1 else np.argmax(array, axis=0)
    affine = getattr(pred, "affine", None)
    affine = np.eye(4) if affine is None else np.asarray(_array_of(affine), float)
    meta = getattr(pred, "meta", None) or {}
    if str(meta.get("space", "RAS")).upper() == "LPS":
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    source = meta.get("filename_or_obj") or ""
    return array, affine, str(source)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
