"""How long does the small-piece clean-up (scripts.components) take on full-size knees? Times it on real label maps
as they are (one femoral piece, two tibial plateaus, a few tiny manual pieces) and with stray pieces added far from
the joint (what a slice-wise network makes, and what widens the labelled box to the whole scan):

    python -m scripts.experiments.components_speed LABELS_DIR [--preset oai-labels] [--every 6] [--strays 6]
        [--repeats 3] [--threads 2] [--output docs/bench/components_speed.json]

Prints a table (median and largest time per map over the maps) and writes JSON. Every timed call is checked to
remove exactly the added strays' voxels plus the maps' own pieces below the threshold.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from scripts.components import remove_small_components
from scripts.io_utils import atomic_write_text
from scripts.labels import RemapLabelsd


def _class_map(path: Path, preset_name: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """The map's training classes (0/1/2) through the bundle's own loading and preset remapping, and its spacing."""
    load = Compose(
        [LoadImaged("label", image_only=True), EnsureChannelFirstd("label"), RemapLabelsd("label", preset_name)]
    )
    label = load({"label": str(path)})["label"]
    return np.asarray(label[0]), tuple(float(s) for s in label.pixdim.tolist())


def _add_strays(label: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` 2 x 3 x 3-voxel pieces at random places outside the cartilage (about 1.7 mm^3 at OAI's spacing)."""
    rng = np.random.default_rng(seed)
    out, placed = label.copy(), 0
    while placed < count:
        corner = [int(rng.integers(0, n - 3)) for n in label.shape]
        box = tuple(slice(c, c + s) for c, s in zip(corner, (2, 3, 3)))
        grown = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        if out[grown].any():  # touching cartilage or another stray: not a stray piece
            continue
        out[box] = int(rng.integers(1, 3))
        placed += 1
    return out


def _median_time(label: np.ndarray, spacing: tuple[float, ...], threshold: float, repeats: int) -> float:
    tensor = torch.as_tensor(label[None])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        remove_small_components(tensor, threshold, spacing)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(
    labels_dir: str,
    preset: str = "oai-labels",
    every: int = 6,
    strays: int = 6,
    threshold_mm3: float = 10.0,
    repeats: int = 3,
    threads: int = 2,
    output: str = "",
) -> None:
    """Time the clean-up on every `every`-th label map of `labels_dir`; write JSON to `output` if given."""
    paths = sorted(Path(labels_dir).glob("*.nii*"))[::every]
    if not paths:
        raise FileNotFoundError(f"no NIfTI label maps (*.nii, *.nii.gz) in {labels_dir}")
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {"as labelled": [], f"with {strays} far strays": []}
    for index, path in enumerate(paths):
        label, spacing = _class_map(path, preset)
        strayed = _add_strays(label, strays, seed=index)
        own = int((label != np.asarray(remove_small_components(label[None], threshold_mm3, spacing))[0]).sum())
        removed = int((strayed != np.asarray(remove_small_components(strayed[None], threshold_mm3, spacing))[0]).sum())
        if removed != own + strays * 18:
            raise AssertionError(f"{path.name}: removed {removed} voxels, expected {own} + {strays * 18} strays")
        times["as labelled"].append(_median_time(label, spacing, threshold_mm3, repeats))
        times[f"with {strays} far strays"].append(_median_time(strayed, spacing, threshold_mm3, repeats))
        print(f"[{index + 1}/{len(paths)}] {path.name} shape {label.shape}", flush=True)
    rows = [
        {"case": case, "maps": len(v), "median_s": float(np.median(v)), "max_s": float(np.max(v))}
        for case, v in times.items()
    ]
    print(f"\n{'case':24s} {'maps':>5s} {'median s':>9s} {'max s':>7s}")
    for row in rows:
        print(f"{row['case']:24s} {row['maps']:5d} {row['median_s']:9.3f} {row['max_s']:7.3f}")
    result = {
        "rows": rows,
        "threshold_mm3": threshold_mm3,
        "threads": threads,
        "repeats": repeats,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "cpu": platform.processor() or platform.machine(),
    }
    if output:
        atomic_write_text(output, json.dumps(result, indent=2) + "\n")
        print(f"wrote {output}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
