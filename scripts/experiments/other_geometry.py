"""A real knee in another scanner's geometry: does inference find and measure its cartilage?

No real scan with labels can be used here, so this builds the closest stand-in: a real label map (e.g. one of the
OAI test subjects), an MR-like image synthesised from it with a fixed seed, both resampled to another site's
protocol (default a 3T sagittal DESS: 0.3125 x 0.3125 mm in-plane, 1.5 mm slices, 80 x 512 x 512) with slab-like
blur across slices, and stored in another orientation. `configs/inference.json` must reorient, resample in-plane,
segment and map the labels back; `compare` scores its output against the resampled truth in that geometry.

    python -m scripts.experiments.other_geometry make LABEL.nii.gz OUT_DIR [--seed 7]
    python -m monai.bundle run --config_file configs/inference.json --dataset_dir OUT_DIR/images ...
    python -m scripts.experiments.other_geometry compare PRED.nii.gz OUT_DIR/truth/CASE.nii.gz [--output x.json]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from monai.transforms import (
    Compose,
    GaussianSmoothd,
    LoadImaged,
    Orientationd,
    ResizeWithPadOrCropd,
    Spacingd,
)

from scripts.io_utils import atomic_path, atomic_write_text
from scripts.labels import RemapLabelsd
from scripts.synthesis import synthesize_knee_mr

__all__ = ["make", "compare"]

CLASSES = {1: "femoral cartilage", 2: "tibial cartilage"}
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # NIfTI world axes (silences a monai default-change warning)


def _save(array: np.ndarray, affine: np.ndarray, path: Path, dtype: type) -> None:
    with atomic_path(path, overwrite=False) as tmp:  # the temporary name keeps .nii.gz: nibabel compresses
        nib.save(nib.Nifti1Image(array.astype(dtype), affine), str(tmp))


def make(
    label: str,
    output_dir: str,
    preset: str = "oai-labels",
    spacing: Sequence[float] = (1.5, 0.3125, 0.3125),
    shape: Sequence[int] = (80, 512, 512),
    axcodes: str = "PIL",
    seed: int = 7,
) -> dict[str, str]:
    """Write `images/<case>.nii.gz` (float32) and `truth/<case>.nii.gz` (0/1/2) in the target geometry.

    Args:
        label: a label map of `preset` (RAS, axis 0 left-right after reorientation).
        output_dir: where `images/` and `truth/` go (existing files are never replaced).
        preset: label preset of `label`.
        spacing: target mm per axis in RAS order (left-right slice thickness first).
        shape: target voxels per axis in RAS order (padded or cropped about the centre).
        axcodes: orientation the files are stored in (not RAS, to exercise reorientation).
        seed: synthesis seed.
    """
    case = Path(label).name.split(".")[0]
    load = Compose(
        [
            LoadImaged("label", image_only=True, ensure_channel_first=True),
            Orientationd("label", axcodes="RAS", labels=RAS_LABELS),
        ]
    )
    d = load({"label": label})
    tissue = d["label"]
    image = synthesize_knee_mr(tissue, preset, generator=seed)
    d = {"image": MetaTensor(image, affine=tissue.affine), "label": tissue}
    d = RemapLabelsd("label", preset=preset)(d)
    src_spacing = np.sqrt((np.asarray(tissue.affine)[:3, :3] ** 2).sum(0))
    slab_sigma = max(0.0, (spacing[0] / src_spacing[0]) / 2.355)  # slab profile ~ a Gaussian of FWHM one slice
    geometry = Compose(
        [
            GaussianSmoothd("image", sigma=[slab_sigma, 0.0, 0.0]),
            Spacingd(["image", "label"], pixdim=tuple(spacing), mode=("bilinear", "nearest")),
            ResizeWithPadOrCropd(["image", "label"], spatial_size=tuple(shape)),
            Orientationd(["image", "label"], axcodes=axcodes, labels=RAS_LABELS),
        ]
    )
    d = geometry(d)
    out = Path(output_dir)
    paths = {"image": out / "images" / f"{case}.nii.gz", "truth": out / "truth" / f"{case}.nii.gz"}
    for key, dtype in (("image", np.float32), ("label", np.uint8)):
        path = paths["image" if key == "image" else "truth"]
        path.parent.mkdir(parents=True, exist_ok=True)
        array = d[key][0].numpy()
        if key == "label":
            array = np.rint(array)
        _save(array, np.asarray(d[key].affine, dtype=np.float64), path, dtype)
    return {k: str(v) for k, v in paths.items()}


def compare(prediction: str, truth: str, output: str | None = None) -> dict[str, dict[str, float]]:
    """Dice and volumes (mm³) per cartilage of a predicted label map against the truth, in the truth's geometry."""
    pred_img, true_img = nib.load(prediction), nib.load(truth)
    if pred_img.shape != true_img.shape or not np.allclose(pred_img.affine, true_img.affine, atol=1e-3):
        raise ValueError(
            f"{prediction} and {truth} differ in geometry: shapes {pred_img.shape} vs {true_img.shape}, "
            f"affines\n{pred_img.affine}\nvs\n{true_img.affine}"
        )
    pred = torch.as_tensor(np.asarray(pred_img.dataobj).astype(np.int64))
    true = torch.as_tensor(np.asarray(true_img.dataobj).astype(np.int64))
    n_classes = max(CLASSES) + 1
    dice = compute_dice(  # (1, classes) for one case; nan where neither map has the class
        one_hot(pred[None, None], n_classes), one_hot(true[None, None], n_classes), include_background=False
    )[0]
    voxel_mm3 = float(np.prod(true_img.header.get_zooms()[:3]))
    result: dict[str, dict[str, float]] = {}
    for code, name in CLASSES.items():
        p, t = pred == code, true == code
        result[name] = {
            "dice": float(dice[code - 1]),
            "volume_pred_mm3": float(p.sum() * voxel_mm3),
            "volume_true_mm3": float(t.sum() * voxel_mm3),
        }
        result[name]["volume_error_pct"] = (
            100.0 * (result[name]["volume_pred_mm3"] / result[name]["volume_true_mm3"] - 1.0)
            if bool(t.any())
            else float("nan")
        )
    print("| structure | Dice | volume predicted / mm³ | volume truth / mm³ | volume error / % |")
    print("|---|---|---|---|---|")
    for name, r in result.items():
        print(
            f"| {name} | {r['dice']:.3f} | {r['volume_pred_mm3']:.0f} | {r['volume_true_mm3']:.0f} | "
            f"{r['volume_error_pct']:+.1f} |"
        )
    if output:
        atomic_write_text(output, json.dumps({"prediction": prediction, "truth": truth, **result}, indent=2))
    return result


if __name__ == "__main__":
    import fire

    fire.Fire({"make": make, "compare": compare})
