"""Check every image/label pair before training (readable, 3D, finite, same shape and affine, label codes known)
and report all problems in one message."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from scripts.datalist.names import DatasetError
from scripts.labels import check_label_values, get_preset


def _read(path: str) -> tuple[Any, np.ndarray]:
    """Read one image with MONAI's LoadImage (the same reader the pipeline uses); return (array, RAS affine)."""
    from monai.transforms import LoadImage

    img = LoadImage(image_only=True)(path)
    return img, np.asarray(img.affine, dtype=np.float64)


def _check_entry(entry: Mapping[str, str], preset_name: str | None, atol: float) -> list[str]:
    """All problems of one image/label pair, as messages that name the file."""
    from scripts.checks import ScanError, check_dicom_series, geometry_problem, intensity_problem, unreadable_reason

    problems: list[str] = []
    arrays: dict[str, tuple[Any, np.ndarray]] = {}
    for key in ("image", "label"):
        if key not in entry:
            continue
        path = entry[key]
        if not Path(path).exists():
            problems.append(f"{path}: file not found")
            continue
        try:
            if Path(path).is_dir():
                check_dicom_series(path)
            arr, affine = _read(path)
        except ScanError as e:
            problems.append(str(e))
            continue
        except Exception as e:  # noqa: BLE001 - any reader failure means "unreadable", reported with its cause
            problems.append(f"{path}: {unreadable_reason(path, e)}")
            continue
        if arr.ndim != 3:
            problems.append(f"{path}: a 3D volume is required, got {arr.ndim}D data of shape {tuple(arr.shape)}")
            continue
        if problem := geometry_problem(affine):
            problems.append(f"{path}: {problem}")
            continue
        if key == "image" and (problem := intensity_problem(np.asarray(arr))):
            problems.append(f"{path}: {problem}")
        arrays[key] = (arr, affine)
        if key == "label" and preset_name is not None:
            try:
                check_label_values(np.asarray(arr), get_preset(preset_name), path)
            except ValueError as e:
                problems.append(str(e))
    if len(arrays) == 2:
        (img, img_aff), (lab, lab_aff) = arrays["image"], arrays["label"]
        if tuple(img.shape) != tuple(lab.shape):
            problems.append(
                f"{entry['image']} and {entry['label']}: image shape {tuple(img.shape)} != label shape "
                f"{tuple(lab.shape)}"
            )
        elif not np.allclose(img_aff, lab_aff, atol=atol):
            problems.append(
                f"{entry['image']} and {entry['label']}: image and label geometry (affine) differ by up to "
                f"{np.abs(img_aff - lab_aff).max():.4g} mm; the label does not overlay the image"
            )
    return problems


def validate_entries(
    entries: Sequence[Mapping[str, str]], label_preset: str | None = None, atol: float = 1e-2, num_workers: int = 2
) -> None:
    """Check every pair (readable, 3D, finite, same shape and affine, label codes known); raise ONE DatasetError
    listing all problems, so a user fixes a dataset in one round instead of one crash per file."""
    if not entries:
        raise DatasetError("the datalist is empty: no image/label pairs to use")
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        results = list(pool.map(lambda e: _check_entry(e, label_preset, atol), entries))
    problems = [p for r in results for p in r]
    if problems:
        raise DatasetError(f"{len(problems)} problem(s) in the dataset:\n  " + "\n  ".join(problems))
