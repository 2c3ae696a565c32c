"""(a) The training step: model + deep-supervision DiceCE + SGD on random batches."""

from __future__ import annotations

import math
import resource
from collections.abc import Callable, Sequence
from typing import Any

import torch

from scripts.benchmark.common import (
    GIB,
    NUM_CLASSES,
    Variant,
    _autocast,
    _cudnn,
    _free,
    _memory_format,
    _prepare,
    _row,
    build_model,
    make_loss,
    time_calls,
)


def make_train_step(
    model_name: str,
    variant: Variant,
    device: torch.device,
    features: Sequence[int],
    batch_size: int = 16,
    size: int = 384,
    seed: int = 0,
) -> tuple[Callable[[], None], dict[str, Any]]:
    """The training program's step (model, deep-supervision DiceCE, SGD 0.01/0.9/1e-4) on two alternating batches
    of random normal images and random labels in {0, 1, 2}: `(step, state)`, where `state["loss"]` holds the last
    loss. Shared by (a) and `scripts/experiments/profile_step.py`, so the profile is of the step measured here."""
    _cudnn(benchmark=True, deterministic=variant.deterministic)
    torch.manual_seed(seed)
    model = build_model(model_name, features, size).to(device).train()
    model, net = _prepare(model, variant)
    loss_fn = make_loss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type) if variant.gradscaler else None
    fmt = _memory_format(variant)
    inputs = [
        (
            torch.randn(batch_size, 1, size, size, device=device).contiguous(memory_format=fmt),
            torch.randint(0, NUM_CLASSES, (batch_size, 1, size, size), device=device),
        )
        for _ in range(2)
    ]
    state: dict[str, Any] = {"i": 0, "loss": None}

    def step() -> None:
        x, y = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, variant.precision):
            loss = loss_fn(net(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        state["loss"] = loss

    return step, state


def measure_train_step(
    model_name: str,
    variant: Variant,
    device: torch.device,
    features: Sequence[int],
    batch_size: int = 16,
    size: int = 384,
    warmup: int = 5,
    repeats: int = 30,
    budget_s: float = 20.0,
    seed: int = 0,
) -> list[dict]:
    """(a) One SGD step of the training program (model, deep-supervision DiceCE, SGD 0.01/0.9/1e-4) on random
    normal images and random labels in {0, 1, 2}; slices/s of the median step, and peak GPU memory."""
    step, state = make_train_step(model_name, variant, device, features, batch_size, size, seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = time_calls(step, device, warmup, repeats, budget_s, min_repeats=min(3, repeats))
    loss = float(state["loss"].detach().float())
    if not math.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss}")
    details = {
        "batch_size": batch_size,
        "size": size,
        "median_step_s": timing["median_s"],
        "times_s": timing["times_s"],
        "warmup_s": timing["warmup_s"],
        "final_loss": loss,
    }
    if device.type == "cpu":
        details["peak_rss_gib_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    rows = [
        _row(
            "train_step", "throughput", model_name, variant.name, batch_size / timing["median_s"], "slices/s", **details
        )
    ]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / GIB
        reserved = torch.cuda.max_memory_reserved(device) / GIB
        rows.append(_row("train_step", "peak_memory", model_name, variant.name, peak, "GiB", reserved_gib=reserved))
    _free(device)
    return rows
