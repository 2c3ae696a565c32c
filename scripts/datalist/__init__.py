"""Datalists: find image/label pairs in the dataset layouts users have, split them by subject, validate every pair.

Layouts understood (`layout="auto"` detects them in this order):
- `datalist`: a `datalist.json` in `dataset_dir` (Decathlon style, paths relative to `dataset_dir`), e.g. phantoms.
- `oaizib-cm`: `imagesTr/ labelsTr/ [imagesTs/ labelsTs/]`, nnU-Net style (`X_0000.nii.gz` pairs with `X.nii.gz`).
- `pairs`: `images/` and `labels/` folders paired by file name (optional `_0000` image suffix).
- `oai-zib`: OAI-ZIB masks `<id>.segmentation_masks.mhd` in `dataset_dir`, paired by subject id with scans in
  `images_dir` (files or DICOM series folders whose name contains the id).
- `labels`: label maps only (images are synthesised from them, see `configs/train_from_labels.json`).

Two visits of one knee are the same anatomy: splits are made by SUBJECT (the 7-digit OAI id when a name has one),
never by file, so no subject straddles training, validation and test.
"""

from scripts.datalist.cli import build, check, write_split
from scripts.datalist.layouts import find_pairs, find_scans, from_labels, from_oai_zib, from_oaizib_cm, scan_datalist
from scripts.datalist.names import IMAGE_SUFFIXES, DatasetError, case_name, subject_id
from scripts.datalist.prepare import prepare_datalist
from scripts.datalist.splits import cross_validation_folds, fold_path, split_by_subject
from scripts.datalist.validation import validate_entries

__all__ = [
    "DatasetError",
    "IMAGE_SUFFIXES",
    "build",
    "case_name",
    "check",
    "cross_validation_folds",
    "find_pairs",
    "find_scans",
    "fold_path",
    "from_labels",
    "from_oai_zib",
    "from_oaizib_cm",
    "prepare_datalist",
    "scan_datalist",
    "split_by_subject",
    "subject_id",
    "validate_entries",
    "write_split",
]
