"""What a run measures on a device (the plan) and the environment it records."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from scripts.benchmark.common import GIB, MODELS, _read_config, config_sw_batch_size, inductor_environment
from scripts.onnx_runtime import onnxruntime_available
from scripts.precision import cpu_bf16_supported


@dataclass
class Plan:
    """Sizes, repeats and budgets of one run; defaults per device and for --quick, each overridable from the CLI."""

    features: list[int]
    size: int
    depth: int
    batch_size: int
    sw_batch_size: int
    variants: list[str]
    volume_variants: list[str]
    inference_variants: list[str]
    loop_variants: list[str]
    models: list[str]
    train_warmup: int
    train_repeats: int
    train_budget_s: float
    volume_warmup: int
    volume_repeats: int
    volume_budget_s: float
    slice_inferer: bool
    infer_warmup_runs: int
    infer_runs: int
    infer_volumes: int
    loop_cases: int
    loop_slices_per_epoch: int
    loop_epochs: int
    loop_budget_s: float
    loop_loader_batches: int
    test_cases: int
    agreement_train_steps: int
    time_budget_s: float | None
    compile_reserve_s: float
    baseline_everywhere: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def default_plan(device: torch.device, quick: bool) -> Plan:
    """Defaults: full size on CUDA within about 8 minutes on an H100 (first compile and cuDNN autotuning included);
    on CPU fewer repeats, batch 4, no compile, no SliceInferer repeat; --quick tiny. Baselines run the first
    inference and train_loop variant only."""
    train_cfg = _read_config("train.json")
    # CPU (the base): batch 4, not 16: the saved activations of one full-size EAS U-Net slice take about 1 GB in
    # fp32; channels_last halved EAS U-Net's CPU inference time on the 2-core machine (docs/benchmarks.md). The
    # inference variants are the configs' defaults: folded batch norms, and bf16 where the CPU runs it natively.
    # Training likewise: channels_last, and bf16 autocast where native (train.json's training inferer, since 0.4.1).
    # onnxruntime (`ort`): the configs' cpu_runtime auto picks it where inference would run in fp32.
    native = cpu_bf16_supported()
    cpu_defaults = ["fp32+cl+fold"] + (["bf16+cl+fold"] if native else [])
    cpu_defaults += ["fp32+cl+fold+ort"] if onnxruntime_available() else []
    cpu = Plan(
        features=list(train_cfg["network_def"]["features"]),
        size=384,
        depth=160,
        batch_size=4,
        sw_batch_size=config_sw_batch_size(torch.device("cpu")),
        variants=["fp32+cl"] + (["bf16+cl"] if native else []),
        volume_variants=cpu_defaults,
        inference_variants=cpu_defaults,
        loop_variants=["fp32+cl+nw2"] + (["bf16+cl+nw2"] if native else []),
        models=list(MODELS),
        train_warmup=1,
        train_repeats=2,
        train_budget_s=60,
        volume_warmup=0,
        volume_repeats=1,
        volume_budget_s=60,
        slice_inferer=False,
        infer_warmup_runs=0,
        infer_runs=1,
        infer_volumes=1,
        loop_cases=4,
        loop_slices_per_epoch=64,
        loop_epochs=2,
        loop_budget_s=300,
        loop_loader_batches=8,
        test_cases=1,
        agreement_train_steps=0,
        time_budget_s=None,
        compile_reserve_s=0,
    )
    if quick:
        return replace(
            cpu,
            features=[8, 16, 32, 64, 128],
            size=64,
            depth=16,
            sw_batch_size=4,
            variants=["fp32"],
            volume_variants=["fp32"],
            inference_variants=["fp32"],
            loop_variants=["fp32+nw0"],
            train_budget_s=5,
            volume_warmup=1,
            volume_repeats=2,
            volume_budget_s=5,
            slice_inferer=True,
            loop_cases=2,
            loop_slices_per_epoch=8,
            loop_budget_s=20,
            loop_loader_batches=2,
            agreement_train_steps=2,
        )
    if device.type == "cuda":
        # Measured on an H100: the first step of a new variant costs 15-60 s (cuDNN autotuning; torch.compile); so
        # the baseline's workflow runs and compiled volume come after the targets' measurements, within the budget.
        compiled = ["fp32", "bf16+cl", "bf16+cl+compile"]
        return replace(
            cpu,
            batch_size=int(train_cfg["batch_size"]),
            sw_batch_size=config_sw_batch_size(device),
            variants=compiled,
            volume_variants=compiled,
            inference_variants=["bf16+bench", "bf16"],
            loop_variants=["bf16+cl+nw8", "bf16+nw4", "bf16+cl+compile+nw8"],
            train_warmup=3,
            train_repeats=20,
            train_budget_s=10,
            volume_warmup=2,
            volume_repeats=7,
            volume_budget_s=10,
            slice_inferer=True,
            infer_warmup_runs=1,
            infer_runs=2,
            infer_volumes=4,
            loop_slices_per_epoch=960,
            loop_epochs=3,
            loop_budget_s=60,
            loop_loader_batches=30,
            agreement_train_steps=150,
            time_budget_s=400,
            compile_reserve_s=45,
            baseline_everywhere=False,
        )
    return cpu


def _environment(device: torch.device) -> dict[str, Any]:
    import monai

    env = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        # inductor settings given by environment (e.g. TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1) change compiled
        # results without showing in the command
        "inductor_environment": inductor_environment(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu_memory_gib=props.total_memory / GIB, multiprocessors=props.multi_processor_count)
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    return env
