"""Phantom volumes for the measurements that need data, cached across runs."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from scripts.benchmark.common import _log, _rel
from scripts.io_utils import atomic_path, atomic_write_text


def _write_phantom_case(folder: str, name: str, shape: tuple[int, int, int], seed: int) -> str:
    """Generate one knee phantom and write image (int16) and OAI-ZIB label (uint8) NIfTI files atomically."""
    import nibabel as nib

    from scripts.phantom import simulate_knee

    knee = simulate_knee(shape, seed)
    for sub, array in (("images", knee.image), ("labels", knee.label)):
        target = Path(folder) / sub / f"{name}.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(array, knee.affine)
        img.set_qform(knee.affine, code=1)
        img.set_sform(knee.affine, code=1)
        img.header.set_xyzt_units("mm")
        with atomic_path(target) as tmp:
            nib.save(img, str(tmp))
    return name


def ensure_phantoms(
    data_dir: str | Path, shape: Sequence[int], num_train: int, num_test: int, seed: int = 0, workers: int = 0
) -> Path:
    """A phantom dataset `data_dir/knee_DxHxW_sSEED` with `datalist.json` listing `num_train` training and
    `num_test` test cases (the bundle's `datalist` layout); cases already there are reused, missing ones generated
    in parallel. Training case i uses seed (seed, i), test case i seed (seed + 1, i)."""
    from scripts.phantom import case_seed

    shape = tuple(int(s) for s in shape)
    folder = Path(data_dir) / f"knee_{'x'.join(map(str, shape))}_s{seed}"
    cases = [(f"train_{i:03d}", case_seed(seed, i)) for i in range(num_train)]
    cases += [(f"test_{i:03d}", case_seed(seed + 1, i)) for i in range(num_test)]
    missing = [
        (n, s) for n, s in cases if not all((folder / d / f"{n}.nii.gz").is_file() for d in ("images", "labels"))
    ]
    if missing:
        workers = workers or max(1, min(len(missing), os.cpu_count() or 1, 8))
        _log(f"generating {len(missing)} knee phantom(s) of {shape} in {_rel(folder)} with {workers} process(es)")
        start = time.perf_counter()
        if workers == 1:
            for n, s in missing:
                _write_phantom_case(str(folder), n, shape, s)
        else:
            method = "spawn" if torch.cuda.is_initialized() else "fork"
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
                list(
                    pool.map(
                        _write_phantom_case,
                        [str(folder)] * len(missing),
                        [n for n, _ in missing],
                        [shape] * len(missing),
                        [s for _, s in missing],
                    )
                )
        _log(f"phantoms ready in {time.perf_counter() - start:.1f} s")

    def entry(name: str) -> dict[str, str]:
        return {"image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz", "subject": name}

    datalist = {
        "name": "benchmark knee phantoms",
        "label_preset": "oai-zib",
        "shape": list(shape),
        "training": [entry(n) for n, _ in cases[:num_train]],
        "test": [entry(n) for n, _ in cases[num_train:]],
    }
    text = json.dumps(datalist, indent=2) + "\n"
    target = folder / "datalist.json"
    if not target.is_file() or target.read_text() != text:
        atomic_write_text(target, text)
    return folder
