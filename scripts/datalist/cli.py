"""`python -m scripts.datalist build|check|write_split`: the datalist steps as commands."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.datalist.layouts import _collect, _detect_layout, _require_dir
from scripts.datalist.names import SPLITS
from scripts.datalist.prepare import prepare_datalist
from scripts.datalist.splits import _write_split_file, cross_validation_folds, fold_path, split_by_subject
from scripts.io_utils import atomic_write_text


def build(
    dataset_dir: str,
    output: str,
    layout: str = "auto",
    label_preset: str = "oai-zib",
    images_dir: str | None = None,
    num_val: int | float = 0.2,
    num_test: int | float = 0,
    seed: int = 0,
    split_file: str | None = None,
    validate: bool = True,
    overwrite: bool = False,
) -> str:
    """Write a datalist JSON (training/validation/test, absolute paths) for DATASET_DIR to OUTPUT.

    Example: python -m scripts.datalist build /data/OAIZIB-CM datalist.json --label_preset oaizib-cm
    """
    from scripts.cli import as_bool

    validate, overwrite = as_bool(validate, "validate"), as_bool(overwrite, "overwrite")
    splits = prepare_datalist(
        dataset_dir, layout, label_preset, images_dir, num_val, num_test, seed, split_file, validate, None, True
    )
    atomic_write_text(output, json.dumps(splits, indent=2), overwrite=overwrite)
    print(f"wrote {output}: " + ", ".join(f"{len(splits[s])} {s}" for s in SPLITS))
    return output


def write_split(
    dataset_dir: str,
    output: str,
    num_val: int | float = 4,
    num_test: int | float = 4,
    seed: int = 0,
    layout: str = "auto",
    overwrite: bool = False,
    folds: int = 0,
) -> str | list[str]:
    """Write the SUBJECT IDS (no paths, no data) of a seeded split of DATASET_DIR to OUTPUT, for committing.

    With --folds K, write K cross-validation splits instead (`cross_validation_folds`: every subject is a test
    subject once; --num_test is then unused): OUTPUT with `_fold0` ... `_fold{K-1}` before its suffix, or with
    `{fold}` in OUTPUT replaced by the fold number. Train and evaluate once per file (--split_file).

    Examples:
        python -m scripts.datalist write_split LABELS_DIR configs/splits/oai_labels.json
        python -m scripts.datalist write_split LABELS_DIR configs/splits/oai_labels_cv6.json --folds 6
    """
    from scripts.cli import as_bool

    overwrite = as_bool(overwrite, "overwrite")
    root = _require_dir(dataset_dir, "dataset_dir")
    pool = _collect(root, _detect_layout(root) if layout == "auto" else layout, None)["training"]
    if not folds:
        return _write_split_file(output, split_by_subject(pool, num_val, num_test, seed), seed, overwrite)
    splits = cross_validation_folds(pool, int(folds), num_val, seed)
    outputs = [fold_path(output, i) for i in range(len(splits))]
    existing = [p for p in outputs if Path(p).exists()]
    if existing and not overwrite:  # all or nothing: never half a set of folds from two seeds
        raise FileExistsError(f"{existing[0]} already exists; pass --overwrite True to replace the {folds} fold files")
    for i, (path, split) in enumerate(zip(outputs, splits)):
        _write_split_file(path, split, seed, True, {"fold": i, "folds": len(splits)})
    return outputs


def check(dataset_dir: str, label_preset: str = "oai-zib", layout: str = "auto", images_dir: str | None = None):
    """Check every image/label pair in DATASET_DIR and print all problems at once (exit code 1 if any)."""
    splits = prepare_datalist(dataset_dir, layout, label_preset, images_dir, 0, 0, 0, None, True, None, True)
    print(f"{sum(len(v) for v in splits.values())} cases in {dataset_dir}: all readable, 3D, matching, codes known")
