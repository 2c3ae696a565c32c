"""Whether this machine runs bfloat16 natively, so that `amp` (bf16 autocast) can speed up CPU inference too.

On a CPU with AVX512-BF16 or AMX, oneDNN runs bf16 convolutions natively: EAS U-Net's inference chunk is about twice
as fast as fp32 (docs/benchmarks.md). Without those instructions bf16 is emulated and slower than fp32, so the
inference config switches bf16 on for the CPU only where this says it is native.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from monai.engines import SupervisedEvaluator

__all__ = ["cpu_bf16_supported", "cpu_autocast_enabled", "CpuAutocastEvaluator"]

logger = logging.getLogger(__name__)


def cpu_bf16_supported() -> bool:
    """True when oneDNN reports native bf16 support on this CPU (AVX512-BF16 / AMX); False when it cannot tell."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the check: assume emulation, stay in fp32
        return False


def cpu_autocast_enabled(amp: bool, device: str | torch.device) -> bool:
    """The inference config's rule: bf16 autocast on the CPU when `amp` is on, the device is a CPU and bf16 is native.

    Logs the decision once per call, so a user who asked for `amp` on a CPU without bf16 knows why it ran in fp32.
    """
    if not amp or torch.device(device).type != "cpu":
        return False
    if cpu_bf16_supported():
        logger.info("amp: bf16 autocast on the CPU (native bf16 instructions found)")
        return True
    logger.info("amp: this CPU has no native bf16 instructions; inference runs in fp32")
    return False


class CpuAutocastEvaluator(SupervisedEvaluator):
    """SupervisedEvaluator that can run each iteration under `torch.autocast("cpu", dtype=torch.bfloat16)`: MONAI's
    own `amp` switch is CUDA-only. The inferer still accumulates the slices' outputs in the input's float32, and the
    postprocessing (softmax, inversion, argmax) runs after the iteration, outside autocast.

    Args:
        cpu_amp: autocast on the CPU; the configs set it with `cpu_autocast_enabled(amp, device)`.
        args, kwargs: those of `monai.engines.SupervisedEvaluator`.
    """

    def __init__(self, *args: Any, cpu_amp: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cpu_amp = bool(cpu_amp)

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> dict:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_amp):
            return super()._iteration(engine, batchdata)
