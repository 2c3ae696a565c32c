"""`python -m scripts.agreement AUTOMATED.csv REFERENCE.csv --output agreement.csv`: agreement of two measurement
CSVs of the same scans."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from scripts.agreement.pairs import DEFAULT_KEYS, AgreementError, check_keys
from scripts.agreement.report import write_agreement
from scripts.agreement.stats import DEFAULT_MEASURES
from scripts.io_utils import check_report_outputs

# the change columns of scripts.longitudinal, compared by default when rows are keyed by follow-up visit
CHANGE_MEASURES = (
    "thickness_mean_change_mm",
    "thickness_median_change_mm",
    "volume_change_mm3",
    "volume_change_percent",
)


def _column_list(value: object, flag: str) -> list[str]:
    """--measures / --keys as column names: Fire hands over `a,b` as the tuple ('a', 'b') and `a` as the text 'a'."""
    if isinstance(value, str):
        names = [m.strip() for m in value.split(",") if m.strip()]
    elif isinstance(value, (list, tuple)):
        names = [str(m).strip() for m in value]
    else:
        raise AgreementError(
            f"{flag} {value!r}: give CSV column names, comma-separated (e.g. volume_mm3,thickness_mean_mm)"
        )
    if not names:
        raise AgreementError(
            f"{flag} is empty: give CSV column names, comma-separated (e.g. volume_mm3,thickness_mean_mm)"
        )
    return names


def main(
    automated: str,
    reference: str,
    output: str | None = None,
    markdown: str | None = None,
    measures: str | Sequence[str] | None = None,
    common_only: bool = False,
    keys: str | Sequence[str] = ",".join(DEFAULT_KEYS),
    overwrite: bool = False,
) -> str:
    """Agreement of automated cartilage measurements with reference ones, per compartment and measure.

    Rows of the two CSVs are paired by scan and compartment (or by --keys); differences are automated - reference.
    Written: one CSV row per compartment and measure (n, means, bias in the unit and in %, sd of the differences,
    95 % limits of agreement, mean and largest absolute difference, Pearson's r, Lin's CCC); with --markdown also
    the table and every pair. Bad input stops before anything is written (`error: ...`, exit code 1).

    Args:
        automated: measurement CSV of the segmentations under test (python -m scripts.quantify, or an inference
            run's measurements.csv).
        reference: measurement CSV of the reference (e.g. manual) segmentations of the same scans.
        output: the agreement CSV to write (required); an existing file is kept unless --overwrite True.
        markdown: if set, also write the tables as Markdown there.
        measures: columns to compare, comma-separated; by default volume_mm3, thickness_mean_mm,
            thickness_median_mm, or with --keys ...,followup_visit the change columns of scripts.longitudinal
            (thickness_mean_change_mm, thickness_median_change_mm, volume_change_mm3, volume_change_percent).
        common_only: compare the scans found in both CSVs; by default a scan in one CSV only is an error.
        keys: the columns that identify a row, compartment among them: scan,compartment for quantify's CSVs;
            subject,compartment,followup_visit to compare the change CSVs of python -m scripts.longitudinal.
        overwrite: replace existing outputs (True/False).

    Returns:
        The path of the CSV written.
    """
    from scripts.cli import as_bool

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        overwrite, common_only = as_bool(overwrite, "overwrite"), as_bool(common_only, "common_only")
        key_columns = check_keys(_column_list(keys, "--keys"))
        if measures is None:
            measures = CHANGE_MEASURES if "followup_visit" in key_columns else DEFAULT_MEASURES
        names = _column_list(measures, "--measures")
        check_report_outputs([automated, reference], output, markdown, overwrite, "agreement", AgreementError)
        written = write_agreement(
            automated, reference, str(output), markdown, names, common_only, overwrite, keys=key_columns
        )
    except ValueError as err:  # AgreementError and as_bool's: one paragraph, not a traceback
        raise SystemExit(f"error: {err}") from None
    return str(written)
