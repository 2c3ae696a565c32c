"""(c) End-to-end inference through configs/inference.json."""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from scripts.benchmark.common import (
    BUNDLE_ROOT,
    Variant,
    _cudnn,
    _free,
    _network_overrides,
    _now,
    _read_config,
    _row,
    config_sw_batch_size,
)


class _EventTimer:
    """Wall time between pairs of ignite events, summed over a run (synchronising the device at each event)."""

    def __init__(self, device: torch.device, spans: dict[str, tuple[Any, Any]]) -> None:
        self.device, self.spans = device, spans
        self.totals = dict.fromkeys(spans, 0.0)
        self._open: dict[str, float] = {}

    def attach(self, engine) -> None:
        for name, (start, end) in self.spans.items():
            engine.add_event_handler(start, self._start, name)
            engine.add_event_handler(end, self._end, name)

    def _start(self, engine, name: str) -> None:
        self._open[name] = _now(self.device)

    def _end(self, engine, name: str) -> None:
        if name in self._open:
            self.totals[name] += _now(self.device) - self._open.pop(name)


def _config_device(device: torch.device) -> str:
    return f"$torch.device('{device}')"


def _variant_network(variant: Variant) -> dict[str, Any]:
    """The configs' own network keys for a variant: `channels_last` only with `cl` (the configs default to true),
    `shifted_depthwise` with `shift`, `cpu_runtime` onnxruntime with `ort` and torch without (the configs default to
    auto); the configs' `network` and `inferer` do the rest."""
    return {
        "channels_last": variant.channels_last,
        "shifted_depthwise": variant.shifted,
        "cpu_runtime": "onnxruntime" if variant.onnxruntime else "torch",
    }


def _save_random_checkpoint(config_file: Path, overrides: dict[str, Any], path: Path, seed: int = 0) -> None:
    """Instantiate `network_def` from the config with the overrides and save its random weights as a plain
    state_dict (what CheckpointLoader with one load_dict entry reads)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.update(dict(overrides))
    torch.manual_seed(seed)
    net = parser.get_parsed_content("network_def")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), str(path))


def _run_inference_workflow(overrides: dict[str, Any], device: torch.device) -> dict[str, float]:
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow
    from monai.engines import IterationEvents

    t0 = _now(device)
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE_ROOT / "configs" / "inference.json"),
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
        logging_file=str(BUNDLE_ROOT / "configs" / "logging.conf"),
        workflow_type="infer",
        **overrides,
    )
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("evaluator")  # built here, so the run below reuses it
    timer = _EventTimer(
        device,
        {
            "load_preprocess_s": (Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED),
            "infer_s": (Events.ITERATION_STARTED, IterationEvents.FORWARD_COMPLETED),
            # MONAI runs `postprocessing` (softmax, invert, argmax, write) on MODEL_COMPLETED, after FORWARD_COMPLETED
            "postprocess_save_s": (IterationEvents.FORWARD_COMPLETED, Events.ITERATION_COMPLETED),
        },
    )
    timer.attach(evaluator)
    t1 = _now(device)
    workflow.run()
    t2 = _now(device)
    workflow.finalize()
    t3 = _now(device)
    out = {"total_s": t3 - t0, "setup_s": t1 - t0, "run_s": t2 - t1, "finalize_s": t3 - t2, **timer.totals}
    del workflow, evaluator
    return out


def workflow_runs(
    run: Callable[[], dict[str, float]],
    warmup_runs: int,
    runs: int,
    budget_s: float,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[dict[str, float]], list[dict[str, float]], bool]:
    """(warm-up runs, measured runs, whether the last warm-up run is the measurement) of a whole-workflow timing.

    At least one run is measured. When the warm-up alone exceeds `budget_s` the last warm-up run becomes the
    measurement and nothing more runs: never a median of a cold run (e.g. 414 s of max-autotune tuning) with warm
    2-s runs, which would describe neither.
    """
    start = clock()
    warm = [run() for _ in range(warmup_runs)]
    if warm and clock() - start > budget_s:
        return warm[:-1], warm[-1:], True
    measured: list[dict[str, float]] = []
    while len(measured) < max(1, runs):
        measured.append(run())
        if clock() - start > budget_s:
            break
    return warm, measured, False


def measure_inference(
    model_name: str,
    variant: Variant,
    device: torch.device,
    features: Sequence[int],
    scan: Path,
    workdir: Path,
    size: int = 384,
    sw_batch_size: int | None = None,
    warmup_runs: int = 1,
    runs: int = 3,
    volumes: int = 1,
    budget_s: float = 60.0,
    keep_spacing: bool = False,
    checkpoint: str | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> list[dict]:
    """(c) configs/inference.json through `monai.bundle.ConfigWorkflow` on one phantom NIfTI scan with a randomly
    initialised checkpoint: the whole workflow (parse, build, load checkpoint, load and preprocess the scan, infer,
    softmax, invert, argmax, write NIfTI) timed after `warmup_runs` runs that absorb CUDA initialisation, cuDNN
    autotuning and compilation. With `volumes` > 1 also one run over that many copies of the scan (per-volume time
    of a batch run, setup amortised, loading overlapped by the data loader). `checkpoint` replaces the random
    weights; the config's cartilage measurements run only with the `measure` variant token. `config_overrides`
    are more inference.json overrides, applied last."""
    import nibabel as nib

    _cudnn(benchmark=False, deterministic=False)  # a fresh process's defaults; the config sets its own
    config = BUNDLE_ROOT / "configs" / "inference.json"
    ckpt_dir = workdir / f"ckpt_{model_name}"
    out_dir = workdir / f"out_{model_name}_{variant.name.replace('+', '_').replace('=', '-')}"
    overrides: dict[str, Any] = {
        "bundle_root": str(BUNDLE_ROOT),
        "dataset_dir": str(scan),
        "output_dir": str(out_dir),
        "ckpt_dir": str(ckpt_dir),
        "device": _config_device(device),
        "amp": variant.precision == "bf16",
        "overwrite": True,
        **_network_overrides(model_name, features, size),
    }
    if sw_batch_size:
        overrides["sw_batch_size"] = int(sw_batch_size)
    if keep_spacing:
        overrides["inplane_spacing"] = -1
    if "measure" in _read_config("inference.json"):
        overrides["measure"] = bool(variant.measure)
    if "fold_batch_norm" in _read_config("inference.json"):
        overrides["fold_batch_norm"] = bool(variant.fold)
    if checkpoint:
        overrides["model_path"] = str(Path(checkpoint).resolve())
    else:
        _save_random_checkpoint(config, overrides, ckpt_dir / "model.pt")
    overrides.update(_variant_network(variant))  # explicit both ways: the configs default to channels_last
    if variant.compile:
        overrides["evaluator#compile"] = True
        if variant.compile != "default":
            overrides["evaluator#compile_kwargs"] = {"mode": variant.compile}
    init = list(_read_config("inference.json").get("initialize", []))
    if variant.cudnn_benchmark:
        init.append("$setattr(torch.backends.cudnn, 'benchmark', True)")
    overrides["initialize"] = init
    overrides.update(config_overrides or {})
    if variant.precision not in ("fp32", "bf16"):
        raise ValueError("the inference config's `amp` is bf16 or off")

    start = time.perf_counter()
    warm, measured, warmup_is_measurement = workflow_runs(
        lambda: _run_inference_workflow(overrides, device), int(warmup_runs), int(runs), budget_s
    )
    written = sorted(out_dir.glob("*_seg.nii.gz"))
    if not written:
        raise RuntimeError("the inference workflow wrote no label map")
    out_shape = tuple(nib.load(str(written[0])).shape)
    in_shape = tuple(nib.load(str(scan)).shape)
    if out_shape[:3] != in_shape[:3]:
        raise RuntimeError(f"label map shape {out_shape} differs from the scan's {in_shape}")

    def med(key: str, runs_: list[dict]) -> float:
        return statistics.median(r[key] for r in runs_)

    details = {
        "runs": measured,
        "warmup_runs": warm,
        "first_run_s": warm[0]["total_s"] if warm else None,
        "breakdown_median_s": {k: med(k, measured) for k in measured[0]},
        "scan_shape": list(in_shape),
        "sw_batch_size": overrides.get("sw_batch_size", config_sw_batch_size(device)),
        "checkpoint": Path(checkpoint).name if checkpoint else "random initialisation (seed 0)",
        "measure": bool(variant.measure),
        "warmup_used_as_measurement": warmup_is_measurement,
    }
    rows = [_row("inference", "time", model_name, variant.name, med("total_s", measured), "s/volume", **details)]
    if volumes > 1 and time.perf_counter() - start < budget_s:
        batch_dir = workdir / f"scans_x{volumes}"
        batch_dir.mkdir(parents=True, exist_ok=True)
        for i in range(volumes):
            link = batch_dir / f"scan_{i:03d}.nii.gz"
            if not link.exists():
                try:
                    link.symlink_to(Path(scan).resolve())
                except OSError:
                    shutil.copyfile(scan, link)
        batch = _run_inference_workflow({**overrides, "dataset_dir": str(batch_dir)}, device)
        rows.append(
            _row(
                "inference_batch",
                "time",
                model_name,
                variant.name,
                batch["total_s"] / volumes,
                "s/volume",
                volumes=volumes,
                run=batch,
            )
        )
    shutil.rmtree(out_dir, ignore_errors=True)
    _free(device)
    return rows
