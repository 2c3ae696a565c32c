"""Batch inference that survives a bad scan: the scan is reported (log line and `<output_dir>/failures.csv`) and
skipped, every other scan is segmented and written, and the run still ends with a non-zero exit code.

Three pieces, wired in `configs/inference.json`:
- `FailSafeDataset` (a `monai.data.Dataset`): an item whose loading or preprocessing raises becomes a small placeholder
  `{"image": <path>, "scan_error": <message>}`, so the DataLoader and its worker processes keep going.
- `FailSafeEvaluator` (a `SupervisedEvaluator`): records placeholders, and any scan whose inference, inversion or
  writing raises, instead of stopping the run.
- `FailureLog`: the list of failures, written atomically after each one (a killed run keeps it), and
  `raise_if_failed()` at the end of `inferring`, which exits with a summary when anything failed (a Python caller
  gets a `ScansFailedError` instead).

Inference runs with batch_size 1 (scans differ in size), so a placeholder never shares a batch with a real scan.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.data import Dataset
from monai.engines import SupervisedEvaluator

from scripts.checks import short_error, unreadable_reason
from scripts.io_utils import atomic_write_text

__all__ = [
    "FAILURE_KEY",
    "exception_chain",
    "describe_failure",
    "ScansFailedError",
    "FailSafeDataset",
    "FailureLog",
    "FailSafeEvaluator",
]

FAILURE_KEY = "scan_error"
LOADERS = ("LoadImage", "LoadImageTensor")  # a failure inside these is a read problem

logger = logging.getLogger(__name__)


def exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first (MONAI wraps transform errors: 'applying transform ...')."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def describe_failure(exc: BaseException, source: str) -> str:
    """One line naming `source` and the problem: our own errors as they are, a reader failure as the reason the file
    cannot be read, anything else as `Type: message` of the innermost cause."""
    chain = exception_chain(exc)
    root = chain[-1]
    if any(f"{loader}d object" in str(e) for e in chain[:-1] for loader in LOADERS):
        return f"{source}: {unreadable_reason(source, root)}"  # MONAI: "applying transform <...LoadImaged object>"
    text = " ".join(str(root).split())
    if Path(source).name and Path(source).name in text:
        return text  # our checks (ScanError, label presets, ...) already name the file
    if isinstance(root, FileExistsError):
        return f"{source}: {text}"  # our writers: "<output> already exists; pass --overwrite True ..."
    return f"{source}: failed ({short_error(root)})"


def _entry_source(entry: Any) -> str:
    if isinstance(entry, Mapping):
        entry = entry.get("image", entry)
    return str(entry)


class ScansFailedError(RuntimeError):
    """Some scans of a batch run failed (raised for Python callers; the command line gets SystemExit)."""


class FailSafeDataset(Dataset):
    """`monai.data.Dataset` whose items never raise: a scan that cannot be loaded or preprocessed becomes
    `{"image": <path>, FAILURE_KEY: <message>}` for `FailSafeEvaluator` to report and skip.

    Args:
        data: the datalist (dicts with an `image` path).
        transform: the preprocessing chain.
        failure_key: key of the message in a placeholder.
    """

    def __init__(self, data: Sequence, transform: Any = None, failure_key: str = FAILURE_KEY) -> None:
        super().__init__(data=data, transform=transform)
        self.failure_key = failure_key

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except Exception as e:  # noqa: BLE001 - every failure of one scan is reported, and the others go on
            source = _entry_source(self.data[index])
            return {"image": source, self.failure_key: describe_failure(e, source)}


class FailureLog:
    """Scans that failed in this run: logged as they fail, listed in `<output_dir>/<file_name>` (scan, error),
    rewritten atomically after each failure. An existing list from an earlier run is never replaced unless
    `overwrite`; this run's list then goes to the next free `failures-N.csv`.

    Args:
        output_dir: the run's output folder.
        file_name: name of the list.
        overwrite: the config key `overwrite`.
    """

    def __init__(self, output_dir: str, file_name: str = "failures.csv", overwrite: bool = False) -> None:
        self.output_dir, self.file_name, self.overwrite = Path(output_dir), file_name, bool(overwrite)
        self.failures: list[tuple[str, str]] = []
        self.succeeded = 0
        self.path: Path | None = None

    def record(self, source: str, message: str) -> None:
        """Log one failed scan and rewrite the list."""
        logger.error("skipped a scan: %s", message)
        self.failures.append((source, message))
        if self.path is None:
            self.path = self._free_path()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["scan", "error"])
        writer.writerows((source, message.removeprefix(f"{source}: ")) for source, message in self.failures)
        atomic_write_text(self.path, buffer.getvalue(), overwrite=True)  # our own file of this run

    def _settle_earlier_list(self) -> None:
        """A failure list from an earlier run must not outlive a clean rerun unnoticed: with `overwrite` it becomes
        this run's (empty) list, otherwise a warning says whose it is."""
        earlier = self.output_dir / self.file_name
        if not earlier.exists():
            return
        if self.overwrite:
            atomic_write_text(earlier, "scan,error\n", overwrite=True)
            logger.info("%s now lists this run's failures: none", earlier)
        else:
            logger.warning("%s is from an earlier run (this run had no failures); it is kept as it was", earlier)

    def _free_path(self) -> Path:
        path = self.output_dir / self.file_name
        stem, suffix = path.name.split(".", 1) if "." in path.name else (path.name, "")
        n = 0
        while path.exists() and not self.overwrite:
            n += 1
            path = self.output_dir / f"{stem}-{n}{'.' + suffix if suffix else ''}"
        return path

    def raise_if_failed(self, exit_process: bool | None = None) -> bool:
        """End of the run: if any scan failed, stop with a summary; log a success line otherwise.

        Args:
            exit_process: raise SystemExit (a clean message and exit code 1 on the command line) rather than
                `ScansFailedError` (for Python callers such as benchmarks, which catch exceptions). None: SystemExit
                exactly when this process is `python -m monai.bundle run`.
        """
        total = self.succeeded + len(self.failures)
        if not self.failures:
            logger.info("all %d scan(s) segmented; outputs in %s", total, self.output_dir)
            self._settle_earlier_list()
            return True
        listed = "\n  ".join(message for _, message in self.failures)
        message = (
            f"error: {len(self.failures)} of {total} scan(s) failed and were skipped ({self.succeeded} segmented, "
            f"outputs in {self.output_dir}); the failures are listed in {self.path}:\n  {listed}"
        )
        if exit_process is None:
            from scripts.overrides import parse_cli

            exit_process = parse_cli(sys.argv) is not None
        raise SystemExit(message) if exit_process else ScansFailedError(message)


def _batch_sources(batch: Any) -> list[str]:
    """File names of the scans in a collated batch (for the failure list)."""
    image = batch.get("image") if isinstance(batch, Mapping) else None
    names = getattr(image, "meta", {}).get("filename_or_obj") if image is not None else None
    names = image if names is None else names
    if isinstance(names, (list, tuple)):
        return [str(n) for n in names]
    return [str(names) if names is not None else "<unnamed scan>"]


class FailSafeEvaluator(SupervisedEvaluator):
    """SupervisedEvaluator for batch inference: a scan that failed to load (a `FailSafeDataset` placeholder) or whose
    inference, postprocessing or writing raises is recorded in `failures` and skipped; the next scan goes on.

    Args:
        failures: the run's `FailureLog`.
        failure_key: key of the placeholder message.
        args, kwargs: those of `monai.engines.SupervisedEvaluator`.
    """

    def __init__(self, *args: Any, failures: FailureLog, failure_key: str = FAILURE_KEY, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures, self.failure_key = failures, failure_key

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> dict:
        sources = _batch_sources(batchdata)
        if isinstance(batchdata, Mapping) and self.failure_key in batchdata:
            for source, message in zip(sources, batchdata[self.failure_key]):
                self.failures.record(source, message)
            return {}
        try:
            output = super()._iteration(engine, batchdata)
        except Exception as e:  # noqa: BLE001 - one scan's failure must not stop the others
            for source in sources:
                self.failures.record(source, describe_failure(e, source))
            return {}
        self.failures.succeeded += len(sources)
        return output
