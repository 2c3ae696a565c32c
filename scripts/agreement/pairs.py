"""Reading two measurement CSVs of `scripts.quantify` and pairing their rows by scan and compartment."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# the columns pairing needs; the measures compared are checked separately (a CSV trimmed in a spreadsheet may lack
# the ones not asked for)
_REQUIRED = ("scan", "compartment", "flags")


class AgreementError(ValueError):
    """Input that cannot be compared: named file, column or scans, and what to do."""


@dataclass(frozen=True)
class MeasurementPair:
    """One scan's compartment measured twice: on the automated and on the reference segmentation."""

    scan: str
    compartment: str
    automated: Mapping[str, float]  # measure -> value (NaN where not measured, e.g. the thickness of an empty mask)
    reference: Mapping[str, float]
    automated_flags: str
    reference_flags: str


def _number(text: str, column: str, where: str) -> float:
    if text is None or text.strip() == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise AgreementError(f"{where}: column {column} holds {text!r}, not a number") from None


def read_measurement_csv(path: str | Path, measures: Sequence[str]) -> dict[tuple[str, str], dict[str, str]]:
    """Rows of one quantify CSV keyed by (scan, compartment); an unreadable file, a missing column or a scan measured
    twice is an AgreementError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AgreementError(f"{path}: no such file (a CSV written by python -m scripts.quantify --output ...)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AgreementError(f"{path}: cannot be read as a UTF-8 CSV ({type(e).__name__}: {e})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in (*_REQUIRED, *measures) if c not in header]
    if missing:
        raise AgreementError(
            f"{path}: not a quantify measurement CSV with the measures asked for, columns {', '.join(missing)} are "
            f"missing (header: {', '.join(header) or 'none'})"
        )
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for row in reader:
        key = (row["scan"], row["compartment"])
        if key in rows:
            raise AgreementError(f"{path}: scan {key[0]} has two {key[1]} rows; measure each scan once")
        rows[key] = row
    if not rows:
        raise AgreementError(f"{path}: no rows under the header, so nothing to compare")
    return rows


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def pair_measurements(
    automated: str | Path,
    reference: str | Path,
    measures: Sequence[str],
    common_only: bool = False,
) -> list[MeasurementPair]:
    """Pairs of rows with the same scan and compartment, in the reference CSV's order.

    Scans measured on one side only are an error that lists them (a test set where some scans failed must not be
    summarised as if complete), unless `common_only`, which pairs the scans on both sides. A compartment measured on
    one side of a scan only (e.g. the medial/lateral split found in one segmentation) is left out.
    """
    auto_rows = read_measurement_csv(automated, measures)
    ref_rows = read_measurement_csv(reference, measures)
    auto_scans = list(dict.fromkeys(s for s, _ in auto_rows))
    ref_scans = list(dict.fromkeys(s for s, _ in ref_rows))
    only_auto = [s for s in auto_scans if s not in set(ref_scans)]
    only_ref = [s for s in ref_scans if s not in set(auto_scans)]
    if (only_auto or only_ref) and not common_only:
        parts = []
        if only_ref:
            parts.append(f"{len(only_ref)} scan(s) only in the reference {reference}: {_listed(only_ref)}")
        if only_auto:
            parts.append(f"{len(only_auto)} scan(s) only in the automated {automated}: {_listed(only_auto)}")
        raise AgreementError(
            "; ".join(parts) + ". Scan names must match (as python -m scripts.quantify writes them, from the file "
            "names); pass --common_only True to compare the scans found in both"
        )
    pairs = []
    for key, ref in ref_rows.items():
        auto = auto_rows.get(key)
        if auto is None:
            continue
        where_a, where_r = f"{automated} (scan {key[0]}, {key[1]})", f"{reference} (scan {key[0]}, {key[1]})"
        pairs.append(
            MeasurementPair(
                scan=key[0],
                compartment=key[1],
                automated={m: _number(auto[m], m, where_a) for m in measures},
                reference={m: _number(ref[m], m, where_r) for m in measures},
                automated_flags=auto["flags"],
                reference_flags=ref["flags"],
            )
        )
    if not pairs:
        raise AgreementError(f"{automated} and {reference} share no scan and compartment, so nothing to compare")
    return pairs
