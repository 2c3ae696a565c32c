"""Writing the agreement report of two measurement CSVs, and the evaluation handler that does it after a test run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import get_type_hints

from scripts.agreement.outputs import agreement_csv_text, agreement_markdown
from scripts.agreement.pairs import DEFAULT_KEYS, AgreementError, check_keys, pair_measurements
from scripts.agreement.stats import DEFAULT_MEASURES, agreement_rows
from scripts.io_utils import atomic_write_text
from scripts.quantify import CompartmentRow

logger = logging.getLogger(__name__)

# the columns of quantify's CSV that hold a measure (its float fields: volume, area, thickness) and can be compared
MEASURE_COLUMNS = tuple(name for name, kind in get_type_hints(CompartmentRow).items() if kind is float)


def write_agreement(
    automated: str | Path,
    reference: str | Path,
    output: str | Path,
    markdown: str | Path | None = None,
    measures: Sequence[str] = DEFAULT_MEASURES,
    common_only: bool = False,
    overwrite: bool = False,
    keys: Sequence[str] = DEFAULT_KEYS,
) -> Path:
    """Pair the two CSVs, write the agreement CSV (and Markdown) atomically, log the summary; return the CSV path."""
    keys = check_keys(keys)
    pairs = pair_measurements(automated, reference, measures, common_only, keys)
    rows = agreement_rows(pairs, measures)
    atomic_write_text(output, agreement_csv_text(rows), overwrite)
    if markdown:
        item_header = " ".join(k for k in keys if k != "compartment")
        atomic_write_text(markdown, agreement_markdown(rows, pairs, item_header), overwrite)
    logger.info(
        "measurement agreement over %d scan(s) or subject(s) (%s against %s):\n%s",
        len({p.scan for p in pairs}),
        automated,
        reference,
        agreement_markdown(rows),  # the table of every pair stays in the files
    )
    return Path(output)


class AgreementReport:
    """Evaluation handler: when the run completes, compare the measurements of the predictions with those of the
    reference label maps (both written by `scripts.quantify.CartilageReportd` steps of the same run) and write
    `agreement.csv` and `agreement.md` to `output_dir`.

    Args:
        output_dir: folder of the two CSVs and of the report.
        automated_csv, reference_csv: file names of the two measurement CSVs in `output_dir`.
        measures: quantify columns to compare.
        enabled: attach nothing when False (config key `measure`).
    """

    def __init__(
        self,
        output_dir: str,
        automated_csv: str = "measurements_predicted.csv",
        reference_csv: str = "measurements_reference.csv",
        measures: Sequence[str] = DEFAULT_MEASURES,
        enabled: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.automated_csv, self.reference_csv = automated_csv, reference_csv
        self.measures, self.enabled = tuple(measures), bool(enabled)
        unknown = [m for m in self.measures if m not in MEASURE_COLUMNS]
        if self.enabled and (unknown or not self.measures):  # at config time, not after an hour of evaluation
            raise AgreementError(
                f"agreement_measures {list(self.measures)}: {', '.join(unknown) or 'none given'} not among the "
                f"measurement columns {', '.join(MEASURE_COLUMNS)}"
            )

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if self.enabled:
            engine.add_event_handler(Events.COMPLETED, self.completed)

    def completed(self, engine=None) -> None:
        write_agreement(
            self.output_dir / self.automated_csv,
            self.output_dir / self.reference_csv,
            self.output_dir / "agreement.csv",
            self.output_dir / "agreement.md",
            measures=self.measures,
            overwrite=True,  # the run's own files: the run checked before it started (prepare_output_dir)
        )
