"""Cartilage change between visits of the same knee, from the measurement CSVs of `scripts.quantify`.

Knee osteoarthritis studies are longitudinal: the endpoint is cartilage loss over months or years, per compartment.
This module pairs each subject's follow-up visits with its baseline and writes one CSV row per subject, compartment
and follow-up visit (volume and thickness at both visits and their change), then summarises the change per
compartment and follow-up visit as such studies report it: mean ± sd, range, how many knees thinned, and the
standardised response mean (SRM = mean change / sd of change, the usual responsiveness figure for cartilage loss).

Pairs are never formed silently from what cannot be compared: a pair whose knees differ in laterality, whose voxel
sizes differ (another protocol: the change may be the protocol's), or where either visit's row carries a quantify flag
(empty, fragmented, ...) is written with a flag and left out of the summary, which says how many it left out.

    python -m scripts.longitudinal measurements.csv --output change.csv [--markdown change.md]
"""

from scripts.longitudinal.change import change_rows
from scripts.longitudinal.cli import main
from scripts.longitudinal.outputs import change_csv_text, summary_markdown
from scripts.longitudinal.read import DEFAULT_SCAN_PATTERN, read_measurements
from scripts.longitudinal.rows import CHANGE_COLUMNS, ChangeRow, LongitudinalError
from scripts.longitudinal.summary import summarise

__all__ = [
    "CHANGE_COLUMNS",
    "DEFAULT_SCAN_PATTERN",
    "ChangeRow",
    "LongitudinalError",
    "change_rows",
    "change_csv_text",
    "main",
    "read_measurements",
    "summarise",
    "summary_markdown",
]
