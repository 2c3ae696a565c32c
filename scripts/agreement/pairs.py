"""Reading two measurement CSVs and pairing their rows: quantify's (by scan and compartment) or, with other key
columns, e.g. the change CSVs of `scripts.longitudinal` (by subject, compartment and follow-up visit)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from scripts.csv_input import read_csv_rows

DEFAULT_KEYS = ("scan", "compartment")  # quantify's CSV; scripts.longitudinal's: subject,compartment,followup_visit
# every table groups by compartment, so it is a key column in any layout
_GROUP = "compartment"


class AgreementError(ValueError):
    """Input that cannot be compared: named file, column or scans, and what to do."""


@dataclass(frozen=True)
class MeasurementPair:
    """One scan's compartment (or one subject's change in it) measured twice: on the automated and on the reference
    segmentation. `scan` holds the key columns other than the compartment, joined by spaces."""

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


def check_keys(keys: Sequence[str]) -> tuple[str, ...]:
    """The key columns as a tuple: `compartment` among them (the tables group by it), each named once."""
    keys = tuple(keys)
    if _GROUP not in keys or len(set(keys)) < len(keys) or len(keys) < 2:
        raise AgreementError(
            f"--keys {','.join(keys)}: name the columns that identify a row, each once, compartment among them "
            "(quantify's CSV: scan,compartment; scripts.longitudinal's: subject,compartment,followup_visit)"
        )
    return keys


def _item(key: tuple[str, ...], keys: Sequence[str]) -> str:
    """The key without the compartment, for tables and messages: `9014797_00m`, or `9014797 72m`."""
    return " ".join(v for k, v in zip(keys, key) if k != _GROUP)


def read_measurement_csv(
    path: str | Path, measures: Sequence[str], keys: Sequence[str] = DEFAULT_KEYS
) -> dict[tuple[str, ...], dict[str, str]]:
    """Rows of one CSV keyed by the `keys` columns; an unreadable file, a missing column or a key found twice is an
    AgreementError naming the file."""
    kind = "a measurement CSV with the keys and measures asked for"
    table = read_csv_rows(path, (*keys, *measures), AgreementError, kind)
    rows: dict[tuple[str, ...], dict[str, str]] = {}
    for row in table:
        key = tuple(row[k] for k in keys)
        if key in rows:
            raise AgreementError(
                f"{path}: {_item(key, keys)} has two {row[_GROUP]} rows; measure each scan once, or name the key "
                f"columns that tell the rows apart (--keys, now {','.join(keys)})"
            )
        rows[key] = row
    return rows


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def pair_measurements(
    automated: str | Path,
    reference: str | Path,
    measures: Sequence[str],
    common_only: bool = False,
    keys: Sequence[str] = DEFAULT_KEYS,
) -> list[MeasurementPair]:
    """Pairs of rows with the same key (scan and compartment by default), in the reference CSV's order.

    Scans measured on one side only are an error that lists them (a test set where some scans failed must not be
    summarised as if complete), unless `common_only`, which pairs the scans on both sides. A compartment measured on
    one side of a scan only (e.g. the medial/lateral split found in one segmentation) is left out.
    """
    keys = check_keys(keys)
    what = "scan" if keys == DEFAULT_KEYS else "/".join(k for k in keys if k != _GROUP)
    auto_rows = read_measurement_csv(automated, measures, keys)
    ref_rows = read_measurement_csv(reference, measures, keys)
    auto_items = list(dict.fromkeys(_item(k, keys) for k in auto_rows))
    ref_items = list(dict.fromkeys(_item(k, keys) for k in ref_rows))
    only_auto = [s for s in auto_items if s not in set(ref_items)]
    only_ref = [s for s in ref_items if s not in set(auto_items)]
    if (only_auto or only_ref) and not common_only:
        parts = []
        if only_ref:
            parts.append(f"{len(only_ref)} {what}(s) only in the reference {reference}: {_listed(only_ref)}")
        if only_auto:
            parts.append(f"{len(only_auto)} {what}(s) only in the automated {automated}: {_listed(only_auto)}")
        raise AgreementError(
            "; ".join(parts) + ". Scan names must match (as python -m scripts.quantify writes them, from the file "
            "names); pass --common_only True to compare the scans found in both"
        )
    pairs = []
    for key, ref in ref_rows.items():
        auto = auto_rows.get(key)
        if auto is None:
            continue
        item, compartment = _item(key, keys), ref[_GROUP]
        where_a, where_r = f"{automated} ({item}, {compartment})", f"{reference} ({item}, {compartment})"
        pairs.append(
            MeasurementPair(
                scan=item,
                compartment=compartment,
                automated={m: _number(auto[m], m, where_a) for m in measures},
                reference={m: _number(ref[m], m, where_r) for m in measures},
                automated_flags=auto.get("flags") or "",
                reference_flags=ref.get("flags") or "",
            )
        )
    if not pairs:
        raise AgreementError(f"{automated} and {reference} share no {what} and compartment, so nothing to compare")
    return pairs
