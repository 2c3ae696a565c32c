"""How files are named: image suffixes, case names, OAI subject ids, and the error every dataset problem raises."""

from __future__ import annotations

import re
from pathlib import Path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr")


MODALITY_SUFFIX = re.compile(r"_0000$")  # nnU-Net channel-0 suffix; not any 4 digits, which a year like _2019 is


# names this bundle writes next to each scan (scripts.writers, scripts.quantify): a rerun must not segment them
OUTPUT_POSTFIXES = ("_seg", "_thickness")


OAI_ID = re.compile(r"(?<!\d)(9\d{6})(?!\d)")  # OAI subject ids are 7 digits starting with 9


SPLITS = ("training", "validation", "test")


class DatasetError(ValueError):
    """A dataset problem the user must fix (wrong folder, unpaired files, bad geometry); the message says which."""


def _strip_image_suffix(name: str) -> str | None:
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def case_name(path: str | Path) -> str:
    """File or folder name without image suffix and nnU-Net channel suffix: `knee_001_0000.nii.gz` -> `knee_001`."""
    name = Path(path).name
    stem = _strip_image_suffix(name)
    stem = name if stem is None else stem
    stem = stem.replace(".segmentation_masks", "")
    return MODALITY_SUFFIX.sub("", stem)


def subject_id(name: str) -> str:
    """The OAI subject id in `name` if there is one (so `9014797_00m` and `9014797_72m` share a subject), else the
    case name itself (every case its own subject)."""
    match = OAI_ID.search(name)
    return match.group(1) if match else case_name(name)
