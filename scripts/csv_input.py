"""Reading the CSVs that the report commands (scripts.longitudinal, scripts.agreement) take as input: a missing,
unreadable, headerless-for-our-purpose or empty file is one error naming the file, raised as the command's own type."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

__all__ = ["read_csv_rows"]


def read_csv_rows(
    path: str | Path, required: Sequence[str], error: type[ValueError] = ValueError, kind: str = "a measurement CSV"
) -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV with at least the `required` columns, or `error` naming the file and what is wrong.

    Args:
        path: the CSV.
        required: columns it must have.
        error: the exception type the calling command reports as one paragraph.
        kind: what the file should be, for the message (e.g. "a quantify measurement CSV").
    """
    path = Path(path)
    if not path.is_file():
        raise error(
            f"{path}: no such file (a CSV of python -m scripts.quantify, scripts.longitudinal or an inference run)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot be read as a UTF-8 CSV ({type(e).__name__}: {e})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise error(
            f"{path}: not {kind}, columns {', '.join(missing)} are missing (header: {', '.join(header) or 'none'})"
        )
    rows = list(reader)
    if not rows:
        raise error(f"{path}: no rows under the header, so nothing to compare")
    return rows
