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

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np

from scripts.io_utils import atomic_write_text, check_writable_target
from scripts.quantify import csv_cell

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

logger = logging.getLogger(__name__)

# <subject>_<visit>, split at the last underscore: 9014797_00m -> (9014797, 00m), knee_07_V01 -> (knee_07, V01)
DEFAULT_SCAN_PATTERN = r"^(?P<subject>.+)_(?P<visit>[^_]+)$"
# the quantify columns this module needs; voxel_size_mm and expected_dice are used where present, the others may be
# absent (e.g. a CSV trimmed in a spreadsheet)
_REQUIRED = ("scan", "compartment", "laterality", "volume_mm3", "thickness_mean_mm", "thickness_median_mm", "flags")
_PAIR_TABLE_COMPARTMENTS = ("femoral", "tibial")
POOLED = "all"  # the follow-up "visit" of a summary over all follow-up visits


class LongitudinalError(ValueError):
    """Input that cannot be paired into visits; the message names the file or scans and what to change."""


@dataclass(frozen=True)
class VisitRow:
    """One quantify row: one compartment of one scan."""

    source: str  # file the row came from, for error messages
    scan: str
    subject: str
    visit: str
    compartment: str
    laterality: str
    volume_mm3: float
    thickness_mean_mm: float
    thickness_median_mm: float
    voxel_size_mm: str
    flags: str
    expected_dice: float  # of the prediction measured (inference's measurements.csv); NaN for a given label map


@dataclass(frozen=True)
class ChangeRow:
    """One subject, compartment and follow-up visit against the subject's baseline. Change = follow-up - baseline."""

    subject: str
    compartment: str
    baseline_visit: str
    followup_visit: str
    laterality: str
    volume_baseline_mm3: float
    volume_followup_mm3: float
    volume_change_mm3: float
    volume_change_percent: float
    thickness_mean_baseline_mm: float
    thickness_mean_followup_mm: float
    thickness_mean_change_mm: float
    thickness_median_change_mm: float
    expected_dice_min: float  # the lower of the two visits' expected Dice; NaN (empty in the CSV) where one has none
    flags: str

    @property
    def usable(self) -> bool:
        """Counted in the summary: no flag, and both thickness values measured."""
        return not self.flags and math.isfinite(self.thickness_mean_change_mm)


CHANGE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ChangeRow))


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
        for row in _read_csv(path):
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


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise LongitudinalError(f"{path}: no such file (the CSV written by python -m scripts.quantify --output ...)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LongitudinalError(f"{path}: cannot be read as a UTF-8 CSV ({type(e).__name__}: {e})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise LongitudinalError(
            f"{path}: not a quantify measurement CSV, columns {', '.join(missing)} are missing "
            f"(header: {', '.join(reader.fieldnames or []) or 'none'})"
        )
    rows = list(reader)
    if not rows:
        raise LongitudinalError(f"{path}: no rows under the header, so no scan to compare")
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# pairing
# ----------------------------------------------------------------------------------------------------------------------
def _visit_key(visit_order: Sequence[str] | None) -> Callable[[str], int]:
    """Sort key of visit labels: the given order, else the first number in the label (00m < 12m < 96m; V00 < V01)."""
    if visit_order:
        rank = {v: i for i, v in enumerate(visit_order)}
        return lambda visit: rank[visit]
    return lambda visit: int(re.search(r"\d+", visit).group())


def _check_visits(visits: Iterable[str], visit_order: Sequence[str] | None) -> None:
    visits = sorted(set(visits))
    if visit_order:
        if len(set(visit_order)) != len(visit_order):
            raise LongitudinalError(f"--visit_order {','.join(visit_order)} names a visit twice")
        unknown = [v for v in visits if v not in visit_order]
        if unknown:
            raise LongitudinalError(
                f"visit(s) {', '.join(unknown)} are not in --visit_order {','.join(visit_order)}: list every visit, "
                "baseline first"
            )
        return
    no_number = [v for v in visits if not re.search(r"\d", v)]
    if no_number:
        raise LongitudinalError(
            f"visit label(s) {', '.join(no_number)} hold no number to order the visits by: pass --visit_order "
            f"with every visit, baseline first (e.g. --visit_order {','.join(visits)})"
        )
    by_number: dict[int, list[str]] = {}
    for v in visits:
        by_number.setdefault(int(re.search(r"\d+", v).group()), []).append(v)
    clash = [labels for labels in by_number.values() if len(labels) > 1]
    if clash:
        raise LongitudinalError(
            f"visit labels {' and '.join(clash[0])} carry the same number, so their order is unknown: pass "
            "--visit_order with every visit, baseline first"
        )


def _pair_flags(base: VisitRow, follow: VisitRow, min_expected_dice: float) -> list[str]:
    flags = []
    if base.laterality != follow.laterality:
        flags.append("laterality_differs")
    if base.voxel_size_mm and follow.voxel_size_mm and base.voxel_size_mm != follow.voxel_size_mm:
        flags.append("voxel_size_differs")
    if min_expected_dice > 0 and not _lower(base.expected_dice, follow.expected_dice) >= min_expected_dice:
        flags.append("low_expected_dice")  # also when a visit has no expected Dice: the threshold cannot be checked
    if base.flags:
        flags.append(f"baseline:{base.flags}")
    if follow.flags:
        flags.append(f"followup:{follow.flags}")
    return flags


def _lower(a: float, b: float) -> float:
    """The smaller value, NaN if either is NaN (Python's min would depend on the order)."""
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


def _percent(change: float, base: float) -> float:
    return 100.0 * change / base if base > 0 else math.nan


def change_rows(
    rows: Sequence[VisitRow], visit_order: Sequence[str] | None = None, min_expected_dice: float = 0.0
) -> list[ChangeRow]:
    """Each subject's later visits against its first, per compartment; subjects seen at one visit only are logged.
    With `min_expected_dice` > 0, a pair where either visit's segmentation is expected below it is flagged."""
    _check_visits((r.visit for r in rows), visit_order)
    key = _visit_key(visit_order)
    by_subject: dict[str, dict[str, dict[str, VisitRow]]] = {}
    for r in rows:
        by_subject.setdefault(r.subject, {}).setdefault(r.visit, {})[r.compartment] = r
    single = sorted(s for s, visits in by_subject.items() if len(visits) < 2)
    if single:
        logger.warning(
            "%d subject(s) seen at one visit only, no change to measure: %s", len(single), ", ".join(single[:10])
        )
    out: list[ChangeRow] = []
    for subject in sorted(by_subject):
        visits = sorted(by_subject[subject], key=key)
        baseline = by_subject[subject][visits[0]]
        for visit in visits[1:]:
            follow = by_subject[subject][visit]
            for compartment in dict.fromkeys([*baseline, *follow]):  # the measurement CSV's order
                if compartment not in baseline or compartment not in follow:
                    logger.warning(
                        "%s: %s measured at %s only; no change row",
                        subject,
                        compartment,
                        visits[0] if compartment in baseline else visit,
                    )
                    continue
                b, f = baseline[compartment], follow[compartment]
                volume_change = f.volume_mm3 - b.volume_mm3
                out.append(
                    ChangeRow(
                        subject=subject,
                        compartment=compartment,
                        baseline_visit=b.visit,
                        followup_visit=f.visit,
                        laterality=b.laterality if b.laterality == f.laterality else f"{b.laterality}/{f.laterality}",
                        volume_baseline_mm3=b.volume_mm3,
                        volume_followup_mm3=f.volume_mm3,
                        volume_change_mm3=volume_change,
                        volume_change_percent=_percent(volume_change, b.volume_mm3),
                        thickness_mean_baseline_mm=b.thickness_mean_mm,
                        thickness_mean_followup_mm=f.thickness_mean_mm,
                        thickness_mean_change_mm=f.thickness_mean_mm - b.thickness_mean_mm,
                        thickness_median_change_mm=f.thickness_median_mm - b.thickness_median_mm,
                        expected_dice_min=_lower(b.expected_dice, f.expected_dice),
                        flags=";".join(_pair_flags(b, f, min_expected_dice)),
                    )
                )
    if not out:
        raise LongitudinalError(
            f"no subject has two visits among {len(by_subject)} subject(s): check that the scans of one knee share "
            "the subject part of their names (see --scan_pattern)"
        )
    return out


# ----------------------------------------------------------------------------------------------------------------------
# summary and output
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompartmentSummary:
    """Change of one compartment at one follow-up visit (or at all, pooled) over the usable pairs."""

    compartment: str
    followup_visit: str  # POOLED when the visits were pooled
    n: int
    n_flagged: int
    thickness_change_mean_mm: float
    thickness_change_sd_mm: float
    thickness_change_min_mm: float
    thickness_change_max_mm: float
    n_thinned: int
    srm: float
    volume_change_mean_percent: float
    volume_change_sd_percent: float
    volume_change_min_percent: float
    volume_change_max_percent: float
    n_lost_volume: int


def summarise(
    rows: Sequence[ChangeRow], pool_visits: bool = False, visit_key: Callable[[str], object] | None = None
) -> list[CompartmentSummary]:
    """Per compartment (first-seen order) and follow-up visit (in `visit_key` order, else first-seen): mean ± sd and
    range of the change over usable pairs, sd with ddof=1. Changes over different intervals are not one quantity, so
    each follow-up visit is summarised apart unless `pool_visits` (e.g. a cohort whose intervals differ per knee)."""
    visits = list(dict.fromkeys(r.followup_visit for r in rows))
    if visit_key is not None:
        visits.sort(key=visit_key)
    groups = [POOLED] if pool_visits else visits
    out = []
    for compartment, visit in ((c, v) for c in dict.fromkeys(r.compartment for r in rows) for v in groups):
        pairs = [r for r in rows if r.compartment == compartment and visit in (POOLED, r.followup_visit)]
        if not pairs:
            continue
        usable = [r for r in pairs if r.usable]
        dt = np.array([r.thickness_mean_change_mm for r in usable], dtype=float)
        dv = np.array([r.volume_change_percent for r in usable], dtype=float)
        dv = dv[np.isfinite(dv)]
        sd_t = float(dt.std(ddof=1)) if dt.size > 1 else math.nan
        out.append(
            CompartmentSummary(
                compartment=compartment,
                followup_visit=visit,
                n=len(usable),
                n_flagged=len(pairs) - len(usable),
                thickness_change_mean_mm=float(dt.mean()) if dt.size else math.nan,
                thickness_change_sd_mm=sd_t,
                thickness_change_min_mm=float(dt.min()) if dt.size else math.nan,
                thickness_change_max_mm=float(dt.max()) if dt.size else math.nan,
                n_thinned=int((dt < 0).sum()),
                srm=float(dt.mean()) / sd_t if dt.size > 1 and sd_t > 0 else math.nan,
                volume_change_mean_percent=float(dv.mean()) if dv.size else math.nan,
                volume_change_sd_percent=float(dv.std(ddof=1)) if dv.size > 1 else math.nan,
                volume_change_min_percent=float(dv.min()) if dv.size else math.nan,
                volume_change_max_percent=float(dv.max()) if dv.size else math.nan,
                n_lost_volume=int((dv < 0).sum()),
            )
        )
    return out


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


def _visit_list(visit_order: object) -> list[str] | None:
    """--visit_order as labels: Fire hands over `BL,Y1` as the text 'BL,Y1' but `0,1` as the tuple (0, 1)."""
    if visit_order is None or visit_order == "":
        return None
    if isinstance(visit_order, str):
        return [v.strip() for v in visit_order.split(",") if v.strip()]
    if isinstance(visit_order, (list, tuple)):
        return [str(v).strip() for v in visit_order]
    return [str(visit_order)]


def _check_outputs(inputs: Sequence[str], output: str | None, markdown: str | None, overwrite: bool) -> None:
    if output is None:
        raise LongitudinalError("--output is required: name the change CSV to write, e.g. --output change.csv")
    targets = [Path(output)] + ([Path(markdown)] if markdown else [])
    if len({t.resolve() for t in targets}) < len(targets):
        raise LongitudinalError(f"--output and --markdown name the same file {output}")
    resolved_inputs = {Path(p).resolve() for p in inputs}
    for target in targets:
        if target.resolve() in resolved_inputs:
            raise LongitudinalError(f"{target} is one of the input CSVs; write the change to another file")
        try:
            check_writable_target(target, overwrite)
        except FileExistsError as e:
            raise LongitudinalError(str(e)) from None


def main(
    *measurements: str,
    output: str | None = None,
    markdown: str | None = None,
    scan_pattern: str = DEFAULT_SCAN_PATTERN,
    visit_order: str | Sequence[str] | None = None,
    min_expected_dice: float = 0.0,
    pool_visits: bool = False,
    overwrite: bool = False,
) -> str:
    """Cartilage change between visits: pair each subject's follow-ups with its baseline; write one CSV.

    One row per subject, compartment and follow-up visit (change = follow-up - baseline, units in the column names);
    a summary per compartment and follow-up visit (mean ± sd, range, knees thinned, SRM; --pool_visits: over all
    follow-ups) is logged and, with --markdown, written as Markdown tables. Pairs flagged laterality_differs,
    voxel_size_differs, low_expected_dice, or carrying a quantify flag from either visit (baseline:..., followup:...)
    are in the CSV but not in the summary. Bad input stops the run before anything is written (`error: ...`, exit
    code 1).

    Args:
        measurements: CSV(s) written by `python -m scripts.quantify` (or the inference run's measurements.csv).
        output: the change CSV to write (required); an existing file is kept unless --overwrite True.
        markdown: if set, also write the summary and per-subject tables as Markdown there.
        scan_pattern: regular expression with named groups `subject` and `visit` that the whole scan name must match;
            the default splits at the last underscore (9014797_00m: subject 9014797, visit 00m).
        visit_order: every visit label, baseline first, comma-separated (e.g. BL,Y1,Y2); by default visits are ordered
            by the first number in their label (00m < 12m < 96m) and the first is the baseline.
        min_expected_dice: flag (low_expected_dice) and leave out of the summary the pairs where either visit's
            segmentation has an expected Dice below this (the `expected_dice` column that inference writes; a pair
            without it is flagged too); 0 (default) keeps every pair and only reports `expected_dice_min`.
        pool_visits: summarise all follow-up visits together (a cohort whose follow-up intervals differ per knee);
            by default each follow-up visit is summarised apart.
        overwrite: replace existing outputs (True/False).

    Returns:
        The path of the CSV written.
    """
    from scripts.cli import as_bool

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        overwrite, pool_visits = as_bool(overwrite, "overwrite"), as_bool(pool_visits, "pool_visits")
        order = _visit_list(visit_order)
        _check_outputs(measurements, output, markdown, overwrite)
        if not isinstance(min_expected_dice, (int, float)) or not 0 <= min_expected_dice <= 1:
            raise LongitudinalError(f"--min_expected_dice {min_expected_dice!r} must be a number from 0 to 1")
        rows = change_rows(read_measurements(measurements, scan_pattern), order, float(min_expected_dice))
    except ValueError as err:  # LongitudinalError and as_bool's: one paragraph, not a traceback
        raise SystemExit(f"error: {err}") from None
    summary = summarise(rows, pool_visits, _visit_key(order))
    _log_summary(summary)
    atomic_write_text(output, change_csv_text(rows), overwrite)
    if markdown:
        atomic_write_text(markdown, summary_markdown(rows, summary), overwrite)
    logger.info("%d change row(s) of %d subject(s) in %s", len(rows), len({r.subject for r in rows}), output)
    return str(output)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
