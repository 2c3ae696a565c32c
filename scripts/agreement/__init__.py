"""Agreement of automated cartilage measurements with reference ones (manual segmentations), per compartment.

A segmentation model is used in osteoarthritis research through the numbers measured on its label maps, so what a
study needs to know is not only its Dice but how far its cartilage volume and thickness are from those measured on
the manual segmentation of the same scans: the bias (systematic over- or under-segmentation, in mm and %), the
95 % limits of agreement of Bland and Altman (how far one scan can be off), the mean absolute difference, Pearson's r
and Lin's concordance correlation coefficient (agreement, not only association).

    python -m scripts.agreement AUTOMATED.csv REFERENCE.csv --output agreement.csv [--markdown agreement.md]

Both CSVs are written by `python -m scripts.quantify` (or by the inference / evaluation runs); rows are paired by
scan and compartment. `configs/evaluate.json` with `--measure True` writes both and this report for a test set. With
`--keys subject,compartment,followup_visit` it compares the change CSVs of `scripts.longitudinal` instead: how far
the cartilage loss measured on automated segmentations is from the loss measured on the reference ones.
"""

from scripts.agreement.cli import main
from scripts.agreement.outputs import agreement_csv_text, agreement_markdown
from scripts.agreement.pairs import (
    DEFAULT_KEYS,
    AgreementError,
    MeasurementPair,
    check_keys,
    pair_measurements,
    read_measurement_csv,
)
from scripts.agreement.report import AgreementReport, write_agreement
from scripts.agreement.stats import DEFAULT_MEASURES, AgreementRow, agreement_rows, agreement_stats

__all__ = [
    "DEFAULT_KEYS",
    "DEFAULT_MEASURES",
    "AgreementError",
    "AgreementReport",
    "AgreementRow",
    "MeasurementPair",
    "agreement_csv_text",
    "agreement_markdown",
    "agreement_rows",
    "agreement_stats",
    "check_keys",
    "main",
    "pair_measurements",
    "read_measurement_csv",
    "write_agreement",
]
