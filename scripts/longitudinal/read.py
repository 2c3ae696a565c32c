"""Reading quantify's measurement CSVs into visit rows, with scan names split into subject and visit."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from scripts.csv_input import read_csv_rows
from scripts.longitudinal.rows import LongitudinalError, VisitRow

# <subject>_<visit>, split at the last underscore: 9014797_00m -> (9014797, 00m), knee_07_V01 -> (knee_07, V01)
DEFAULT_SCAN_PATTERN = r"^(?P<subject>.+)_(?P<visit>[^_]+)$"


# the quantify columns this module needs; voxel_size_mm and expected_dice are used where present, the others may be
# absent (e.g. a CSV trimmed in a spreadsheet)
_REQUIRED = ("scan", "compartment", "laterality", "volume_mm3", "thickness_mean_mm", "thickness_median_mm", "flags")


# ----------------------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------------------
def _number(text: str, column: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise LongitudinalError(f"{where}: column {column} holds {text!r}, not a number") from None


def read_measurements(paths: Sequence[str | Path], scan_pattern: str = DEFAULT_SCAN_PATTERN) -> list[VisitRow]:
    """Rows of one or more quantify CSVs, each scan name split into subject and visit by `scan_pattern`."""
    try:
        pattern = re.compile(scan_pattern)
    except re.error as e:
        raise LongitudinalError(f"--scan_pattern {scan_pattern!r} is not a valid regular expression: {e}") from None
    if not {"subject", "visit"} <= set(pattern.groupindex):
        raise LongitudinalError(
            f"--scan_pattern {scan_pattern!r} needs the named groups (?P<subject>...) and (?P<visit>...)"
        )
    if not paths:
        raise LongitudinalError("no measurement CSV given: name the CSV(s) written by python -m scripts.quantify")
    rows: list[VisitRow] = []
    unmatched: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for path in map(Path, paths):
        for row in read_csv_rows(path, _REQUIRED, LongitudinalError, "a quantify measurement CSV"):
            where = f"{path} (scan {row['scan']}, {row['compartment']})"
            match = pattern.fullmatch(row["scan"])
            if match is None:
                unmatched.append(row["scan"])
                continue
            key = (row["scan"], row["compartment"])
            if key in seen:
                raise LongitudinalError(
                    f"scan {row['scan']} has two {row['compartment']} rows ({seen[key]} and {path}): measure each scan "
                    "once, or give each CSV once"
                )
            seen[key] = str(path)
            rows.append(
                VisitRow(
                    source=str(path),
                    scan=row["scan"],
                    subject=match["subject"],
                    visit=match["visit"],
                    compartment=row["compartment"],
                    laterality=row["laterality"],
                    volume_mm3=_number(row["volume_mm3"], "volume_mm3", where),
                    thickness_mean_mm=_number(row["thickness_mean_mm"], "thickness_mean_mm", where),
                    thickness_median_mm=_number(row["thickness_median_mm"], "thickness_median_mm", where),
                    voxel_size_mm=row.get("voxel_size_mm", ""),
                    flags=row["flags"],
                    expected_dice=_number(row.get("expected_dice") or "nan", "expected_dice", where),
                )
            )
    if unmatched:
        names = sorted(dict.fromkeys(unmatched))
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise LongitudinalError(
            f"{len(names)} scan name(s) do not match --scan_pattern {scan_pattern!r} (subject and visit): {shown}. "
            "Name scans <subject>_<visit> (e.g. 9014797_00m) or pass a --scan_pattern that fits your names"
        )
    return rows
