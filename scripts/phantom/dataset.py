"""Writing phantom datasets: the OAIZIB-CM folder layout (or OAI-ZIB-style MetaImage) plus `datalist.json`, and the CLI.

Every file is written atomically and a non-empty folder is refused unless asked: a user's data is never mixed or lost.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scripts.cli import as_bool
from scripts.io_utils import atomic_path, atomic_write_text
from scripts.phantom.conventions import DEFAULT_SHAPE, TISSUES
from scripts.phantom.simulate import KneePhantom, as_shape, case_seed, default_spacing, simulate_knee

logger = logging.getLogger(__name__)

_FORMATS = {"nii.gz": (".nii.gz",), "mhd": (".mhd", ".raw")}


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """NIfTI with qform and sform both set to the RAS affine (scanner code), units mm."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def _write_metaimage(path: Path, array: np.ndarray, spacing: Sequence[float], origin: Sequence[float]) -> None:
    """MetaImage (.mhd + .raw, like the OAI-ZIB masks) in ITK's LPS world, so ITK readers see the same RAS volume.

    ITK names the .raw after the header, so it writes into a staging folder beside the target; each file then moves
    into place atomically, the .raw before the .mhd that points to it.
    """
    import itk

    image = itk.image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0)))  # ITK wants (z, y, x) memory order
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([-float(origin[0]), -float(origin[1]), float(origin[2])])  # RAS -> LPS
    image.SetDirection(itk.matrix_from_array(np.diag([-1.0, -1.0, 1.0])))
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=path.parent))
    try:
        itk.imwrite(image, str(stage / path.name), compression=False)
        raw = path.with_suffix(".raw")
        for staged, target in ((stage / raw.name, raw), (stage / path.name, path)):
            with atomic_path(target) as tmp:
                os.replace(staged, tmp)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _write_volume(path: Path, array: np.ndarray, knee: KneePhantom, fmt: str) -> None:
    if fmt == "nii.gz":
        _write_nifti(path, array, knee.affine)
    else:
        _write_metaimage(path, array, knee.spacing, knee.origin)


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless `overwrite`: generated files must never silently mix with a user's data."""
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"{output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output folder {output_dir} is not empty; choose an empty or new folder, or pass --overwrite True "
            "(overwrite=True in Python) to replace the phantom files in it"
        )


def write_phantom_dataset(
    output_dir: str | os.PathLike,
    num_cases: int = 12,
    shape: Sequence[int] | str = DEFAULT_SHAPE,
    seed: int = 0,
    num_test: int = 3,
    fmt: str = "nii.gz",
    overwrite: bool = False,
    defects: bool = True,
) -> Path:
    """Write `num_cases` phantoms in the OAIZIB-CM layout plus `datalist.json`; return the datalist's path.

    Cases 0 .. num_cases - num_test - 1 go to imagesTr/labelsTr, the last `num_test` to imagesTs/labelsTs. Case i uses
    `case_seed(seed, i)`. The datalist is written last, so its presence marks a complete dataset. With `overwrite`,
    files of the same names are replaced and other files in the folder are left alone.
    """
    output_dir = Path(output_dir)
    shape = as_shape(shape)
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {sorted(_FORMATS)}, got {fmt!r}")
    if int(num_cases) < 1 or not 0 <= int(num_test) <= int(num_cases):
        raise ValueError(f"need num_cases >= 1 and 0 <= num_test <= num_cases, got {num_cases=} {num_test=}")
    _check_output_dir(output_dir, overwrite)
    num_cases, num_test = int(num_cases), int(num_test)
    width = max(3, len(str(num_cases - 1)))
    ext = _FORMATS[fmt][0]
    lists: dict[str, list[dict[str, str]]] = {"training": [], "test": []}
    start = time.perf_counter()
    for i in range(num_cases):
        subject = f"phantom_{i:0{width}d}"
        split, suffix = ("training", "Tr") if i < num_cases - num_test else ("test", "Ts")
        knee = simulate_knee(shape, case_seed(seed, i), defects=defects)
        item = {
            "image": f"images{suffix}/{subject}{ext}",
            "label": f"labels{suffix}/{subject}{ext}",
            "subject": subject,
        }
        (output_dir / f"images{suffix}").mkdir(parents=True, exist_ok=True)
        (output_dir / f"labels{suffix}").mkdir(parents=True, exist_ok=True)
        _write_volume(output_dir / item["image"], knee.image, knee, fmt)
        _write_volume(output_dir / item["label"], knee.label, knee, fmt)
        lists[split].append(item)
        elapsed = time.perf_counter() - start
        eta = elapsed / (i + 1) * (num_cases - i - 1)
        logger.info("phantom %d/%d %s (%s), %.1f s elapsed, ETA %.0f s", i + 1, num_cases, subject, split, elapsed, eta)
    datalist = {
        "name": "knee phantoms",
        "description": "procedural DESS-like knee MR phantoms (scripts/phantom/); label codes as OAI-ZIB",
        "label_preset": "oai-zib",
        "labels": {str(c): TISSUES[c] for c in range(5)},
        "shape": list(shape),
        "spacing": list(default_spacing(shape)),
        "seed": int(seed),
        "format": fmt,
        "training": lists["training"],
        "test": lists["test"],
    }
    return atomic_write_text(output_dir / "datalist.json", json.dumps(datalist, indent=2) + "\n")


def main(
    output_dir: str,
    num_cases: int = 12,
    shape: str | Sequence[int] = "160,384,384",
    seed: int = 0,
    num_test: int = 3,
    format: str = "nii.gz",
    overwrite: bool = False,
    defects: bool = True,
) -> str:
    """Generate knee MR phantoms (DESS-like images, OAI-ZIB labels) into OUTPUT_DIR; prints the datalist's path.

    Args:
        output_dir: folder to create (must be empty or new unless --overwrite).
        num_cases: number of knees; the last `num_test` go to imagesTs/labelsTs, the rest to imagesTr/labelsTr.
        shape: D,H,W voxels (left-right, posterior-anterior, inferior-superior), e.g. 40,96,96; the spacing scales
            so the field of view stays OAI's 112 x 140 x 140 mm (160,384,384 -> 0.7 x 0.3646 x 0.3646 mm).
        seed: dataset seed; case i uses a seed derived from (seed, i).
        num_test: number of test cases.
        format: nii.gz (NIfTI, OAIZIB-CM style) or mhd (MetaImage .mhd + .raw, OAI-ZIB style).
        overwrite: allow writing into a non-empty folder, replacing files of the same names.
        defects: add focal cartilage defects and bone-marrow lesions.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        overwrite, defects = as_bool(overwrite, "overwrite"), as_bool(defects, "defects")  # `--overwrite false`: False
        path = write_phantom_dataset(output_dir, num_cases, shape, seed, num_test, format, overwrite, defects)
    except (FileExistsError, NotADirectoryError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None  # a clear one-line message, not a traceback
    return str(path)
