"""(b) Model time for one volume, chunked by hand and through MONAI's SliceInferer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from scripts.benchmark.common import (
    NUM_CLASSES,
    Variant,
    _autocast,
    _cudnn,
    _free,
    _memory_format,
    _prepare,
    _row,
    build_model,
    time_calls,
)


def measure_volume(
    model_name: str,
    variant: Variant,
    device: torch.device,
    features: Sequence[int],
    depth: int = 160,
    size: int = 384,
    sw_batch_size: int = 32,
    warmup: int = 2,
    repeats: int = 5,
    budget_s: float = 15.0,
    slice_inferer: bool = True,
    seed: int = 0,
) -> list[dict]:
    """(b) Eval-mode model over a random (depth, 1, size, size) volume in chunks of `sw_batch_size` slices into a
    preallocated fp32 logit buffer, and the same through MONAI's SliceInferer on (1, 1, depth, size, size), under
    torch.inference_mode; seconds per volume (median)."""
    from monai.inferers import SliceInferer

    _cudnn(benchmark=True, deterministic=variant.deterministic)
    torch.manual_seed(seed)
    model = build_model(model_name, features, size).to(device).eval()
    if variant.fold:
        from scripts.networks import fold_batch_norms

        fold_batch_norms(model)
    model, net = _prepare(model, variant)
    if variant.onnxruntime:
        if device.type != "cpu":
            raise ValueError("the ort variant runs on a CPU only")
        from scripts.onnx_runtime import OnnxRuntimeNetwork

        net = OnnxRuntimeNetwork(model)  # exported on the first (warm-up) call
    fmt = _memory_format(variant)
    volume = torch.randn(depth, 1, size, size, device=device)
    logits = torch.empty(depth, NUM_CLASSES, size, size, device=device)
    sw = max(1, int(sw_batch_size))

    def chunks() -> None:
        with torch.inference_mode(), _autocast(device, variant.precision):
            for i in range(0, depth, sw):
                logits[i : i + sw] = net(volume[i : i + sw].contiguous(memory_format=fmt))

    rows = []
    common = {"depth": depth, "size": size, "sw_batch_size": sw}
    timing = time_calls(chunks, device, warmup, repeats, budget_s, min_repeats=min(3, repeats))
    if not bool(torch.isfinite(logits).all()):
        raise FloatingPointError("non-finite logits")
    rows.append(
        _row(
            "volume",
            "time",
            model_name,
            variant.name,
            timing["median_s"],
            "s/volume",
            method="chunks",
            times_s=timing["times_s"],
            warmup_s=timing["warmup_s"],
            **common,
        )
    )
    if slice_inferer:
        inferer = SliceInferer(roi_size=(-1, -1), spatial_dim=0, sw_batch_size=sw, progress=False)
        volume5 = volume.permute(1, 0, 2, 3).unsqueeze(0)  # (1, 1, D, H, W): sagittal slices along axis 0 of D,H,W

        def run_net(x):
            return net(x.contiguous(memory_format=fmt))

        def via_inferer() -> None:
            with torch.inference_mode(), _autocast(device, variant.precision):
                out = inferer(volume5, run_net)
            state["shape"] = tuple(out.shape)

        state: dict[str, Any] = {}
        timing = time_calls(via_inferer, device, warmup, repeats, budget_s, min_repeats=min(3, repeats))
        if state["shape"] != (1, NUM_CLASSES, depth, size, size):
            raise RuntimeError(f"SliceInferer returned shape {state['shape']}")
        rows.append(
            _row(
                "volume_sliceinferer",
                "time",
                model_name,
                variant.name,
                timing["median_s"],
                "s/volume",
                method="monai.inferers.SliceInferer",
                times_s=timing["times_s"],
                warmup_s=timing["warmup_s"],
                **common,
            )
        )
    _free(device)
    return rows
