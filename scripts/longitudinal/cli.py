"""`python -m scripts.longitudinal MEASUREMENTS.csv... --output change.csv`: cartilage change between visits."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from scripts.io_utils import atomic_write_text, check_report_outputs
from scripts.longitudinal.change import _visit_key, change_rows
from scripts.longitudinal.outputs import _log_summary, change_csv_text, summary_markdown
from scripts.longitudinal.read import DEFAULT_SCAN_PATTERN, read_measurements
from scripts.longitudinal.rows import LongitudinalError
from scripts.longitudinal.summary import summarise

logger = logging.getLogger(__name__)


def _visit_list(visit_order: object) -> list[str] | None:
    """--visit_order as labels: Fire hands over `BL,Y1` as the text 'BL,Y1' but `0,1` as the tuple (0, 1)."""
    if visit_order is None or visit_order == "":
        return None
    if isinstance(visit_order, str):
        return [v.strip() for v in visit_order.split(",") if v.strip()]
    if isinstance(visit_order, (list, tuple)):
        return [str(v).strip() for v in visit_order]
    return [str(visit_order)]


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
    are in the CSV but not in the summary; flags about the knee's side (laterality_unknown, ...) count only for the
    medial / lateral compartments, not for the whole femur and tibia. Bad input stops the run before anything is
    written (`error: ...`, exit code 1).

    Args:
        measurements: CSV(s) written by `python -m scripts.quantify` (or the inference run's measurements.csv).
        output: the change CSV to write (required); an existing file is kept unless --overwrite True.
        markdown: if set, also write the summary and per-subject tables as Markdown there.
        scan_pattern: regular expression with named groups `subject` and `visit` that the whole scan name must match;
            the default, ^(?P<subject>.+)_(?P<visit>[^_]+)$, splits at the last underscore (9014797_00m is subject
            9014797 at visit 00m).
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
        check_report_outputs(measurements, output, markdown, overwrite, "change", LongitudinalError)
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
