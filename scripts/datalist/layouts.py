"""Finding the cases of each dataset layout (datalist.json, OAIZIB-CM, images/ + labels/, OAI-ZIB masks, label maps
only) and the scans of a folder to segment."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from scripts.datalist.names import (
    IMAGE_SUFFIXES,
    OUTPUT_POSTFIXES,
    SPLITS,
    DatasetError,
    _strip_image_suffix,
    case_name,
    subject_id,
)

logger = logging.getLogger(__name__)


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


def collect_cases(root: Path, layout: str = "auto", images_dir: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Entries per split found in `root`, with the layout detected when `layout` is "auto"."""
    return _collect(root, _detect_layout(root) if layout == "auto" else layout, images_dir)


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
