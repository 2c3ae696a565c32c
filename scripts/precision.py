"""bf16 inference wherever the bundle's inferer runs: on CUDA, and on CPUs that run bf16 natively.

MONAI's engines autocast on CUDA only, and MONAI Label's infer task calls the bundle's `inferer` without any
autocast, so `amp` meant fp32 on every CPU and in MONAI Label. `AutocastInferer` wraps the configs' inferers and
decides per call, from the device the network runs on: bf16 on a GPU that computes it natively (compute capability
8.0 or newer: A100, H100, RTX 30xx and later); bf16 on a CPU where oneDNN runs it natively (AVX512-BF16 or AMX: EAS
U-Net's inference is about twice and its training step 2.6 times as fast there, docs/benchmarks.md); fp32 elsewhere.
Older GPUs (V100, T4, which MONAI Label servers and notebooks still run on) have no bf16 convolutions in cuDNN: torch
either refuses bf16 autocast there or emulates it slowly, so they run fp32 as CPUs without bf16 do. train.json's
training inferer uses it on CPUs only: on CUDA MONAI's trainer autocasts forward and loss itself, as its evaluators
do, with `amp` from `cuda_autocast`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from monai.inferers import Inferer

__all__ = ["cpu_bf16_supported", "cuda_bf16_supported", "autocast_enabled", "cuda_autocast", "AutocastInferer"]

logger = logging.getLogger(__name__)

_WARNED_GPUS: set[str] = set()


def cpu_bf16_supported() -> bool:
    """True when oneDNN reports native bf16 support on this CPU (AVX512-BF16 / AMX); False when it cannot tell."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the check: assume emulation, stay in fp32
        return False


def cuda_bf16_supported(device: str | torch.device = "cuda") -> bool:
    """True when the CUDA device computes bf16 natively (compute capability 8.0 or newer); False for older GPUs, where
    cuDNN has no bf16 convolutions, and when there is no usable CUDA device."""
    try:
        return bool(torch.cuda.is_available()) and torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)
    except (AssertionError, RuntimeError, ValueError):  # no CUDA build, or a device index that does not exist
        return False


def autocast_enabled(amp: bool, device: str | torch.device) -> bool:
    """The bundle's rule for `amp`: bf16 autocast on a GPU or CPU whose bf16 is native; never elsewhere."""
    device = torch.device(device)
    if not amp:
        return False
    if device.type == "cuda":
        return cuda_bf16_supported(device)
    return device.type == "cpu" and cpu_bf16_supported()


def cuda_autocast(amp: bool, device: str | torch.device) -> bool:
    """`amp` for MONAI's engines, which autocast on CUDA only: the bundle's rule on a GPU, False on a CPU (there the
    configs' `AutocastInferer` decides). Says once per device when `amp` falls back to fp32 on an older GPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    enabled = autocast_enabled(amp, device)
    if amp and not enabled and str(device) not in _WARNED_GPUS:
        _WARNED_GPUS.add(str(device))
        logger.warning(f"amp: the GPU {device} has no native bf16 (compute capability below 8.0); it runs in fp32")
    return enabled


class AutocastInferer(Inferer):
    """Run `inferer` under `torch.autocast(<the network's device>, dtype=torch.bfloat16)` when
    `autocast_enabled(amp, ...)`.

    The wrapped inferer still accumulates the slices' outputs in the input's float32 (MONAI's sliding-window
    inferers), so postprocessing sees float32 either way. Nested inside an engine's own CUDA autocast it changes
    nothing.

    In training (train.json's `train#inferer`, a `SimpleInferer` on CPU; on CUDA MONAI's trainer autocasts itself)
    the network's own bf16 outputs come back; `float_outputs` turns them into float32 so that the loss (softmax, log,
    Dice sums) is computed in float32, as CUDA autocast does for those operations.

    Args:
        inferer: the inferer to run, e.g. `SliceInferer(spatial_dim=0, ...)`.
        amp: the config key `amp`.
        float_outputs: return float32 for every floating-point output tensor (in a list, tuple or dict too) that
            came out of a bf16 autocast run.
    """

    def __init__(self, inferer: Inferer, amp: bool = True, float_outputs: bool = False) -> None:
        super().__init__()
        self.inferer, self.amp, self.float_outputs = inferer, bool(amp), bool(float_outputs)
        self._cpu_logged = False

    def compute_device(self, inputs: torch.Tensor, network: Any) -> torch.device:
        """Where the network runs, which decides the autocast: its parameters' device, else the wrapped inferer's
        `sw_device` (MONAI's sliding-window inferers can move CPU inputs to a GPU), else the input's device."""
        if isinstance(network, torch.nn.Module):
            param = next(network.parameters(), None)
            if param is not None:
                return param.device
        sw_device = getattr(self.inferer, "sw_device", None)
        return torch.device(sw_device) if sw_device is not None else inputs.device

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        device = self.compute_device(inputs, network)
        kind = device.type
        # on a GPU, cuda_autocast (the rule of MONAI's engines in the configs) warns once per GPU left in fp32
        enabled = cuda_autocast(self.amp, device) if kind == "cuda" else autocast_enabled(self.amp, device)
        if self.amp and kind == "cpu" and not self._cpu_logged:  # say once whether the CPU runs bf16
            self._cpu_logged = True
            logger.info(
                "amp: bf16 autocast on the CPU (native bf16 instructions found)"
                if enabled
                else "amp: this CPU has no native bf16 instructions; inference runs in fp32"
            )
        context = torch.autocast(kind, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()
        with context:
            outputs = self.inferer(inputs, network, *args, **kwargs)
        return _to_float32(outputs) if enabled and self.float_outputs else outputs


def _to_float32(data: Any) -> Any:
    """float32 copies of the bf16/fp16 tensors in `data` (a tensor, or a list, tuple or dict of them)."""
    if isinstance(data, torch.Tensor):
        return data.float() if data.is_floating_point() and data.dtype != torch.float32 else data
    if isinstance(data, (list, tuple)):
        return type(data)(_to_float32(d) for d in data)
    if isinstance(data, dict):
        return {k: _to_float32(v) for k, v in data.items()}
    return data
