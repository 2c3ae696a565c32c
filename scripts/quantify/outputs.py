"""What a measurement writes: the CSV (one row per scan and compartment, units in the header), the thickness map
NIfTI in the scan's own geometry, and the PNG overview."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from scripts.io_utils import atomic_path
from scripts.quantify.measure import (
    COMPARTMENT_CODES,
    CSV_COLUMNS,
    CompartmentRow,
    ScanMeasurement,
    bounding_box,
    voxel_spacing,
)


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
        box = bounding_box(comp > 0, 0)
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
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    else:  # no cartilage found: say so on the plot instead of an empty legend (and matplotlib's warning)
        ax.text(0.5, 0.5, "no cartilage", ha="center", va="center", transform=ax.transAxes, fontsize=8)
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


def unique_name(stem: str, used: set[str], parent: str = "") -> str:
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
