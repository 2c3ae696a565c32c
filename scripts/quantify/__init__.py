"""Cartilage morphometry per compartment: volume, surface area and 3D thickness, with plausibility flags.

Segmentation is a means; knee osteoarthritis studies measure cartilage. This module turns a label map (the bundle's
prediction or any dataset's manual labels, via a label preset) into one CSV row per scan and compartment (femoral,
tibial, medial and lateral tibial cartilage), a thickness map NIfTI in the scan's own geometry and a PNG overview.
Numbers that cannot be trusted carry a flag instead of being silently 0 or NaN.

Thickness: `scripts.thickness` (the method, its validation on shapes of known thickness and its known bias).

Modules: `measure` (one label map -> compartment rows and flags), `outputs` (CSV, thickness map, PNG), `cli`
(`python -m scripts.quantify`, many files), `transform` (`CartilageReportd`, the inference config's step).
"""

from scripts.quantify.cli import main, measure_file
from scripts.quantify.measure import (
    CSV_COLUMNS,
    CompartmentRow,
    LabelMapError,
    LabelVolume,
    PlateSplit,
    ScanMeasurement,
    infer_laterality,
    load_label_map,
    measure_label_map,
    over_plate,
    split_plates,
    tibial_subregions,
)
from scripts.quantify.outputs import csv_cell, csv_text, write_csv, write_overview_png, write_thickness_map
from scripts.quantify.transform import CartilageReportd

__all__ = [
    "CSV_COLUMNS",
    "csv_cell",
    "csv_text",
    "CartilageReportd",
    "CompartmentRow",
    "LabelMapError",
    "LabelVolume",
    "PlateSplit",
    "ScanMeasurement",
    "infer_laterality",
    "load_label_map",
    "main",
    "measure_file",
    "measure_label_map",
    "over_plate",
    "split_plates",
    "tibial_subregions",
    "write_csv",
    "write_overview_png",
    "write_thickness_map",
]
