"""(d) The real training loop through configs/train.json, and its data loader alone."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scripts.benchmark.common import BUNDLE_ROOT, GIB, Variant, _free, _network_overrides, _now, _read_config, _row
from scripts.benchmark.inference import _config_device, _variant_network


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.shape[0])
    if isinstance(batch, (list, tuple)):
        return sum(_batch_size(b) for b in batch)
    return 1


class _LoopTimer:
    """Slices/s of a SupervisedTrainer after its first epoch (device synchronised at the span's ends); stops the run
    once the timed part exceeds `budget_s`, or after the first epoch if that alone exceeded it (then the second
    half of the first epoch is the measurement, marked partial)."""

    def __init__(self, device: torch.device, budget_s: float) -> None:
        self.device, self.budget_s = device, budget_s
        self.first_epoch_s = None
        self.samples, self.t_start, self.t_end = 0, None, None
        self.half: tuple[float, int] | None = None
        self.first_samples = 0
        self.partial = False

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine) -> None:
        self.t_run = _now(self.device)

    def _epoch_started(self, engine) -> None:
        if engine.state.epoch >= 2 and self.t_start is None:
            self.t_start = _now(self.device)

    def _iteration(self, engine) -> None:
        n = _batch_size(engine.state.batch)
        if engine.state.epoch == 1:
            self.first_samples += n
            local = (engine.state.iteration - 1) % engine.state.epoch_length + 1
            if local == max(1, engine.state.epoch_length // 2):
                self.half = (_now(self.device), self.first_samples)
            return
        self.samples += n
        if time.perf_counter() - self.t_start > self.budget_s:
            self.t_end = _now(self.device)
            engine.terminate()

    def _epoch_completed(self, engine) -> None:
        now = _now(self.device)
        if engine.state.epoch == 1:
            self.first_epoch_s = now - self.t_run
            if self.first_epoch_s > self.budget_s and self.half is not None and engine.state.max_epochs > 1:
                t_half, s_half = self.half
                if now > t_half and self.first_samples > s_half:
                    self.partial = True
                    self.t_start, self.t_end, self.samples = t_half, now, self.first_samples - s_half
                    engine.terminate()
            return
        self.t_end = now

    @property
    def throughput(self) -> float | None:
        if self.t_start is None or self.t_end is None or self.samples == 0:
            return None
        return self.samples / (self.t_end - self.t_start)


def measure_train_loop(
    model_name: str,
    variant: Variant,
    device: torch.device,
    features: Sequence[int],
    dataset_dir: Path,
    workdir: Path,
    size: int = 384,
    batch_size: int | None = None,
    slices_per_epoch: int = 1600,
    epochs: int = 3,
    budget_s: float = 45.0,
    loader_batches: int = 50,
    keep_spacing: bool = False,
    overrides: dict[str, Any] | None = None,
) -> list[dict]:
    """(d) configs/train.json through `monai.bundle.ConfigWorkflow` on the phantom dataset in `dataset_dir` (its
    datalist.json), validation off, checkpoints to a temporary folder: slices/s of epochs 2.. (first epoch = warm-up:
    caching is done before it, worker start-up, cuDNN autotuning and compilation fall in it); then the trainer's own
    data loader alone for `loader_batches` batches. The config's own sampler draws a whole epoch in one loader pass,
    however few phantom volumes there are. `overrides` are applied last (try config changes without editing configs). A
    `compile` variant sets `train#trainer#compile` (the loader already hands the trainer plain tensors, which monai
    1.6.1's compiled SupervisedTrainer needs); details["overrides"] lists all."""
    from monai.bundle import ConfigWorkflow

    train_cfg = _read_config("train.json")
    batch = int(batch_size or train_cfg["batch_size"])
    items_per_batch = max(1, batch // int(train_cfg["slices_per_volume"]))
    iterations = max(1, int(slices_per_epoch) // batch)
    n_cases = len(json.loads((Path(dataset_dir) / "datalist.json").read_text())["training"])
    ckpt_dir = workdir / f"loop_{model_name}"
    cfg: dict[str, Any] = {
        "bundle_root": str(BUNDLE_ROOT),
        "dataset_dir": str(dataset_dir),
        "output_dir": str(workdir / "loop_eval"),
        "ckpt_dir": str(ckpt_dir),
        "device": _config_device(device),
        "amp": variant.precision == "bf16",
        "max_epochs": int(epochs),
        "val_interval": int(epochs) + 1,
        "validate_final_epoch": False,
        "batch_size": batch,
        "slices_per_epoch": int(slices_per_epoch),
        "datalist#num_val": 0,
        "datalist#validate": False,
        **_network_overrides(model_name, features, size),
    }
    if variant.num_workers is not None:
        cfg["num_workers"] = int(variant.num_workers)
    if keep_spacing:
        cfg["inplane_spacing"] = -1
    cfg.update(_variant_network(variant))
    if variant.compile:
        cfg["train#trainer#compile"] = True
        if variant.compile != "default":
            cfg["train#trainer#compile_kwargs"] = {"mode": variant.compile}
    if variant.precision not in ("fp32", "bf16"):
        raise ValueError("the training config's `amp` is bf16 or off")
    cfg.update(overrides or {})
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE_ROOT / "configs" / "train.json"),
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
        logging_file=str(BUNDLE_ROOT / "configs" / "logging.conf"),
        workflow_type="train",
        **cfg,
    )
    t0 = time.perf_counter()
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")  # caches the dataset here, before the epochs
    setup_s = time.perf_counter() - t0
    timer = _LoopTimer(device, budget_s)
    timer.attach(trainer)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t1 = time.perf_counter()
    workflow.run()
    run_s = time.perf_counter() - t1
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    loader = trainer.data_loader
    loader_rate = None
    if loader_batches > 0:
        n, start = 0, time.perf_counter()
        for i, b in enumerate(loader):
            n += _batch_size(b)
            if i + 1 >= loader_batches or time.perf_counter() - start > budget_s / 2:
                break
        loader_rate = n / (time.perf_counter() - start)
    flags = {
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
    }
    workflow.finalize()
    details = {
        "epochs_run": trainer.state.epoch,
        "iterations_per_epoch": iterations,
        "batch_size": batch,
        "loader_items_per_batch": items_per_batch,
        "num_workers": loader.num_workers,
        "training_cases": n_cases,
        "first_epoch_s": timer.first_epoch_s,
        "timed_slices": timer.samples,
        "timed_s": None if timer.t_end is None or timer.t_start is None else timer.t_end - timer.t_start,
        "setup_s": setup_s,
        "run_s": run_s,
        "cudnn_flags_after_config": flags,
        "overrides": {
            k: v for k, v in cfg.items() if k not in ("bundle_root", "dataset_dir", "output_dir", "ckpt_dir")
        },
    }
    if timer.partial:
        details["status_note"] = "first epoch exceeded the budget: second half of epoch 1 measured"
    rows = [
        _row(
            "train_loop",
            "throughput",
            model_name,
            variant.name,
            timer.throughput,
            "slices/s",
            step_variant=variant.step_key,
            peak_memory_gib=peak,
            **details,
        )
    ]
    if timer.throughput is None:
        rows[0]["status"] = "failed: no timed iterations"
    if loader_rate is not None:
        rows.append(
            _row(
                "loader",
                "throughput",
                model_name,
                variant.name,
                loader_rate,
                "slices/s",
                batches=loader_batches,
                num_workers=loader.num_workers,
            )
        )
    del workflow, trainer, loader
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    _free(device)
    return rows
