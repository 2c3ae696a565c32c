"""Where the GPU time of one training step goes: a kernel-level profile of the benchmark's training step.

`python -m scripts.benchmark` says how fast a step is; this says why. It builds the same step as the benchmark's
(a) (model, deep-supervision DiceCE, SGD, batch 16 of 1x384x384, random inputs), warms it up, records `steps`
steps with `torch.profiler`, and splits the device time into categories: in eager mode by the ATen operation that
launched each kernel (depthwise, pointwise, full and transposed convolutions forward and backward, batch norm,
everything else), in compiled mode by kernel name (Triton kernels that inductor generated, convolution and matrix
kernels of cuDNN / cuBLAS). It prints the categories and the top kernels per step and writes JSON.

    python -m scripts.experiments.profile_step --model eas_unet --variant bf16+cl --output eager.json
    python -m scripts.experiments.profile_step --model eas_unet --variant bf16+cl+compile --output compiled.json
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from scripts.benchmark import Variant, make_train_step
from scripts.io_utils import atomic_write_text

__all__ = ["profile_step", "conv_kind", "kernel_kind"]

_CONV_OPS = {"aten::convolution": "forward", "aten::convolution_backward": "backward"}
# the outermost batch-norm ops (their device time includes the kernels of the ops they call)
_NORM_OPS = {
    "aten::batch_norm": "forward",
    "aten::native_batch_norm_backward": "backward",
    "aten::cudnn_batch_norm_backward": "backward",
}


def conv_kind(shapes: list[Any]) -> str:
    """depthwise / pointwise / 2x2 (the decoders' transposed convolutions) / full, from the recorded input shapes of
    a 2D convolution call: the weight is the second argument of `aten::convolution` and the third of
    `aten::convolution_backward` (grad_output, input, weight)."""
    weights = [s for s in shapes if isinstance(s, list) and len(s) == 4]
    if len(weights) < 2:
        return "other"
    weight = weights[1] if len(weights) == 2 else weights[2]
    in_channels = weights[0][1] if len(weights) == 2 else weights[1][1]
    taps = weight[2] * weight[3]
    # one filter per input channel; with a single input channel (BasicUNet's first layer) it is a plain convolution
    if weight[1] == 1 and in_channels > 1 and taps > 1:
        return "depthwise"
    if taps == 1:
        return "pointwise"
    if weight[2] == weight[3] == 2:
        return "2x2 transposed"
    return "full 3x3"


def kernel_kind(name: str) -> str:
    """A coarse category of a device kernel from its name (compiled programs, where ATen ops no longer launch
    the kernels)."""
    low = name.lower()
    if low.startswith("triton_"):  # inductor names them triton_{poi,red,per}_fused_...: per = persistent reduction
        return "triton reduction" if low.split("_")[1] in ("red", "per") else "triton pointwise"
    if "depthwise" in low or "dwconv" in low:
        return "depthwise (library)"
    if re.search(r"conv|xmma|implicit|dgrad|wgrad|fprop", low):
        return "convolution (library)"
    if re.search(r"gemm|cutlass|sm90|sm80|ampere|hopper", low):
        return "matrix product (library)"
    if "memcpy" in low or "memset" in low:
        return "copy / memset"
    return "other"


def profile_step(
    model: str = "eas_unet",
    variant: str = "bf16+cl",
    batch_size: int = 16,
    size: int = 384,
    features: tuple = (32, 64, 128, 256, 512),
    warmup: int = 8,
    steps: int = 10,
    top: int = 25,
    output: str | None = None,
    trace: str | None = None,
) -> dict[str, Any]:
    """Profile `steps` training steps of `model` with benchmark `variant` options on CUDA; see the module docstring.

    Args:
        model: eas_unet or basic_unet.
        variant: benchmark option tokens (bf16, cl, compile, compile=MODE, shift, ...).
        batch_size, size, features: the step's batch, in-plane size and widths.
        warmup: untimed steps first (compilation, cuDNN autotuning).
        steps: profiled steps; times are reported per step.
        top: how many kernels to list.
        output: JSON file to write (atomically).
        trace: optional Chrome trace file (for chrome://tracing or Perfetto).
    """
    if not torch.cuda.is_available():
        raise SystemExit("profile_step needs a CUDA device: the categories are device-kernel times")
    device = torch.device("cuda")
    opts = Variant.parse(variant)
    step, _ = make_train_step(model, opts, device, features, batch_size, size)

    t0 = time.perf_counter()
    for _ in range(int(warmup)):
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(int(steps)):
            step()
        torch.cuda.synchronize()
        wall_s = (time.perf_counter() - t0) / steps
    if trace:
        prof.export_chrome_trace(str(trace))

    events = prof.events()
    kernel_us: dict[str, float] = defaultdict(float)
    kernel_calls: dict[str, int] = defaultdict(int)
    for ev in events:
        # GPU-side user annotations (inductor's "## Call CompiledFxGraph ##", the optimizer's step) span kernels
        # that are counted on their own: leave them out, or compiled programs count their time twice
        annotation = getattr(ev, "is_user_annotation", False) or ev.name.startswith("## ")
        if ev.device_type == torch.autograd.DeviceType.CUDA and not annotation:
            kernel_us[ev.name] += ev.self_device_time_total
            kernel_calls[ev.name] += 1
    total_us = sum(kernel_us.values())

    by_op: dict[str, float] = defaultdict(float)
    for ev in events:
        if ev.device_type != torch.autograd.DeviceType.CPU:
            continue
        if ev.name in _CONV_OPS:
            by_op[f"{conv_kind(ev.input_shapes)} conv {_CONV_OPS[ev.name]}"] += ev.device_time_total
        elif ev.name in _NORM_OPS:
            by_op[f"batch norm {_NORM_OPS[ev.name]}"] += ev.device_time_total
    if by_op:
        by_op["everything else"] = max(total_us - sum(by_op.values()), 0.0)
    by_kernel_kind: dict[str, float] = defaultdict(float)
    for name, us in kernel_us.items():
        by_kernel_kind[kernel_kind(name)] += us

    per_step = {k: v / steps / 1e3 for k, v in by_op.items()}
    per_kind = {k: v / steps / 1e3 for k, v in by_kernel_kind.items()}
    kernels = sorted(kernel_us.items(), key=lambda kv: -kv[1])[: int(top)]
    result = {
        "model": model,
        "variant": opts.name,
        "batch_size": batch_size,
        "size": size,
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "warmup_s": warmup_s,
        "steps": steps,
        "wall_ms_per_step": wall_s * 1e3,
        "slices_per_s": batch_size / wall_s,
        "kernel_ms_per_step": total_us / steps / 1e3,
        "gpu_busy_fraction": total_us / steps / 1e3 / (wall_s * 1e3),
        "kernel_launches_per_step": sum(kernel_calls.values()) / steps,
        "ms_per_step_by_aten_op": dict(sorted(per_step.items(), key=lambda kv: -kv[1])),
        "ms_per_step_by_kernel_kind": dict(sorted(per_kind.items(), key=lambda kv: -kv[1])),
        "top_kernels": [
            {"name": name[:160], "ms_per_step": us / steps / 1e3, "calls_per_step": kernel_calls[name] / steps}
            for name, us in kernels
        ],
    }
    print(
        f"{model} {opts.name}: {result['wall_ms_per_step']:.2f} ms/step wall ({result['slices_per_s']:.1f} slices/s), "
        f"{result['kernel_ms_per_step']:.2f} ms of kernels ({result['gpu_busy_fraction']:.0%} busy), "
        f"{result['kernel_launches_per_step']:.0f} launches/step"
    )
    for title, table in (("by ATen op", result["ms_per_step_by_aten_op"]), ("by kernel kind", per_kind)):
        if table:
            print(f"  {title}:")
            for key, ms in table.items():
                print(f"    {ms:8.3f} ms  {ms / max(result['kernel_ms_per_step'], 1e-9):6.1%}  {key}")
    print("  top kernels:")
    for row in result["top_kernels"]:
        print(f"    {row['ms_per_step']:8.3f} ms  x{row['calls_per_step']:<5.0f} {row['name'][:110]}")
    if output:
        atomic_write_text(Path(output), json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    import fire

    fire.Fire(profile_step, serialize=lambda _: None)
