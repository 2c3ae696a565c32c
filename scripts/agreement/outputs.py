"""The agreement rows as CSV and as Markdown tables (the summary, then every pair)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import astuple, fields

from scripts.agreement.pairs import MeasurementPair
from scripts.agreement.stats import AgreementRow
from scripts.quantify import csv_cell

AGREEMENT_COLUMNS = tuple(f.name for f in fields(AgreementRow))

# display names with units, and decimals, of the measures quantify writes
_LABELS = {
    "volume_mm3": ("volume", "mm³", 0),
    "surface_area_mm2": ("surface area", "mm²", 0),
    "thickness_mean_mm": ("mean thickness", "mm", 3),
    "thickness_median_mm": ("median thickness", "mm", 3),
    "thickness_p95_mm": ("95th-percentile thickness", "mm", 3),
    "thickness_max_mm": ("maximum thickness", "mm", 3),
    "thickness_sd_mm": ("thickness sd", "mm", 3),
    # scripts.longitudinal's change CSV
    "volume_change_mm3": ("change in volume", "mm³", 0),
    "volume_change_percent": ("change in volume", "%", 1),
    "thickness_mean_change_mm": ("change in mean thickness", "mm", 3),
    "thickness_median_change_mm": ("change in median thickness", "mm", 3),
}


def _label(measure: str) -> tuple[str, str, int]:
    return _LABELS.get(measure, (measure, "", 3))


def _f(value: float, digits: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def agreement_csv_text(rows: Sequence[AgreementRow]) -> str:
    """One line per compartment and measure; differences are automated - reference in the measure's unit (its name
    says which), `bias_percent` in %."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(AGREEMENT_COLUMNS)
    for row in rows:
        writer.writerow([csv_cell(v) for v in astuple(row)])
    return buffer.getvalue()


def agreement_markdown(
    rows: Sequence[AgreementRow], pairs: Sequence[MeasurementPair] = (), item_header: str = "scan"
) -> str:
    """The summary table and, if `pairs` are given, a table of every scan (`item_header`: the key columns other than
    the compartment) and compartment."""
    lines = [
        "Automated - reference per scan, over the scans of each compartment: bias (mean difference) in the unit and in "
        "% of the reference, Bland-Altman 95 % limits of agreement (bias ± 1.96 sd), mean and largest absolute "
        "difference, Pearson's r and Lin's concordance correlation coefficient (CCC).",
        "",
        "| compartment | measure | n | reference mean | automated mean | bias | bias/% | 95 % limits of agreement | "
        "mean abs. difference | max abs. difference | r | CCC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        name, unit, digits = _label(r.measure)
        n = f"{r.n}" + (f" ({r.n_missing} without a value)" if r.n_missing else "")
        loa = f"{_f(r.loa_lower, digits, True)} to {_f(r.loa_upper, digits, True)}"
        lines.append(
            f"| {r.compartment} | {name}{f'/{unit}' if unit else ''} | {n} | {_f(r.reference_mean, digits)} | "
            f"{_f(r.automated_mean, digits)} | {_f(r.bias, digits, True)} | {_f(r.bias_percent, 1, True)} | {loa} | "
            f"{_f(r.mean_abs_difference, digits)} | {_f(r.max_abs_difference, digits)} | {_f(r.pearson_r, 3)} | "
            f"{_f(r.lin_ccc, 3)} |"
        )
    if pairs:
        measures = list(dict.fromkeys(r.measure for r in rows))
        header = " | ".join(
            f"{_label(m)[0]}/{_label(m)[1]} (reference / automated / difference)" if _label(m)[1] else m
            for m in measures
        )
        lines += ["", f"| {item_header} | compartment | {header} | flags (reference; automated) |"]
        lines.append("| --- | --- | " + "--- | " * len(measures) + "--- |")
        for p in pairs:
            cells = []
            for m in measures:
                digits = _label(m)[2]
                a, ref = p.automated[m], p.reference[m]
                cells.append(f"{_f(ref, digits)} / {_f(a, digits)} / {_f(a - ref, digits, True)}")
            flags = f"{p.reference_flags or '-'}; {p.automated_flags or '-'}"
            lines.append(f"| {p.scan} | {p.compartment} | {' | '.join(cells)} | {flags} |")
    return "\n".join(lines) + "\n"
