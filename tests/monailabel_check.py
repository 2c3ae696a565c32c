"""Drive the bundle through MONAI Label 0.8.5's own bundle tasks, as its `monaibundle` sample app does.

Why a separate script (not collected by pytest): monailabel 0.8.5 pins numpy<2 and jsonschema<4 and pulls a CUDA
torch 2.14 with torchvision, so it lives in its own virtual environment (`scripts/check_monailabel.sh` builds it and
runs this file). The bundle must still work there (numpy 1.26).

What it checks, on a throw-away COPY of the bundle in a temporary folder (the repository's models/ stays untouched):
1. Inference: `monailabel.tasks.infer.bundle.BundleInferTask(<bundle>, conf)` loads `configs/inference.json` and a
   randomly initialised EAS U-Net `models/model.pt`; its labels are {"femoral cartilage": 1, "tibial cartilage": 2}
   and its dimension is 2 (metadata); a request on a phantom volume, stored once in RAS and once in a reoriented
   (axes permuted and flipped) copy, returns a NIfTI label map with the input's shape and affine and values in
   {0, 1, 2}; with the network output replaced by the ground truth on the network's grid (an "oracle", through
   BasicInferTask's INFERER callback) the returned map reproduces the ground truth (Dice >= 0.9 per class), which
   proves the geometry and label codes of the whole chain; nothing is written into the bundle by a request.
2. Training: `monailabel.tasks.train.bundle.BundleTrainTask(<bundle>, conf)` runs a 1-epoch request (CPU, no multi-GPU,
   `pretrained` true so MONAI Label inserts its own CheckpointLoader for the existing model.pt) on a MONAI Label
   `LocalDatastore` holding phantom images and their labels as MONAI Label stores them (`labels/final`, coded in the
   bundle's classes 0/1/2). It must write a new `models/model.pt` (loadable, strict, into the inference network) and the
   latest-state checkpoint. Then inference runs again with the trained model.
3. onnxruntime (`cpu_runtime`): a request with the network in onnxruntime gives PyTorch's logits (fp32 both, within
   1e-3) and label map, before training and, with the same task object, after it (MONAI Label loads the new
   model.pt into a fresh copy of its network; the bundle must export that, not rerun the old session: the logits
   must have moved).

The train request goes through a subclass that only uses BundleTrainTask's extension hook `_update_overrides` (the
one an app would use) to make the run CPU-sized (slices per epoch, batch size, workers, validation every epoch). The
two settings a stock `monaibundle` app cannot pass (labels in the bundle's classes, fine-tuning models/model.pt in
place) the bundle takes from the environment that `monailabel start_server` exports (`MONAI_LABEL_APP_DIR`); this
script sets that variable the way the server does, since it drives the tasks without a server.

Usage (inside the MONAI Label environment, from the repository root):
    python tests/monailabel_check.py [--workdir DIR] [--shape 32,128,128] [--keep]
Prints one JSON summary; exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_NAME = "knee_mri_cartilage_segmentation"  # the Zoo name; MONAI Label derives the task type from it
BUNDLE_ITEMS = ("configs", "scripts", "LICENSE")  # what the bundle needs at run time (no data, docs or tests)
EXPECTED_LABELS = {"femoral cartilage": 1, "tibial cartilage": 2}
APP_OVERRIDES: dict[str, Any] = {  # CPU sizes only; the network, transforms and label codes stay the bundle's own
    "slices_per_epoch": 16,
    "batch_size": 4,
    "num_workers": 0,
    "cache_rate": 0.0,
    "sw_batch_size": 8,
    "amp": False,
}

logger = logging.getLogger("monailabel_check")


class CheckFailed(AssertionError):
    """A MONAI Label expectation the bundle did not meet."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def copy_bundle(dest: Path) -> Path:
    """Copy the bundle's run-time files to `dest/<BUNDLE_NAME>` with an empty models/ folder."""
    bundle = dest / BUNDLE_NAME
    for item in BUNDLE_ITEMS:
        src = REPO_ROOT / item
        if src.is_dir():
            shutil.copytree(src, bundle / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            bundle.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, bundle / item)
    (bundle / "models").mkdir(parents=True, exist_ok=True)
    return bundle


def save_random_model(bundle: Path, seed: int = 0) -> Path:
    """A randomly initialised network from inference.json's `network_def`, saved as a plain state_dict."""
    from monai.bundle import ConfigParser

    sys.path.insert(0, str(bundle))
    try:
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        torch.manual_seed(seed)
        network = parser.get_parsed_content("network_def")
    finally:
        sys.path.remove(str(bundle))
    path = bundle / "models" / "model.pt"
    torch.save(network.state_dict(), path)
    return path


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_phantoms(bundle: Path, out_dir: Path, num_cases: int, shape: tuple[int, int, int]) -> list[dict[str, str]]:
    """Phantom volumes with the bundle's own generator; returns absolute image/label pairs."""
    sys.path.insert(0, str(bundle))
    try:
        from scripts.phantom import write_phantom_dataset

        path = write_phantom_dataset(out_dir, num_cases=num_cases, shape=shape, num_test=0)
        datalist = json.loads(Path(path).read_text())
    finally:
        sys.path.remove(str(bundle))
    return [{"image": str(out_dir / d["image"]), "label": str(out_dir / d["label"])} for d in datalist["training"]]


def reoriented_copy(image: Path, dest: Path) -> Path:
    """The same scan stored with permuted, flipped axes (a non-RAS on-disk layout), so that MONAI Label's restore step
    and the bundle's Invertd have to undo a real reorientation."""
    img = nib.load(str(image))
    ornt = np.array([[2, -1], [0, -1], [1, 1]])  # new axis 0 <- old axis 2 (flipped), 1 <- 0 (flipped), 2 <- 1
    data = nib.orientations.apply_orientation(np.asanyarray(img.dataobj), ornt)
    affine = img.affine @ nib.orientations.inv_ornt_aff(ornt, img.shape)
    nib.save(nib.Nifti1Image(data, affine), str(dest))
    return dest


def to_class_codes(label: Path, dest: Path) -> Path:
    """OAI-ZIB codes -> the bundle's classes 0/1/2 in a new file, as MONAI Label saves labels."""
    img = nib.load(str(label))
    nib.save(nib.Nifti1Image(class_codes(np.asanyarray(img.dataobj)), img.affine), str(dest))
    return dest


def build_datastore(pairs: list[dict[str, str]], store_dir: Path, scratch: Path):
    """A MONAI Label LocalDatastore with the images and their labels submitted as `final` (labels/final/)."""
    from monailabel.datastore.local import LocalDatastore

    store_dir.mkdir(parents=True, exist_ok=True)
    for pair in pairs:
        shutil.copy2(pair["image"], store_dir / Path(pair["image"]).name)
    datastore = LocalDatastore(str(store_dir), extensions=("*.nii.gz", "*.nii"), auto_reload=False)
    for pair in pairs:
        image_id = Path(pair["image"]).name[: -len(".nii.gz")]
        label = to_class_codes(Path(pair["label"]), scratch / f"{image_id}_label.nii.gz")
        datastore.save_label(image_id, str(label), "final", {})
    return datastore


def infer_task(bundle: Path):
    from monailabel.tasks.infer.bundle import BundleInferTask

    task = BundleInferTask(str(bundle), {"preload": "false"})
    require(task.is_valid(), "BundleInferTask rejected the bundle (no inference config or model)")
    return task


def class_codes(codes: np.ndarray) -> np.ndarray:
    """OAI-ZIB label codes -> the bundle's classes (2 femoral -> 1, 4 tibial -> 2, everything else 0)."""
    classes = np.zeros(codes.shape, np.uint8)
    classes[codes == 2], classes[codes == 4] = 1, 2
    return classes


def oracle_callback(truth: Path) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """An INFERER callback (BasicInferTask's hook) that replaces the network output by the one-hot ground truth
    resampled onto the network's grid. Everything after it (the bundle's Invertd and argmax, MONAI Label's Restored
    and writer) is the real chain, so the returned label map must reproduce the ground truth on the input's grid: a
    check of geometry and label codes that a random or 1-epoch model (which predicts only background) cannot give."""
    from monai.data import MetaTensor
    from monai.transforms import LoadImage, SpatialResample

    label = LoadImage(image_only=True, ensure_channel_first=True)(str(truth))
    classes = MetaTensor(torch.as_tensor(class_codes(np.asarray(label))), affine=label.affine, meta=label.meta)

    def callback(data: dict[str, Any]) -> dict[str, Any]:
        image = data["image"]  # the preprocessed input: RAS, resampled in-plane, padded
        grid = SpatialResample(mode="nearest")(classes, dst_affine=image.affine, spatial_size=image.shape[1:])
        one_hot = torch.nn.functional.one_hot(grid.as_tensor()[0].long(), 3).permute(3, 0, 1, 2).float()
        data["pred"] = MetaTensor(one_hot, affine=image.affine, meta=dict(image.meta))
        return data

    return callback


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def check_infer(
    task, image: Path, bundle: Path, truth: Path | None = None, keep: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One MONAI Label infer request; the result must overlay on the input (and match `truth` with the oracle).
    `keep` receives the label map under "labels" and, without `truth`, the network's logits under "logits" (through
    the same INFERER callback, which then only copies them)."""
    from monailabel.tasks.infer.basic_infer import CallBackTypes

    before = sorted(p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    callbacks = {CallBackTypes.INFERER: oracle_callback(truth)} if truth is not None else None
    if truth is None and keep is not None:

        def copy_logits(data: dict[str, Any]) -> dict[str, Any]:
            keep["logits"] = torch.as_tensor(data["pred"]).detach().float().cpu().clone()
            return data

        callbacks = {CallBackTypes.INFERER: copy_logits}
    start = time.perf_counter()
    label_file, result = task({"image": str(image), "device": "cpu"}, callbacks=callbacks)
    seconds = time.perf_counter() - start
    require(label_file is not None and Path(label_file).is_file(), f"no label file returned: {label_file!r}")
    source, output = nib.load(str(image)), nib.load(str(label_file))
    labels = np.asanyarray(output.dataobj)
    if keep is not None:
        keep["labels"] = np.array(labels)
    values = sorted(int(v) for v in np.unique(labels))
    require(output.shape == source.shape, f"label map shape {output.shape} != input shape {source.shape}")
    require(np.allclose(output.affine, source.affine, atol=1e-4), f"affine differs:\n{output.affine}\n{source.affine}")
    require(set(values) <= {0, 1, 2}, f"label values {values} not within {{0, 1, 2}}")
    after = sorted(p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    require(after == before, f"a MONAI Label request wrote into the bundle: {sorted(set(after) - set(before))}")
    summary: dict[str, Any] = {
        "image": image.name,
        "shape": list(output.shape),
        "affine_equal": True,
        "values": values,
        "label_names": result.get("label_names"),
        "seconds": round(seconds, 1),
    }
    if truth is not None:
        expected = class_codes(np.asanyarray(nib.load(str(truth)).dataobj))
        scores = {name: round(dice(labels == code, expected == code), 4) for name, code in EXPECTED_LABELS.items()}
        require(all(v >= 0.9 for v in scores.values()), f"oracle output does not overlay the ground truth: {scores}")
        summary["oracle_dice_vs_truth"] = scores
    return summary


def check_refuses_other_preprocessing(bundle: Path, image: Path) -> dict[str, Any]:
    """A model whose training record names other preprocessing than inference.json's fails the request with the
    bundle's paragraph (a ValueError, so the server lives on), instead of segmenting at the wrong scale."""
    record = bundle / "models" / "model_preprocessing.json"  # scripts.model_record.record_path
    record.write_text(json.dumps({"inplane_spacing": -1, "intensity_percentiles": [0.5, 99.5]}))
    try:
        task = infer_task(bundle)
        try:
            task({"image": str(image), "device": "cpu"})
        except Exception as e:  # MONAI's config parser wraps the check's ValueError
            chain, cause = [], e
            while cause is not None:
                chain.append(f"{type(cause).__name__}: {cause}")
                cause = cause.__cause__ or cause.__context__
            found = [c for c in chain if "trained on scans preprocessed otherwise" in c]
            require(bool(found), f"the request failed for another reason: {chain}")
            require(found[0].startswith("ValueError"), f"not a ValueError: {found[0][:120]}")
            return {"error": found[0][:160] + "..."}
        raise CheckFailed("a model trained with inplane_spacing -1 segmented at 0.3646 mm without an error")
    finally:
        record.unlink()


class RuntimeLog(logging.Handler):
    """Collects what scripts.onnx_runtime says about the runtime it picked."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def runtime_task(bundle: Path, runtime: str):
    """An infer task whose inference.json runs the network with `cpu_runtime` = runtime, in fp32 (amp off), set
    through the task's own ConfigParser as an app would."""
    task = infer_task(bundle)
    task.bundle_config["cpu_runtime"] = runtime
    task.bundle_config["amp"] = False
    return task


def check_onnxruntime_matches_torch(
    onnx_task, image: Path, bundle: Path, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The same request in onnxruntime and in PyTorch (both fp32) gives the same logits (and label map). After a train
    request the onnxruntime task is the one used before (`previous` holds its logits): MONAI Label loads the new
    model.pt into a fresh copy of its network, and the bundle must export that instead of running the old weights'
    session, so the logits must have moved with the weights."""
    handler = RuntimeLog()
    logging.getLogger("scripts.onnx_runtime").addHandler(handler)
    try:
        ort, ref = {}, {}
        summary = check_infer(onnx_task, image, bundle, keep=ort)
        check_infer(runtime_task(bundle, "torch"), image, bundle, keep=ref)
    finally:
        logging.getLogger("scripts.onnx_runtime").removeHandler(handler)
    said = [line for line in handler.lines if "exported to ONNX" in line]  # once per request: new weights each time
    require(bool(said), f"the onnxruntime request exported no network for onnxruntime: {handler.lines}")
    difference = float((ort["logits"] - ref["logits"]).abs().max())
    require(difference < 1e-3, f"onnxruntime and PyTorch logits differ by up to {difference:.3g}")
    require(bool((ort["labels"] == ref["labels"]).all()), "onnxruntime and PyTorch label maps differ")
    summary.update({"runtime_log": said[-1], "max_logit_difference_to_torch": float(f"{difference:.3g}")})
    if previous is not None:
        moved = float((ort["logits"] - previous["logits"]).abs().max())
        require(moved > 1e-2, f"logits as before training (max change {moved:.3g}): the old session ran again")
        summary["max_logit_change_since_previous_model"] = round(moved, 3)
    summary["_outputs"] = ort
    return summary


class AppBundleTrainTask:
    """Factory for a BundleTrainTask subclass whose `_update_overrides` (MONAI Label's extension hook) adds
    APP_OVERRIDES; defined lazily so this module imports without monailabel."""

    @staticmethod
    def create(bundle: Path, extra: dict[str, Any]):
        from monailabel.tasks.train.bundle import BundleTrainTask

        class _Task(BundleTrainTask):
            def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
                overrides.update(extra)
                return overrides

        return _Task(str(bundle), {})


def check_train(bundle: Path, datastore) -> dict[str, Any]:
    """A 1-epoch MONAI Label train request must write models/model.pt and the latest-state checkpoint."""
    model = bundle / "models" / "model.pt"
    digest_before = file_digest(model) if model.exists() else None
    task = AppBundleTrainTask.create(bundle, APP_OVERRIDES)
    require(task.is_valid(), "BundleTrainTask rejected the bundle (no train config)")
    options = task.config()
    request = {
        "model": BUNDLE_NAME,
        "device": "cpu",
        "max_epochs": 1,
        "val_split": 0.2,
        "multi_gpu": False,
        "pretrained": True,
        "tracking": "None",
    }
    start = time.perf_counter()
    task(request, datastore)
    seconds = time.perf_counter() - start
    require(model.is_file(), "training wrote no models/model.pt")
    require(file_digest(model) != digest_before, "models/model.pt was not rewritten by training")
    state = torch.load(model, map_location="cpu", weights_only=True)
    require(isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()), "not a state_dict")
    checkpoints = sorted(p.name for p in (bundle / "models").glob("checkpoint*.pt"))
    require(checkpoints != [], "no latest-state checkpoint_*.pt written")
    preset = resolved_train_key(bundle, "active_label_preset")
    require(preset == "cartilage", f"train.json reads MONAI Label's labels with preset {preset!r}, not 'cartilage'")
    return {
        "digest_before_training": digest_before is not None,  # models/model.pt existed: fine-tuned in place
        "active_label_preset": preset,
        "request": request,
        "overrides_via_update_overrides": APP_OVERRIDES,
        "config_options": sorted(options),
        "models": sorted(p.name for p in (bundle / "models").iterdir()),
        "seconds": round(seconds, 1),
    }


def resolved_train_key(bundle: Path, key: str) -> Any:
    """A key of the bundle's train.json as it resolves in this process (environment included)."""
    from monai.bundle import ConfigParser

    sys.path.insert(0, str(bundle))
    try:
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "train.json"))
        return parser.get_parsed_content(key)
    finally:
        sys.path.remove(str(bundle))


def check_train_record(bundle: Path) -> dict[str, Any]:
    """The train request wrote the preprocessing record beside model.pt, with inference.json's values (so the
    request after it, `infer_trained`, passes the preprocessing check)."""
    record = bundle / "models" / "model_preprocessing.json"  # scripts.model_record.record_path
    require(record.is_file(), f"training wrote no {record.name}")
    return json.loads(record.read_text())


def check_strict_load(bundle: Path) -> None:
    """The trained model.pt loads strictly into inference.json's network (MONAI Label itself loads non-strictly)."""
    from monai.bundle import ConfigParser

    sys.path.insert(0, str(bundle))
    try:
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        network = parser.get_parsed_content("network_def")
    finally:
        sys.path.remove(str(bundle))
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))


def run_step(summary: dict[str, Any], name: str, step: Callable[[], Any]) -> Any:
    try:
        value = step()
        shown = {k: v for k, v in value.items() if not k.startswith("_")} if isinstance(value, dict) else {}
        summary["checks"][name] = {"ok": True, **shown}
        return value
    except Exception as err:  # noqa: BLE001 (every failure is reported in the summary)
        logger.exception("check %s failed", name)
        summary["checks"][name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        return None


def versions() -> dict[str, str]:
    import monai
    import monailabel

    return {
        "python": sys.version.split()[0],
        "monailabel": monailabel.__version__,
        "monai": monai.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "nibabel": nib.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--shape", default="32,128,128", help="phantom shape D,H,W")
    parser.add_argument("--num_cases", type=int, default=5, help="phantoms in the datastore (1 goes to validation)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    shape = tuple(int(s) for s in args.shape.split(","))

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="monailabel_check_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # what `monailabel start_server` exports for every setting (monailabel/main.py, start_server_init_settings)
    os.environ["MONAI_LABEL_APP_DIR"] = str(workdir / "app")
    summary: dict[str, Any] = {"versions": versions(), "phantom_shape": list(shape), "checks": {}}
    try:
        bundle = copy_bundle(workdir / "bundles")
        pairs = write_phantoms(bundle, workdir / "phantoms", args.num_cases, shape)
        ras_image, ras_label = Path(pairs[0]["image"]), Path(pairs[0]["label"])
        other_image = reoriented_copy(ras_image, workdir / "reoriented_phantom.nii.gz")
        other_label = reoriented_copy(ras_label, workdir / "reoriented_phantom_label.nii.gz")
        save_random_model(bundle)

        task = run_step(summary, "infer_task", lambda: infer_task(bundle))
        if task is not None:
            summary["checks"]["infer_task"].update(
                {"labels": task.labels, "dimension": task.dimension, "type": str(task.type)}
            )
            run_step(summary, "labels", lambda: require(task.labels == EXPECTED_LABELS, f"labels {task.labels}"))
            run_step(summary, "infer_ras_oracle", lambda: check_infer(task, ras_image, bundle, ras_label))
            run_step(summary, "infer_reoriented_oracle", lambda: check_infer(task, other_image, bundle, other_label))
            run_step(summary, "infer_repeat_random_model", lambda: check_infer(task, ras_image, bundle))
            run_step(
                summary,
                "infer_refuses_other_preprocessing",
                lambda: check_refuses_other_preprocessing(bundle, ras_image),
            )
        onnx_task = run_step(summary, "onnxruntime_task", lambda: runtime_task(bundle, "onnxruntime"))
        random_model = (
            run_step(
                summary,
                "infer_onnxruntime_random_model",
                lambda: check_onnxruntime_matches_torch(onnx_task, ras_image, bundle),
            )
            if onnx_task is not None
            else None
        )

        datastore = build_datastore(pairs, workdir / "datastore", workdir)
        run_step(summary, "train_1_epoch", lambda: check_train(bundle, datastore))
        run_step(summary, "trained_model_loads_strict", lambda: check_strict_load(bundle))
        run_step(summary, "train_wrote_record", lambda: check_train_record(bundle))
        run_step(summary, "infer_trained", lambda: check_infer(infer_task(bundle), other_image, bundle))
        if onnx_task is not None and random_model is not None:
            run_step(
                summary,
                "infer_onnxruntime_trained_model",
                lambda: check_onnxruntime_matches_torch(onnx_task, ras_image, bundle, random_model["_outputs"]),
            )
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    summary["passed"] = all(c.get("ok") for c in summary["checks"].values())
    print(json.dumps(summary, indent=2, default=str))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
