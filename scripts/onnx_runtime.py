"""Run the network with onnxruntime where PyTorch would run it in fp32 on a CPU.

Why: on a CPU without native bf16 (no AVX512-BF16 or AMX) `amp` leaves inference in fp32, and in fp32
onnxruntime's CPU kernels ran EAS U-Net's pass over a full-size scan twice as fast as PyTorch's on 2 cores, with
logits within 2e-7 of PyTorch's (docs/benchmarks.md, "Version 0.4.17"). Where the CPU runs bf16 natively, PyTorch's
bf16 autocast stays (as fast as onnxruntime's fp32 in the same runs); on a GPU nothing changes.

`OnnxRuntimeInferer` wraps an inferer (the configs' `SliceInferer`) and, per call, decides from the network: in eval
mode, on a CPU, not compiled, and (with `runtime="auto"`) where `amp` would not run bf16, it exports the network to
ONNX in memory (`scripts.export.export_onnx`, batch / height / width dynamic, about a second), opens an
onnxruntime session with PyTorch's thread count, and hands the wrapped inferer a callable that runs the session on
each chunk of slices. The export is redone when the weights change (a checkpoint loaded into the same module,
MONAI Label's reload of a fine-tuned model, batch norms folded), since the session holds a copy of them. A network
in train mode (MONAI Label's dropout sampling), on a GPU, compiled with `--compile True`, or wrapped for DDP
(multi_gpu_train.json's validation, whose forward shares rank 0's batch-norm statistics) runs in PyTorch.

Config key `cpu_runtime`: "auto" (default: onnxruntime where it helps and is installed, else PyTorch), "torch", or
"onnxruntime" (on every CPU, bf16-capable or not; an error if the package is missing).
"""

from __future__ import annotations

import io
import logging
import time
import weakref
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from scripts.export import INPUT_NAME, OUTPUT_NAME, export_onnx, missing_onnx_packages
from scripts.precision import autocast_enabled

__all__ = ["RUNTIMES", "OnnxRuntimeNetwork", "OnnxRuntimeInferer", "onnxruntime_available", "weights_key"]

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime")


def onnxruntime_available() -> bool:
    """True when onnxruntime and onnx (which torch's ONNX exporter imports) can be imported."""
    return not missing_onnx_packages()


def weights_key(network: torch.nn.Module) -> tuple:
    """What identifies the weights a session was exported from: the module, and each parameter's and buffer's
    storage and in-place version (`load_state_dict` copies in place and bumps the version; folding batch norms
    changes the set of tensors)."""
    tensors = list(network.parameters()) + list(network.buffers())
    return (id(network),) + tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in tensors)


class OnnxRuntimeNetwork:
    """A callable with the network's contract (a float32 tensor (B, C, H, W) in, logits out) that runs an ONNX
    export of `network` with onnxruntime on the CPU. The export happens on the first call, traced with that call's
    first slice; H and W must be multiples of 16 as for the network itself."""

    def __init__(self, network: torch.nn.Module, threads: int | None = None) -> None:
        self.network = network
        self.threads = int(threads or torch.get_num_threads())
        self._session: Any = None

    def _export(self, example: torch.Tensor) -> None:
        import onnxruntime

        start = time.perf_counter()
        buffer = io.BytesIO()
        export_onnx(self.network, buffer, example)  # the export of `python -m scripts.export onnx`, into memory
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        # no spinning between runs: as fast here, and the idle pool leaves the cores to the loader and the writer
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        logger.info(
            f"cpu_runtime: the network (its current weights) exported to ONNX in {time.perf_counter() - start:.1f} s;"
            f" it runs in onnxruntime ({self.threads} threads)"
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.as_tensor() if isinstance(x, MetaTensor) else x
        x = x.detach().to("cpu", torch.float32).contiguous()
        if self._session is None:
            self._export(x[:1])
        (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        return torch.from_numpy(np.ascontiguousarray(out))


class OnnxRuntimeInferer(Inferer):
    """Run `inferer` with the network in onnxruntime where `runtime` and the machine call for it (module docstring).

    Args:
        inferer: the inferer to run, e.g. `SliceInferer(spatial_dim=0, ...)`.
        runtime: "auto", "torch" or "onnxruntime" (the config key `cpu_runtime`).
        amp: the config key `amp` ("auto" keeps PyTorch where it would run bf16).
    """

    def __init__(self, inferer: Inferer, runtime: str = "auto", amp: bool = True) -> None:
        super().__init__()
        runtime = str(runtime).lower()
        if runtime not in RUNTIMES:
            raise ValueError(f"cpu_runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
        if runtime == "onnxruntime" and not onnxruntime_available():
            raise ValueError(
                "cpu_runtime 'onnxruntime' needs the onnx and onnxruntime packages (pip install onnx==1.23.2 "
                "onnxruntime==1.32.0, as in requirements.txt), or use --cpu_runtime auto"
            )
        self.inferer, self.runtime, self.amp = inferer, runtime, bool(amp)
        self._available = onnxruntime_available()  # looked up once, not for every scan
        self._key: tuple | None = None
        self._network: OnnxRuntimeNetwork | None = None
        self._failed: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # not ids: a new network may reuse one
        self._said_torch = False

    def uses_onnxruntime(self, network: Any) -> bool:
        """Whether this call runs `network` in onnxruntime (the rules of the module docstring)."""
        if self.runtime == "torch" or not isinstance(network, torch.nn.Module) or network.training:
            return False
        if isinstance(network, torch.nn.parallel.DistributedDataParallel):
            return False  # its forward shares rank 0's batch-norm statistics, which every rank must end with
        if hasattr(network, "_orig_mod") or network in self._failed:  # compiled, or its export failed
            return False
        param = next(network.parameters(), None)
        if param is None or param.device.type != "cpu":
            return False
        if self.runtime == "onnxruntime":
            return True
        return self._available and not autocast_enabled(self.amp, "cpu")

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.uses_onnxruntime(network):
            if self.runtime == "auto" and not self._said_torch and isinstance(network, torch.nn.Module):
                self._said_torch = True
                logger.info("cpu_runtime auto: the network runs in PyTorch")
            return self.inferer(inputs, network, *args, **kwargs)
        key = weights_key(network)
        if key != self._key or self._network is None:
            self._key, self._network = key, OnnxRuntimeNetwork(network)
        try:
            return self.inferer(inputs, self._network, *args, **kwargs)
        except Exception as error:
            if self.runtime == "onnxruntime" or self._network._session is not None:
                raise  # asked for explicitly, or a failure while running (not exporting): not ours to hide
            self._failed.add(network)
            self._key = self._network = None
            logger.warning(f"cpu_runtime auto: the ONNX export failed ({error}); the network runs in PyTorch")
            return self.inferer(inputs, network, *args, **kwargs)
