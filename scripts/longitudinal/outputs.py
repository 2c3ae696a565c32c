"""The change rows as CSV, the summaries as markdown tables, and the summary in the log."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import astuple

from scripts.longitudinal.rows import CHANGE_COLUMNS, ChangeRow
from scripts.longitudinal.summary import CompartmentSummary
from scripts.quantify import csv_cell

logger = logging.getLogger(__name__)


_PAIR_TABLE_COMPARTMENTS = ("femoral", "tibial")


def change_csv_text(rows: Sequence[ChangeRow]) -> str:
    """The change CSV: units in the column names, one line per subject, compartment and follow-up visit."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CHANGE_COLUMNS)
    empty_if_nan = CHANGE_COLUMNS.index("expected_dice_min")  # like quantify's expected_dice: empty when not known
    for r in rows:
        cells = [csv_cell(v) for v in astuple(r)]
        cells[empty_if_nan] = "" if cells[empty_if_nan] == "nan" else cells[empty_if_nan]
        writer.writerow(cells)
    return buffer.getvalue()


def _signed(value: float, digits: int) -> str:
    return "nan" if math.isnan(value) else f"{value:+.{digits}f}"


def summary_markdown(rows: Sequence[ChangeRow], summary: Sequence[CompartmentSummary]) -> str:
    """Two Markdown tables: change per compartment, then femoral and tibial values per subject and follow-up."""
    lines = [
        "Change = follow-up - baseline over pairs without flags, mean ± sd [range]; SRM = mean / sd of the change.",
        "",
        "| compartment | follow-up | pairs | flagged | change in mean thickness (mm) | thinned | SRM | "
        "change in volume | lost volume |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        thickness = (
            f"{_signed(s.thickness_change_mean_mm, 2)} ± {s.thickness_change_sd_mm:.2f} "
            f"[{_signed(s.thickness_change_min_mm, 2)}, {_signed(s.thickness_change_max_mm, 2)}]"
        )
        volume = (
            f"{_signed(s.volume_change_mean_percent, 1)} ± {s.volume_change_sd_percent:.1f} % "
            f"[{_signed(s.volume_change_min_percent, 1)}, {_signed(s.volume_change_max_percent, 1)}]"
        )
        lines.append(
            f"| {s.compartment} | {s.followup_visit} | {s.n} | {s.n_flagged} | {thickness} | {s.n_thinned} / {s.n} | "
            f"{s.srm:.2f} | {volume} | {s.n_lost_volume} / {s.n} |"
        )
    lines += [
        "",
        "Per subject (mean thickness in mm at baseline T0 and follow-up T1; volume change in %):",
        "",
        "| subject | T0 | T1 | femoral T0 | femoral T1 | change | tibial T0 | tibial T1 | change | femoral vol % | "
        "tibial vol % | flags |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    pairs: dict[tuple[str, str, str], dict[str, ChangeRow]] = {}
    for r in rows:
        pairs.setdefault((r.subject, r.baseline_visit, r.followup_visit), {})[r.compartment] = r
    for (subject, t0, t1), by_compartment in pairs.items():
        cells = [subject, t0, t1]
        flags = []
        for name in _PAIR_TABLE_COMPARTMENTS:
            r = by_compartment.get(name)
            cells += (
                [
                    f"{r.thickness_mean_baseline_mm:.2f}",
                    f"{r.thickness_mean_followup_mm:.2f}",
                    _signed(r.thickness_mean_change_mm, 2),
                ]
                if r
                else ["", "", ""]
            )
            if r and r.flags:
                flags.append(f"{name}: {r.flags}")
        for name in _PAIR_TABLE_COMPARTMENTS:
            r = by_compartment.get(name)
            cells.append(_signed(r.volume_change_percent, 1) if r else "")
        cells.append("; ".join(flags))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _log_summary(summary: Sequence[CompartmentSummary]) -> None:
    for s in summary:
        logger.info(
            "%-15s at %s: %2d pairs (%d flagged): thickness %s ± %.2f mm, %d thinned, SRM %.2f; volume %s ± %.1f %%",
            s.compartment,
            s.followup_visit,
            s.n,
            s.n_flagged,
            _signed(s.thickness_change_mean_mm, 3),
            s.thickness_change_sd_mm,
            s.n_thinned,
            s.srm,
            _signed(s.volume_change_mean_percent, 1),
            s.volume_change_sd_percent,
        )
