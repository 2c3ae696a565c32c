"""`python -m scripts.quantify LABELMAP... --output CSV`: measure many label maps; one bad file is reported in a
failures file and skipped, the rest are measured, and the exit code says that something failed."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scripts.batch import FailureLog, describe_failure
from scripts.checks import short_error
from scripts.cli import as_bool
from scripts.datalist import IMAGE_SUFFIXES, case_name
from scripts.labels import get_preset
from scripts.quantify.measure import (
    CompartmentRow,
    LabelVolume,
    ScanMeasurement,
    infer_laterality,
    load_label_map,
    measure_label_map,
)
from scripts.quantify.outputs import unique_name, write_csv, write_overview_png, write_thickness_map

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# file-level driver
# ----------------------------------------------------------------------------------------------------------------------
def measure_file(
    path: str | Path,
    label_preset: str = "cartilage",
    laterality: str = "auto",
    split_femur: bool = False,
    scan: str | None = None,
    split_tibia: bool = False,
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
        split_tibia=split_tibia,
    )
    return volume, measurement


def _is_thickness_map(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(f"_thickness{suffix}") for suffix in IMAGE_SUFFIXES)


def _expand_inputs(labelmaps: Iterable[object]) -> list[Path]:
    """Files as given, and the label maps inside any folder given (without the `<scan>_thickness.nii.gz` maps that
    inference and this command write beside them, so an inference output folder can be measured as it is). A missing
    path or a folder without label maps is a ValueError naming it: a typo must not end as a CSV with fewer scans than
    the user meant."""
    paths: list[Path] = []
    for item in labelmaps:
        path = Path(str(item))
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
            found = [p for p in images if not _is_thickness_map(p)]
            if len(found) < len(images):
                logger.info("%s: left out %d thickness map(s) (*_thickness.*)", path, len(images) - len(found))
            if not found:
                raise ValueError(f"folder {path} holds no label maps (files ending in {', '.join(IMAGE_SUFFIXES)})")
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
    names = [unique_name(case_name(p), used, p.parent.name) for p in paths]
    _check_outputs(_planned_outputs(output, names, thickness_dir, png_dir), paths, overwrite)
    return paths, names


@dataclass
class _RunOptions:
    """The CLI's per-map settings."""

    label_preset: str
    laterality: str
    split_femur: bool
    split_tibia: bool
    thickness_dir: str | None
    png_dir: str | None
    overwrite: bool


def _measure_one(path: Path, name: str, opts: _RunOptions) -> list[CompartmentRow]:
    """Measure one map and write its thickness map and PNG; returns its CSV rows."""
    volume, measurement = measure_file(
        path, opts.label_preset, opts.laterality, opts.split_femur, scan=name, split_tibia=opts.split_tibia
    )
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
    split_tibia: bool = False,
    overwrite: bool = False,
) -> str:
    """Measure cartilage volume, surface area and 3D thickness per compartment of label maps; write one CSV.

    One CSV row per scan and compartment (femoral, tibial, tibial_medial, tibial_lateral; tibial_plate_A/B when the
    knee's side is unknown), units in the column names, plausibility flags in `flags` (empty, thick_over_7mm,
    fragmented, touches_border, ml_split_uncertain, no_thickness, laterality_unknown, laterality_conflict,
    ml_labels_disagree). See docs/measurements.md for the method and its validation.

    Bad arguments stop the run before any map is read (`error: ...`, exit code 1; an unknown flag, exit code 2). A
    map that cannot be measured (unreadable, not 3D, NaN or codes outside the preset) is logged and listed in
    `<output stem>_failures.csv` beside the CSV; the other maps are measured and written, and the run ends with exit
    code 1 and one line per failure.

    Args:
        labelmaps: label map files (.nii, .nii.gz, .mhd, .mha, .nrrd) or folders of them.
        output: the CSV to write (required); an existing file is kept unless --overwrite True; never an input file.
        label_preset: codes of the maps: cartilage (0/1/2, the bundle's predictions), oai-zib, oaizib-cm (medial and
            lateral tibial codes used directly), oai-labels (the 0-9 OAI AKOA maps).
        laterality: auto (from the affine: RAS x of the cartilage centre > +20 mm = right knee, < -20 mm = left),
            left or right (override for all given maps).
        thickness_dir: if set, write <scan>_thickness.nii.gz there (same shape and affine as the label map).
        png_dir: if set, write <scan>_overview.png there (sagittal slices with overlays, thickness distribution).
        split_femur: also report femoral_medial / femoral_lateral (split at the tibial plane; includes the trochlea)
            and their weight-bearing parts, femoral_medial_weight_bearing / femoral_lateral_weight_bearing (a
            stand-in for the OAI's cMF / cLF from the label map's own landmarks; docs/measurements.md).
        split_tibia: also report the five subregions of each tibial plate, tibial_medial_central / _anterior /
            _posterior / _interior / _exterior and the same for lateral (a stand-in for the OAI's cMT, aMT, ...: a
            central ellipse of 20 % of the plate's area and four sectors around it; docs/measurements.md).
        overwrite: replace existing outputs (True/False; a lowercase false is read as False, not as a true text).

    Returns:
        The path of the CSV written.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        split_femur, overwrite = as_bool(split_femur, "split_femur"), as_bool(overwrite, "overwrite")
        split_tibia = as_bool(split_tibia, "split_tibia")
        paths, names = _check_arguments(labelmaps, output, label_preset, laterality, thickness_dir, png_dir, overwrite)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None  # one paragraph, not a traceback
    folders = (str(thickness_dir) if thickness_dir else None, str(png_dir) if png_dir else None)
    opts = _RunOptions(label_preset, laterality, split_femur, split_tibia, *folders, overwrite)
    target = Path(str(output))
    failures = FailureLog(str(target.parent), f"{target.stem}_failures.csv", overwrite)
    rows = _measure_all(paths, names, opts, failures)
    _write_rows(rows, str(output), overwrite)
    _finish(failures, len(paths), str(output))
    return str(output)
