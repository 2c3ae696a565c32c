"""`CartilageReportd`: the inference config's measurement step, so every inferred scan gets its numbers and maps."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np

from scripts.datalist import case_name
from scripts.io_utils import check_writable_target
from scripts.labels import get_preset
from scripts.quantify.measure import CompartmentRow, has_scanner_geometry, infer_laterality, measure_label_map
from scripts.quantify.outputs import unique_name, write_csv, write_overview_png, write_thickness_map

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
        split_femur: also measure the femoral halves and their weight-bearing parts (`measure_label_map`).
        split_tibia: also measure the five subregions of each tibial plate (`measure_label_map`).
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
        split_femur: bool = False,
        write_thickness_map: bool = True,
        write_png: bool = True,
        csv_name: str = "measurements.csv",
        overwrite: bool = False,
        rows_key: str = "measurements",
        expected_dice_key: str | None = "expected_dice",
        allow_missing_keys: bool = False,
        split_tibia: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.expected_dice_key = expected_dice_key
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.label_preset = get_preset(label_preset).name
        infer_laterality(0.0, False, laterality)  # validate early
        self.laterality = laterality
        self.split_femur = bool(split_femur)
        self.split_tibia = bool(split_tibia)
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
        name = unique_name(case_name(source) if source else f"scan{len(self._used_names)}", self._used_names)
        measurement = measure_label_map(
            labels,
            affine,
            scan=name,
            label_preset=self.label_preset,
            laterality=self.laterality,
            split_femur=self.split_femur,
            split_tibia=self.split_tibia,
            has_geometry=has_scanner_geometry(affine),
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
