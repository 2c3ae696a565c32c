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

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from scripts.io_utils import atomic_write_text
from scripts.labels import check_label_values, get_preset

__all__ = [
    "DatasetError",
    "IMAGE_SUFFIXES",
    "case_name",
    "subject_id",
    "cross_validation_folds",
    "fold_path",
    "find_scans",
    "scan_datalist",
    "find_pairs",
    "from_oaizib_cm",
    "from_oai_zib",
    "from_labels",
    "split_by_subject",
    "validate_entries",
    "prepare_datalist",
]

logger = logging.getLogger(__name__)

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


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".ima"):
        return True
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _is_dicom_dir(path: Path) -> bool:
    return path.is_dir() and any(_is_dicom_file(p) for p in sorted(path.iterdir())[:20] if p.is_file())


def _require_dir(folder: str | Path, what: str) -> Path:
    path = Path(folder).expanduser()
    if not path.exists():
        raise DatasetError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{what} {path} is not a folder")
    return path


def find_scans(folder: str | Path) -> list[Path]:
    """Image files (NIfTI, MetaImage, NRRD) and DICOM series folders directly inside `folder`, sorted by name."""
    path = _require_dir(folder, "scan folder")
    if _is_dicom_dir(path):
        return [path]
    files = [p for p in sorted(path.iterdir()) if not p.name.startswith(".")]
    scans = [p for p in files if (p.is_file() and _strip_image_suffix(p.name) is not None) or _is_dicom_dir(p)]
    if not scans:
        raise DatasetError(
            f"no scans in {path.absolute()}: expected files ending in {', '.join(IMAGE_SUFFIXES)} or DICOM series "
            "folders"
        )
    detached_data = (".raw", ".zraw")  # the data files of .mhd/.nhdr headers, read with their header
    ignored = [p.name for p in files if p.is_file() and p not in scans and p.suffix.lower() not in detached_data]
    if ignored:
        logger.info("ignored %d file(s) in %s that are not scans (e.g. %s)", len(ignored), path, ignored[0])
    return scans


def scan_datalist(path: str | Path, exit_on_error: bool = False) -> list[dict[str, str]]:
    """Inference input: one entry per scan for a folder of scans, a single scan file, or one DICOM series folder.

    Args:
        path: the config's `dataset_dir`.
        exit_on_error: raise SystemExit with the one-line message instead of a DatasetError (used by configs, so a
            user sees the problem, not a stack trace from inside the config parser).
    """
    try:
        target = Path(path).expanduser()
        if target.is_file():
            if _strip_image_suffix(target.name) is None and not _is_dicom_file(target):
                raise DatasetError(f"{target} is not a NIfTI, MetaImage, NRRD or DICOM file")
            return [{"image": str(target)}]
        return [{"image": str(p)} for p in _without_own_outputs(find_scans(target), target)]
    except DatasetError as e:
        if exit_on_error:
            raise SystemExit(f"dataset error: {e}") from None
        raise


def _without_own_outputs(scans: list[Path], folder: Path) -> list[Path]:
    """Drop `X_seg` / `X_thickness` files that sit beside a scan `X` (this bundle's outputs of an earlier run into
    the scan folder, which would otherwise be segmented as knees), and refuse two scans that would write the same
    outputs (`knee.nii` and `knee.nii.gz`, `knee_0000.nii.gz` and `knee.nii.gz`)."""
    names = {p: case_name(p) for p in scans}
    cases = set(names.values())
    own = [p for p, n in names.items() if any(n.endswith(x) and n[: -len(x)] in cases for x in OUTPUT_POSTFIXES)]
    if own:
        logger.warning(
            "skipped %d file(s) that look like this bundle's outputs for scans in the same folder (e.g. %s)",
            len(own),
            own[0].name,
        )
    kept = [p for p in scans if p not in own]
    _index_by_case(kept, folder, "their outputs would overwrite each other; rename one")
    return kept


def _index_by_case(files: Iterable[Path], where: Path, why: str = "") -> dict[str, Path]:
    index: dict[str, Path] = {}
    for f in files:
        name = case_name(f)
        if name in index:
            raise DatasetError(
                f"two files in {where} map to the same case {name!r}: {index[name].name}, {f.name}"
                + (f"; {why}" * bool(why))
            )
        index[name] = f
    return index


def find_pairs(images_dir: str | Path, labels_dir: str | Path) -> list[dict[str, str]]:
    """Pair images and labels by case name; every unpaired file is reported in one error."""
    images_path, labels_path = _require_dir(images_dir, "image folder"), _require_dir(labels_dir, "label folder")
    images = _index_by_case(find_scans(images_path), images_path)
    labels = _index_by_case(find_scans(labels_path), labels_path)
    problems = [f"image without label: {images[c]}" for c in sorted(images.keys() - labels.keys())]
    problems += [f"label without image: {labels[c]}" for c in sorted(labels.keys() - images.keys())]
    if problems:
        raise DatasetError(f"cannot pair {images_path} with {labels_path}:\n  " + "\n  ".join(problems))
    return [
        {"image": str(images[c]), "label": str(labels[c]), "subject": subject_id(c), "case": c} for c in sorted(images)
    ]


def from_oaizib_cm(dataset_dir: str | Path) -> dict[str, list[dict[str, str]]]:
    """OAIZIB-CM / nnU-Net layout: `imagesTr`+`labelsTr` form the training pool, `imagesTs`+`labelsTs` the test set."""
    root = _require_dir(dataset_dir, "dataset_dir")
    out = {"training": find_pairs(root / "imagesTr", root / "labelsTr")}
    if (root / "imagesTs").is_dir() and (root / "labelsTs").is_dir():
        out["test"] = find_pairs(root / "imagesTs", root / "labelsTs")
    return out


def from_oai_zib(masks_dir: str | Path, images_dir: str | Path) -> list[dict[str, str]]:
    """OAI-ZIB: `<id>.segmentation_masks.mhd` masks paired with the OAI DESS scans in `images_dir` by subject id."""
    masks_path = _require_dir(masks_dir, "OAI-ZIB mask folder")
    masks = sorted(masks_path.rglob("*.segmentation_masks.mhd"))
    if not masks:
        raise DatasetError(f"no OAI-ZIB masks (*.segmentation_masks.mhd) under {masks_path}")
    scans: dict[str, list[Path]] = {}
    for scan in find_scans(images_dir):
        scans.setdefault(subject_id(scan.name), []).append(scan)
    entries, problems = [], []
    for mask in masks:
        sid = subject_id(mask.name)
        found = scans.get(sid, [])
        if len(found) != 1:
            problems.append(f"{mask.name}: {'no scan' if not found else f'{len(found)} scans'} for subject {sid}")
            continue
        entries.append({"image": str(found[0]), "label": str(mask), "subject": sid, "case": case_name(mask)})
    if problems:
        raise DatasetError(f"cannot pair OAI-ZIB masks with scans in {images_dir}:\n  " + "\n  ".join(problems))
    return entries


def from_labels(labels_dir: str | Path) -> list[dict[str, str]]:
    """Label maps only: entries with a `label` and no `image` (for label-to-image synthesis)."""
    return [
        {"label": str(p), "subject": subject_id(p.name), "case": case_name(p)}
        for p in find_scans(labels_dir)
        if p.is_file()
    ]


def split_by_subject(
    entries: Sequence[Mapping[str, str]], num_val: int | float, num_test: int | float = 0, seed: int = 0
) -> dict[str, list[dict[str, str]]]:
    """Split entries into training/validation/test with disjoint subjects, reproducibly for a given seed.

    Args:
        entries: dicts with a `subject` key.
        num_val: validation subjects, a count (int) or a fraction of subjects (float < 1).
        num_test: test subjects, likewise.
        seed: shuffling seed.
    """
    subjects = sorted({e["subject"] for e in entries})
    random.Random(seed).shuffle(subjects)

    def count(n: int | float) -> int:
        return int(round(n * len(subjects))) if isinstance(n, float) and n < 1 else int(n)

    n_val, n_test = count(num_val), count(num_test)
    if n_val + n_test >= len(subjects):
        raise DatasetError(
            f"{len(subjects)} subjects cannot give {n_val} validation and {n_test} test subjects and keep any for "
            "training; add data or lower num_val/num_test"
        )
    groups = {
        "test": set(subjects[:n_test]),
        "validation": set(subjects[n_test : n_test + n_val]),
        "training": set(subjects[n_test + n_val :]),
    }
    return {split: [dict(e) for e in entries if e["subject"] in groups[split]] for split in SPLITS}


def cross_validation_folds(
    entries: Sequence[Mapping[str, str]], folds: int, num_val: int | float = 4, seed: int = 0
) -> list[dict[str, list[dict[str, str]]]]:
    """`folds` subject-disjoint splits in which every subject is a test subject exactly once (k-fold cross-validation).

    Why: a test set of a few subjects cannot tell models 1-2 Dice points apart; scoring every subject once, each by
    a model that never saw it, can. The seeded shuffle of `split_by_subject` is cut into `folds` test groups (sizes
    differ by at most one); fold i validates on `num_val` subjects taken from the groups after group i, and trains
    on the rest.
    """
    subjects = sorted({e["subject"] for e in entries})
    if isinstance(num_val, bool) or num_val != int(num_val) or num_val < 1:
        raise DatasetError(
            f"num_val must be a whole number of validation subjects (at least 1) per fold, got {num_val!r}"
        )
    num_val = int(num_val)
    if folds < 2 or folds > len(subjects):
        raise DatasetError(f"folds must be from 2 to the number of subjects ({len(subjects)}), got {folds}")
    random.Random(seed).shuffle(subjects)
    groups = [subjects[i::folds] for i in range(folds)]
    out = []
    for i in range(folds):
        others = [s for g in groups[i + 1 :] + groups[:i] for s in g]
        if num_val >= len(others):
            raise DatasetError(
                f"fold {i}: {len(others)} non-test subjects cannot give {num_val} validation subjects and keep any "
                "for training; lower num_val or folds"
            )
        owner = {s: "test" for s in groups[i]}
        owner.update({s: "validation" for s in others[:num_val]})
        owner.update({s: "training" for s in others[num_val:]})
        out.append({split: [dict(e) for e in entries if owner[e["subject"]] == split] for split in SPLITS})
    return out


def _apply_split_file(entries: Sequence[Mapping[str, str]], split_file: Path) -> dict[str, list[dict[str, str]]]:
    """Assign entries to splits by the subject ids listed in a committed split file."""
    try:
        spec = json.loads(split_file.read_text())
    except FileNotFoundError:
        raise DatasetError(f"split_file {split_file} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"split_file {split_file} cannot be read as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(spec, Mapping) or not any(isinstance(spec.get(s), list) for s in SPLITS):
        raise DatasetError(f"split_file {split_file} must be a JSON object with subject-id lists under {list(SPLITS)}")
    owner = {str(s): split for split in SPLITS for s in spec.get(split, [])}
    missing = sorted({e["subject"] for e in entries} - owner.keys())
    if missing:
        raise DatasetError(f"subjects {missing[:10]} are not assigned to any split in {split_file}")
    out: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for e in entries:
        out[owner[e["subject"]]].append(dict(e))
    return out


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


def _resolve(entries: Iterable[Mapping[str, Any]], base: Path) -> list[dict[str, Any]]:
    out = []
    for e in entries:
        d = dict(e)
        for key in ("image", "label"):
            if key in d and not Path(d[key]).is_absolute():
                d[key] = str(base / d[key])
        d.setdefault("case", case_name(d.get("label") or d["image"]))
        d.setdefault("subject", subject_id(d["case"]))
        out.append(d)
    return out


def _detect_layout(root: Path) -> str:
    if (root / "datalist.json").is_file():
        return "datalist"
    if (root / "imagesTr").is_dir():
        return "oaizib-cm"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "pairs"
    if any(root.rglob("*.segmentation_masks.mhd")):
        return "oai-zib"
    return "labels"


def _collect(root: Path, layout: str, images_dir: str | None) -> dict[str, list[dict[str, Any]]]:
    """Entries per split found in `root` ("training" is the pool that is later split into training/validation)."""
    if layout == "datalist":
        spec = json.loads((root / "datalist.json").read_text())
        return {split: _resolve(spec[split], root) for split in SPLITS if spec.get(split)}
    if layout == "oaizib-cm":
        return from_oaizib_cm(root)
    if layout == "pairs":
        return {"training": find_pairs(root / "images", root / "labels")}
    if layout == "oai-zib":
        if not images_dir:
            raise DatasetError(f"{root} holds OAI-ZIB masks; set images_dir to the folder of the matching OAI scans")
        return {"training": from_oai_zib(root, images_dir)}
    if layout == "labels":
        return {"training": from_labels(root)}
    raise DatasetError(f"unknown layout {layout!r}; use auto, datalist, oaizib-cm, pairs, oai-zib or labels")


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
        found = _collect(root, _detect_layout(root) if layout == "auto" else layout, images_dir)
        pool = found.get("training", [])
        if split_file:
            everything = pool + found.get("validation", []) + found.get("test", [])
            splits = _apply_split_file(everything, Path(split_file))
        elif found.get("validation"):
            splits = {s: found.get(s, []) for s in SPLITS}
        else:
            splits = split_by_subject(pool, num_val, 0 if found.get("test") else num_test, seed)
            if found.get("test"):
                splits["test"] = found["test"]
        if not splits["training"]:
            raise DatasetError(f"no training cases found in {root}")
        if validate:
            validate_entries([e for s in SPLITS for e in splits[s]], label_preset, num_workers=num_workers)
        logger.info("datalist from %s: %s", root, ", ".join(f"{len(splits[s])} {s}" for s in SPLITS if splits.get(s)))
        return splits
    except DatasetError as e:
        if exit_on_error:
            raise SystemExit(f"dataset error: {e}") from None
        raise


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


def fold_path(output: str, fold: int) -> str:
    """OUTPUT with `{fold}` replaced, or with `_fold<i>` before its suffix (`cv.json` -> `cv_fold0.json`)."""
    if "{fold}" in output:
        return output.replace("{fold}", str(fold))
    path = Path(output)
    return str(path.with_name(f"{path.stem}_fold{fold}{path.suffix}"))


def _write_split_file(
    output: str, splits: Mapping[str, Sequence[Mapping[str, str]]], seed: int, overwrite: bool, extra=None
) -> str:
    spec: dict[str, Any] = {s: sorted({e["subject"] for e in splits[s]}) for s in SPLITS}
    spec["seed"] = seed
    spec.update(extra or {})
    atomic_write_text(output, json.dumps(spec, indent=2) + "\n", overwrite=overwrite)
    print(f"wrote {output}: " + ", ".join(f"{len(spec[s])} {s} subjects" for s in SPLITS))
    return output


def check(dataset_dir: str, label_preset: str = "oai-zib", layout: str = "auto", images_dir: str | None = None):
    """Check every image/label pair in DATASET_DIR and print all problems at once (exit code 1 if any)."""
    splits = prepare_datalist(dataset_dir, layout, label_preset, images_dir, 0, 0, 0, None, True, None, True)
    print(f"{sum(len(v) for v in splits.values())} cases in {dataset_dir}: all readable, 3D, matching, codes known")


if __name__ == "__main__":
    import fire

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fire.Fire({"build": build, "check": check, "write_split": write_split})
