"""The datalist the configs train and evaluate on: layout detection, phantoms for an empty folder, subject splits,
validation."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scripts.datalist.layouts import collect_cases
from scripts.datalist.names import SPLITS, DatasetError
from scripts.datalist.splits import _apply_split_file, split_by_subject
from scripts.datalist.validation import validate_entries
from scripts.labels import get_preset

logger = logging.getLogger(__name__)


def _is_empty_dir(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _generate_phantoms_once(root: Path, phantoms: Mapping[str, Any]) -> None:
    """Generate the embedded-default phantoms into an empty `root`; under torch.distributed only rank 0 writes and
    every rank waits for it, so parallel processes never race on the same files."""
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    if (not distributed or dist.get_rank() == 0) and _is_empty_dir(root):
        from scripts.phantom import write_phantom_dataset

        logger.warning("no data in %s: generating knee phantoms there (%s)", root, dict(phantoms))
        write_phantom_dataset(str(root), **dict(phantoms))
    if distributed:
        dist.barrier()


def prepare_datalist(
    dataset_dir: str,
    layout: str = "auto",
    label_preset: str = "oai-zib",
    images_dir: str | None = None,
    num_val: int | float = 0.2,
    num_test: int | float = 0,
    seed: int = 0,
    split_file: str | None = None,
    validate: bool = True,
    phantoms: Mapping[str, Any] | None = None,
    exit_on_error: bool = False,
    num_workers: int = 2,
    require_validation: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Training, validation and test lists for `dataset_dir`, ready for the configs.

    Args:
        dataset_dir: the dataset folder (see the module docstring for the layouts).
        layout: "auto" or one layout name.
        label_preset: preset used to validate label codes (see scripts.labels).
        images_dir: scans folder for the `oai-zib` layout.
        num_val: validation subjects taken from the training pool (count or fraction), unless the layout or split
            file already defines a validation split.
        num_test: test subjects taken from the training pool when the layout has no test split.
        seed: seed of the subject split.
        split_file: JSON with subject ids per split (`{"training": [...], "validation": [...], "test": [...]}`);
            overrides the random split.
        validate: check every pair before use (readable, 3D, geometry, label codes).
        phantoms: if `dataset_dir` is missing or empty, generate knee phantoms there with these keyword arguments
            of `scripts.phantom.write_phantom_dataset` (the embedded default); None turns generation off.
        exit_on_error: raise SystemExit with the one-paragraph message instead of a DatasetError (used by configs,
            so a user sees the problem, not a stack trace from inside the config parser).
        num_workers: threads used to validate files.
        require_validation: refuse a datalist without validation cases (training: `models/model.pt` is written by
            validation, so a training without it would end "successfully" with no model).
    """
    try:
        try:
            get_preset(label_preset)
        except ValueError as e:
            raise DatasetError(str(e)) from None
        root = Path(dataset_dir).expanduser()
        if phantoms is not None:
            _generate_phantoms_once(root, phantoms)
        if root.is_file():
            raise DatasetError(f"dataset_dir {root} is a file; point dataset_dir at the folder of the dataset")
        if _is_empty_dir(root):
            raise DatasetError(
                f"dataset_dir {root} {'is empty' if root.exists() else 'does not exist'}; point dataset_dir at "
                "your data (see README.md), or leave it at its default to generate knee phantoms"
            )
        found = collect_cases(root, layout, images_dir)
        pool = found.get("training", [])
        if split_file:
            everything = pool + found.get("validation", []) + found.get("test", [])
            splits = _apply_split_file(everything, Path(split_file))
        elif not pool and found.get("test"):
            raise DatasetError(
                f"{root} holds only test cases ({len(found['test'])}, e.g. {found['test'][0]['image']}) and no "
                "training cases: add training pairs (imagesTr/ and labelsTr/ in this layout), or give a --split_file "
                "that assigns subjects to training, validation and test"
            )
        elif found.get("validation"):
            splits = {s: found.get(s, []) for s in SPLITS}
        else:
            splits = split_by_subject(pool, num_val, 0 if found.get("test") else num_test, seed)
            if found.get("test"):
                splits["test"] = found["test"]
        if not splits["training"]:
            raise DatasetError(f"no training cases found in {root}")
        if require_validation and not splits["validation"]:
            raise DatasetError(
                f"no validation cases: {len(splits['training'])} training subject(s) in {root} leave none for "
                f"validation at num_val {num_val}, and models/model.pt, the best validated model, would never be "
                "written. Give --datalist#num_val 1 (a count of subjects), add data, or give a --split_file with a "
                "validation list (a run that only writes checkpoints: --validate_final_epoch False with a "
                "val_interval above max_epochs)"
            )
        if validate:
            validate_entries([e for s in SPLITS for e in splits[s]], label_preset, num_workers=num_workers)
        logger.info("datalist from %s: %s", root, ", ".join(f"{len(splits[s])} {s}" for s in SPLITS if splits.get(s)))
        return splits
    except DatasetError as e:
        if exit_on_error:
            raise SystemExit(f"dataset error: {e}") from None
        raise
