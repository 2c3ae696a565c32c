"""How well does the expected Dice (scripts.confidence) rank segmentations by their measured Dice? Builds a test set
of knee phantoms at two levels of difficulty: as generated, and degraded the way a poor scan is (noise, blur, a bias
field, at a random strength per case). The evaluation (configs/evaluate.json, which writes the
expected Dice beside the measured one) is then run on it with a trained model:

    python -m scripts.experiments.expected_dice OUT_DIR [--num_cases 20] [--shape 40,128,128] [--seed 7]
    python -m monai.bundle run evaluating \\
        --config_file "['configs/train.json','configs/evaluate.json','configs/demo.json']" \\
        --dataset_dir OUT_DIR --output_dir OUT_DIR/eval --ckpt_dir runs/demo/models

(`run evaluating`, not `run`: demo.json's own `run` list trains, infers and evaluates.)

The evaluation log prints Spearman's rank correlation of expected and measured Dice per class; per-case values are
in OUT_DIR/eval/evaluation/metrics_volume.csv.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from scripts.cli import as_bool
from scripts.phantom import write_phantom_dataset


def degrade(image: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """A poorer scan of the same knee, with MONAI's own transforms, each scaled by `strength` in [0, 1]: in-plane
    blur (GaussianSmooth, sigma up to 1.5 voxels), a smooth multiplicative bias field (RandBiasField, degree 3,
    coefficients up to 0.4) and Gaussian noise (RandGaussianNoise, sd up to 15 % of the 99th intensity
    percentile)."""
    from monai.transforms import GaussianSmooth, RandBiasField, RandGaussianNoise

    scale = float(np.percentile(image, 99)) or 1.0
    x = torch.as_tensor(image, dtype=torch.float32)[None]
    x = GaussianSmooth(sigma=(0.0, 1.5 * strength, 1.5 * strength))(x)
    bias = RandBiasField(degree=3, coeff_range=(0.0, 0.4 * strength), prob=1.0).set_random_state(seed)
    noise = RandGaussianNoise(prob=1.0, std=0.15 * strength * scale, sample_std=False).set_random_state(seed)
    return np.clip(np.asarray(noise(bias(x)))[0], 0.0, None)


def main(
    output_dir: str, num_cases: int = 20, shape: str = "40,128,128", seed: int = 7, overwrite: bool = False
) -> str:
    """Write OUTPUT_DIR with `num_cases` test phantoms as generated plus a degraded copy of each (`<case>_poor`), and
    4 training phantoms (the evaluation's datalist wants a training split; they are not used)."""
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()) and not as_bool(overwrite, "overwrite"):
        raise SystemExit(f"error: {out} is not empty; pass --overwrite True to replace it")
    shutil.rmtree(out, ignore_errors=True)
    dims = tuple(int(x) for x in str(shape).split(",")) if isinstance(shape, str) else tuple(shape)
    write_phantom_dataset(out, num_cases=num_cases + 4, num_test=num_cases, shape=dims, seed=seed)
    rng = np.random.default_rng(seed)
    for image_path in sorted((out / "imagesTs").glob("*.nii.gz")):
        img = nib.load(str(image_path))
        strength = float(rng.uniform(0.3, 1.0))
        poor = degrade(np.asarray(img.dataobj, dtype=np.float32), strength, int(rng.integers(2**31)))
        case = image_path.name.removesuffix(".nii.gz")
        nib.save(nib.Nifti1Image(poor, img.affine, img.header), str(out / "imagesTs" / f"{case}_poor.nii.gz"))
        shutil.copy(out / "labelsTs" / f"{case}.nii.gz", out / "labelsTs" / f"{case}_poor.nii.gz")
        print(f"{case}_poor: degraded at strength {strength:.2f}")
    (out / "datalist.json").unlink(missing_ok=True)  # it lists the generated cases only; the folders hold them all
    return str(out)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
