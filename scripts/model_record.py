"""What a model was trained on, kept beside it, so that inference cannot quietly feed it other input.

`model.pt` is a plain state_dict (loaded with `weights_only=True`), which cannot say how its training scans were
preprocessed. A network applied to scans resampled to another in-plane spacing, or scaled with other intensity
percentiles, sees a knee at another size or contrast and returns a plausible-looking but wrong segmentation, with
no error anywhere. Training therefore writes `model_preprocessing.json` next to `model.pt` (the settings that shape
the network's input), and inference and evaluation compare their own settings with it before any scan is read.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scripts.io_utils import atomic_write_text

__all__ = ["RECORD_SUFFIX", "record_path", "write_record", "read_record", "check_record", "differences"]

RECORD_SUFFIX = "_preprocessing.json"

logger = logging.getLogger(__name__)


def record_path(model_path: str | Path) -> Path:
    """`models/model.pt` -> `models/model_preprocessing.json`."""
    path = Path(model_path)
    return path.with_name(path.stem + RECORD_SUFFIX)


def _plain(value: Any) -> Any:
    """JSON-ready copy: tuples and tensors-like sequences as lists, numbers as float or int."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def write_record(model_path: str | Path, settings: Mapping[str, Any]) -> Path:
    """Write the preprocessing `settings` beside `model_path` (atomically, replacing an earlier record)."""
    path = record_path(model_path)
    atomic_write_text(path, json.dumps(_plain(settings), indent=2, sort_keys=True) + "\n", overwrite=True)
    return path


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def differences(recorded: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """`key: trained with X, this run uses Y` for every recorded setting this run sets differently."""
    current = _plain(settings)
    return [
        f"{key}: trained with {recorded[key]!r}, this run uses {current[key]!r}"
        for key in sorted(recorded)
        if key in current and not _same(recorded[key], current[key])
    ]


def read_record(model_path: str | Path, error: type[Exception] | None = None) -> dict[str, Any] | None:
    """The training record beside `model_path`, or None when there is none; an unreadable record is an error
    (SystemExit, or `error` when given)."""
    path = record_path(model_path)
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise (error or SystemExit)(f"error: cannot read the model's training record {path}: {e}") from None
    if not isinstance(recorded, Mapping):
        raise (error or SystemExit)(f"error: the model's training record {path} is not a JSON object")
    return dict(recorded)


def check_record(
    model_path: str | Path,
    settings: Mapping[str, Any],
    enabled: bool = True,
    error: type[Exception] | None = None,
) -> bool:
    """Exit with one paragraph when the model's training record names other preprocessing than `settings`; a model
    without a record (trained before version 0.4.15, or elsewhere) is used with a log line saying it is unchecked.

    `error`: raise this exception type with the paragraph instead of exiting: a server (MONAI Label) must fail the
    request, not end its process; SystemExit is for the command line."""
    path = record_path(model_path)
    if not enabled:
        return True
    recorded = read_record(model_path, error)
    if recorded is None:
        logger.info("%s has no %s beside it: its training preprocessing cannot be checked", model_path, path.name)
        return True
    found = differences(recorded, settings)
    if found:
        keys = [line.split(":")[0] for line in found]
        flags = " ".join(f"--{key} {json.dumps(recorded[key], separators=(',', ':'))}" for key in keys)
        message = (
            f"error: {model_path} was trained on scans preprocessed otherwise ({path.name}): {'; '.join(found)}. "
            "The network would see the knee at another scale or contrast and return wrong segmentations without "
            f"any error. Run with the training settings ({flags}; or list {path} last in --config_file), or pass "
            "--check_preprocessing False to use the model anyway."
        )
        raise (error or SystemExit)(message)
    return True
