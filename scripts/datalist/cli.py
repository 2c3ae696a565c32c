"""`python -m scripts.datalist build|check|write_split`: the datalist steps as commands."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.datalist.layouts import _require_dir, collect_cases
from scripts.datalist.names import SPLITS, DatasetError
from scripts.datalist.prepare import prepare_datalist
from scripts.datalist.splits import _write_split_file, cross_validation_folds, fold_path, split_by_subject
from scripts.datalist.validation import validate_entries
from scripts.io_utils import atomic_write_text
from scripts.labels import get_preset


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

    Args:
        dataset_dir: the dataset folder (layouts: see `check --help`).
        output: the JSON to write; an existing file is kept unless --overwrite True.
        layout: auto (detected), or one of oaizib-cm, pairs, oai-zib, datalist, labels.
        label_preset: the label codes: oai-zib, oaizib-cm, oai-labels or cartilage.
        images_dir: the folder of the OAI scans that OAI-ZIB masks belong to (layout oai-zib).
        num_val: validation subjects taken from the training cases (a count, or a fraction below 1), unless the
            layout or --split_file defines them.
        num_test: test subjects taken from the training cases when the layout has no test split.
        seed: seed of the subject split.
        split_file: a JSON of subject ids per split (from write_split), used instead of a random split.
        validate: check every pair first (as `check` does).
        overwrite: replace an existing OUTPUT.

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

    Args:
        dataset_dir: the dataset folder (layouts: see `check --help`); its training cases are split.
        output: the JSON to write (ids only); existing files are kept unless --overwrite True.
        num_val: validation subjects (a count, or a fraction below 1).
        num_test: test subjects (a count, or a fraction below 1); unused with --folds.
        seed: seed of the split.
        layout: auto (detected), or one of oaizib-cm, pairs, oai-zib, datalist, labels.
        overwrite: replace existing split files.
        folds: K > 1 writes K cross-validation splits.

    Examples:
        python -m scripts.datalist write_split LABELS_DIR configs/splits/oai_labels.json
        python -m scripts.datalist write_split LABELS_DIR configs/splits/oai_labels_cv6.json --folds 6
    """
    from scripts.cli import as_bool

    overwrite = as_bool(overwrite, "overwrite")
    root = _require_dir(dataset_dir, "dataset_dir")
    pool = collect_cases(root, layout).get("training", [])
    if not pool:
        raise DatasetError(f"no training cases to split in {root} (test cases, e.g. imagesTs/, are not split)")
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


def check(
    dataset_dir: str,
    label_preset: str = "oai-zib",
    layout: str = "auto",
    images_dir: str | None = None,
    workers: int = 2,
) -> int:
    """Check every image/label pair in DATASET_DIR, whatever split it belongs to, and print all problems at once
    (readable, 3D, finite, same shape and affine, label codes known to the preset; exit code 1 if any).

    Args:
        dataset_dir: the dataset folder: OAIZIB-CM (imagesTr/ labelsTr/ imagesTs/ labelsTs/), images/ + labels/,
            OAI-ZIB masks (with --images_dir), a datalist.json, or label maps only.
        label_preset: the label codes: oai-zib, oaizib-cm, oai-labels (the 0-9 AKOA maps) or cartilage (0/1/2).
        layout: auto (detected from the folder), or one of oaizib-cm, pairs, oai-zib, datalist, labels.
        images_dir: the folder of the OAI scans that OAI-ZIB masks belong to (layout oai-zib).
        workers: threads reading files.

    Example: python -m scripts.datalist check /data/OAIZIB-CM --label_preset oaizib-cm
    """
    get_preset(label_preset)  # an unknown preset is one error, not one per file
    root = _require_dir(dataset_dir, "dataset_dir")
    found = collect_cases(root, layout, images_dir)
    entries = [e for s in SPLITS for e in found.get(s, [])]
    if not entries:
        raise DatasetError(f"no image/label pairs found in {root} (layout {layout})")
    validate_entries(entries, label_preset, num_workers=int(workers))
    counts = ", ".join(f"{len(found[s])} {s}" for s in SPLITS if found.get(s))
    print(f"{len(entries)} cases in {root} ({counts}): all readable, 3D, matching, codes known to {label_preset}")
    return len(entries)
