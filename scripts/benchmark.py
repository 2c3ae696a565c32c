"""Speed and memory of EAS U-Net against MONAI's BasicUNet at the same widths, in one run on one device.

Measurements (each a function returning result rows; `run` composes them):

- `floor`: the two ceilings of the device, measured in this run (a large matrix product per precision, a large
  device-to-device copy), and per model the FLOPs of one 2D slice (forward; forward + deep-supervision loss +
  backward) and the minimum bytes a training / inference slice must move. Every timing below is reported against
  the floor `max(FLOPs / matmul rate, minimum bytes / copy bandwidth)`.
- `train_step` (a): model + `DeepSupervisionLoss(DiceCELoss)` + SGD step on random inputs and random labels,
  batch 16 of 1x384x384; slices/s and peak GPU memory.
- `volume` (b): eval-mode model over a 160x384x384 volume in chunks of `sw_batch_size` slices, and the same through
  MONAI's `SliceInferer` (its own overhead visible); seconds per volume.
- `inference` (c): `configs/inference.json` run by `monai.bundle.ConfigWorkflow` on a phantom NIfTI (load,
  preprocess, infer, invert, save), after a warm-up run; seconds per volume, with a breakdown.
- `train_loop` (d): `configs/train.json` run by `ConfigWorkflow` (SupervisedTrainer, CacheDataset, the real
  transforms) on phantom volumes; slices/s after the first epoch, as a percentage of (a), plus the data loader's
  own throughput without the model.
- `agreement`: bf16 against fp32 predictions of the same model on phantom test volumes (voxels that differ, Dice
  between the two label maps, and the change of Dice against the phantom labels).

Variants are written as `+`-joined tokens: `fp32` or `bf16` (autocast), `cl` (channels_last), `compile` or
`compile=MODE` (torch.compile), `det` (cuDNN deterministic algorithms, as `monai.utils.set_determinism` sets),
`nwN` (data loader workers, train_loop only), `bench` (cuDNN autotuning, inference only), `measure` (inference.json's
cartilage measurements, inference only; off by default, see `Variant`).

Command line (the docstring of `run` is the help):
    python -m scripts.benchmark                                  # the default set for the device found
    python -m scripts.benchmark --only train_step,volume --device cuda --output bench.json
    python -m scripts.benchmark --quick --device cpu             # tiny sizes (tests, CI)
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
if str(BUNDLE_ROOT) not in sys.path:  # configs name `scripts.*` targets; make them importable from any cwd
    sys.path.insert(0, str(BUNDLE_ROOT))

from scripts.cli import as_bool  # noqa: E402
from scripts.io_utils import atomic_path, atomic_write_text  # noqa: E402
from scripts.precision import cpu_bf16_supported  # noqa: E402

__all__ = [
    "MEASUREMENTS",
    "MODELS",
    "Variant",
    "build_model",
    "count_model",
    "measure_ceilings",
    "make_train_step",
    "measure_train_step",
    "measure_volume",
    "measure_inference",
    "measure_train_loop",
    "measure_agreement",
    "ensure_phantoms",
    "run",
]

SCHEMA = "knee-cartilage-benchmark/1"
MEASUREMENTS = ("floor", "train_step", "volume", "inference", "train_loop", "agreement")
MODELS = ("eas_unet", "basic_unet")
MODEL_LABELS = {"eas_unet": "EAS U-Net", "basic_unet": "BasicUNet"}
BASELINE = "basic_unet"
MODELS_WITH_DEPTHWISE = ("eas_unet",)  # where the `shift` option changes anything
NUM_CLASSES = 3
GIB = 1024**3

FLOOR_MODEL = {
    "flops": "multiply-adds x2 of every convolution and matrix product (torch.utils.flop_counter.FlopCounterMode, "
    "with the weight-gradient term of grouped/depthwise convolutions divided by the groups, which torch over-counts); "
    "norms, activations, pooling, interpolation and the loss are not counted",
    "bytes_min_train_per_slice": "input image fp32 (4 B/voxel) + label (1 B/voxel) read once, plus per SGD step the "
    "fp32 parameters read by forward and backward, gradients written, and the optimizer reading parameter, gradient "
    "and momentum and writing parameter and momentum (8 x 4 B x parameters), divided by the batch size; activations "
    "are assumed to stay on chip (perfect fusion), so this is a lower bound no real U-Net reaches",
    "bytes_min_infer_per_slice": "input image fp32 (4 B/voxel) read once + label map (1 B/voxel) written once, plus "
    "the fp32 parameters read once per chunk of sw_batch_size slices",
    "bytes_eager": "every ATen operation reads each tensor argument and writes each output once (views free), fp32 "
    "or bf16 tensors; an estimate of unfused eager traffic, not a floor",
    "floor_time": "max(FLOPs / measured matmul rate of the precision, minimum bytes / measured copy bandwidth); "
    "fp32 on CUDA uses the TF32 rate when cuDNN may use TF32 (torch's default)",
    "pct_of_floor": "floor time / measured time x 100 (100 % = at the floor)",
}


# ----------------------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[benchmark] {message}", flush=True)


def _as_list(value: Any, cast: Callable = str) -> list:
    """Accept "a,b", ("a", "b") or a single value (fire turns `--x a,b` into a tuple and `--x 8` into an int)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    if isinstance(value, Iterable):
        return [cast(v) for v in value]
    return [cast(value)]


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda:0")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _now(device: torch.device) -> float:
    _sync(device)
    return time.perf_counter()


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def _cudnn(benchmark: bool = True, deterministic: bool = False) -> None:
    """Set cuDNN's flags explicitly: configs call `monai.utils.set_determinism`, which leaves deterministic=True."""
    torch.backends.cudnn.benchmark = bool(benchmark)
    torch.backends.cudnn.deterministic = bool(deterministic)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _short_error(exc: BaseException, limit: int = 240) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rel(path: Path) -> str:
    """A path for the JSON: relative to the bundle root when inside it, else only its name (no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(BUNDLE_ROOT))
    except ValueError:
        return f"<outside the bundle>/{Path(path).name}"


def time_calls(
    fn: Callable[[], Any],
    device: torch.device,
    warmup: int = 2,
    repeats: int = 10,
    budget_s: float | None = None,
    min_repeats: int = 1,
) -> dict[str, Any]:
    """Run `fn` `warmup` times, then up to `repeats` timed times (fewer once `budget_s` is spent, at least
    `min_repeats`); the device is synchronised around every call. Returns the per-call times and their median."""
    warm = []
    for _ in range(int(warmup)):
        t0 = _now(device)
        fn()
        warm.append(_now(device) - t0)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(1, int(repeats)):
        t0 = _now(device)
        fn()
        times.append(_now(device) - t0)
        if budget_s is not None and len(times) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return {"warmup_s": warm, "times_s": times, "median_s": statistics.median(times)}


def inductor_environment() -> dict[str, str]:
    """TORCHINDUCTOR_* settings of the environment (e.g. TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1), which change
    compiled results without showing in the command. Values that are paths (cache folders) are recorded as
    `<path>`: they say nothing about speed and would put a machine's paths into the JSON."""
    return {
        k: "<path>" if os.sep in v or k.endswith("_DIR") else v
        for k, v in sorted(os.environ.items())
        if k.startswith("TORCHINDUCTOR_")
    }


def _read_config(name: str) -> dict[str, Any]:
    return json.loads((BUNDLE_ROOT / "configs" / name).read_text())


def config_sw_batch_size(device: torch.device) -> int:
    """inference.json's `sw_batch_size` as the config resolves it for `device` (it depends on the device type)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(_read_config("inference.json"))
    parser["device"] = f"$torch.device('{device.type}')"
    return int(parser.get_parsed_content("sw_batch_size"))


# ----------------------------------------------------------------------------------------------------------------------
# variants and models
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One set of speed options, written as `+`-joined tokens, e.g. `bf16+cl+compile`.

    Args:
        precision: "fp32" or "bf16" (autocast; parameters stay fp32).
        channels_last: model and input in `torch.channels_last`.
        compile: None, or a `torch.compile` mode ("default", "max-autotune-no-cudagraphs", ...).
        deterministic: cuDNN deterministic algorithms (what `monai.utils.set_determinism` switches on).
        num_workers: data loader workers (train_loop); None keeps the config's value.
        cudnn_benchmark: cuDNN autotuning in the inference workflow (`bench`; inference.json does not set it).
        gradscaler: use a GradScaler as MONAI's SupervisedTrainer does with `amp` (train_step only).
        measure: keep inference.json's cartilage measurements (`measure`; off by default: their cost depends on
            the predicted cartilage, which a randomly initialised model makes meaningless; use with --checkpoint).
        fold: batch norms folded into the convolutions (`fold`; volume and inference only: inference.json's
            `fold_batch_norm`, which the benchmark sets explicitly both ways).
        shifted: depthwise convolutions as sums of shifted products (`shift`, `scripts.networks.shifted`), which
            only `torch.compile` can make fast.
    """

    precision: str = "fp32"
    channels_last: bool = False
    compile: str | None = None
    deterministic: bool = False
    num_workers: int | None = None
    cudnn_benchmark: bool = False
    gradscaler: bool = False
    measure: bool = False
    fold: bool = False
    shifted: bool = False

    @classmethod
    def parse(cls, text: str | Variant) -> Variant:
        if isinstance(text, Variant):
            return text
        kwargs: dict[str, Any] = {}
        for token in str(text).strip().lower().split("+"):
            token = token.strip()
            if token in ("fp32", "bf16", "fp16"):
                kwargs["precision"] = token
            elif token in ("cl", "channels_last"):
                kwargs["channels_last"] = True
            elif token == "compile":
                kwargs["compile"] = "default"
            elif token.startswith("compile=") or token.startswith("compile:"):
                kwargs["compile"] = token.split(token[7], 1)[1] or "default"
            elif token == "det":
                kwargs["deterministic"] = True
            elif token == "bench":
                kwargs["cudnn_benchmark"] = True
            elif token in ("scaler", "gradscaler"):
                kwargs["gradscaler"] = True
            elif token == "measure":
                kwargs["measure"] = True
            elif token == "fold":
                kwargs["fold"] = True
            elif token == "shift":
                kwargs["shifted"] = True
            elif token.startswith("nw") and token[2:].isdigit():
                kwargs["num_workers"] = int(token[2:])
            elif token:
                raise ValueError(f"unknown variant token {token!r} in {text!r}; see the module docstring")
        return cls(**kwargs)

    @property
    def name(self) -> str:
        tokens = [self.precision]
        if self.channels_last:
            tokens.append("cl")
        if self.compile:
            tokens.append("compile" if self.compile == "default" else f"compile={self.compile}")
        if self.deterministic:
            tokens.append("det")
        if self.cudnn_benchmark:
            tokens.append("bench")
        if self.gradscaler:
            tokens.append("scaler")
        if self.measure:
            tokens.append("measure")
        if self.fold:
            tokens.append("fold")
        if self.shifted:
            tokens.append("shift")
        if self.num_workers is not None:
            tokens.append(f"nw{self.num_workers}")
        return "+".join(tokens)

    @property
    def step_key(self) -> str:
        """The train_step variant that matches a train_loop variant (loader workers dropped)."""
        return Variant(self.precision, self.channels_last, self.compile, self.deterministic, shifted=self.shifted).name


def build_model(name: str, features: Sequence[int], size: int = 384) -> torch.nn.Module:
    """EAS U-Net as configured in configs/train.json, or MONAI's BasicUNet at the same widths (as
    configs/networks/unet.json: batch norm, last decoder width = first width)."""
    fea = [int(f) for f in features]
    if name == "eas_unet":
        from scripts.networks import EASUNet

        return EASUNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=NUM_CLASSES,
            features=fea,
            eas_levels=(4,),
            reference_size=int(size),
            deep_supervision=True,
        )
    if name == "basic_unet":
        from monai.networks.nets import BasicUNet

        return BasicUNet(spatial_dims=2, in_channels=1, out_channels=NUM_CLASSES, features=(*fea, fea[0]), norm="batch")
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def _network_overrides(name: str, features: Sequence[int], size: int) -> dict[str, Any]:
    """Config overrides that make configs/*.json build the same network as `build_model`."""
    fea = [int(f) for f in features]
    if name == "eas_unet":
        return {"network_def#features": fea, "network_def#reference_size": int(size)}
    return {
        "network_def": {
            "_target_": "BasicUNet",
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": "@num_classes",
            "features": [*fea, fea[0]],
            "norm": "batch",
        },
        "model_name": "BasicUNet",
    }


def make_loss() -> torch.nn.Module:
    """The training loss of configs/train.json."""
    from monai.losses import DiceCELoss

    from scripts.losses import DeepSupervisionLoss

    return DeepSupervisionLoss(
        DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True), weight_mode="exp"
    )


def _prepare(model: torch.nn.Module, variant: Variant) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model, the callable to run: compiled when asked)."""
    if variant.shifted:
        from scripts.networks import use_shifted_depthwise

        use_shifted_depthwise(model)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if variant.compile:
        mode = None if variant.compile == "default" else variant.compile
        return model, torch.compile(model, mode=mode)
    return model, model


def _memory_format(variant: Variant):
    return torch.channels_last if variant.channels_last else torch.contiguous_format


# ----------------------------------------------------------------------------------------------------------------------
# floor: ceilings of the device, FLOPs and bytes of the models
# ----------------------------------------------------------------------------------------------------------------------


def measure_ceilings(device: torch.device, quick: bool = False, precisions: Sequence[str] = ("fp32",)) -> dict:
    """Achievable matmul rate per precision (TFLOP/s) and device-to-device copy bandwidth (GB/s, bytes read plus
    written), measured once in this run on random data."""
    out: dict[str, Any] = {"matmul_tflops": {}, "matmul_size": None, "copy_gb_per_s": None, "copy_bytes": None}
    if device.type == "cuda":
        n = 2048 if quick else 8192
        kinds = [("bf16", torch.bfloat16, False), ("tf32", torch.float32, True), ("fp32", torch.float32, False)]
    else:
        n = 512 if quick else 2048
        kinds = [("fp32", torch.float32, False)]
        if "bf16" in precisions:
            kinds.append(("bf16", torch.bfloat16, False))
    out["matmul_size"] = n
    prev = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in kinds:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            gen = torch.Generator(device=device).manual_seed(0)
            a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
            b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
            c = torch.empty(n, n, device=device, dtype=dtype)
            t = time_calls(lambda a=a, b=b, c=c: torch.mm(a, b, out=c), device, warmup=2, repeats=10, budget_s=5.0)
            out["matmul_tflops"][name] = 2.0 * n**3 / t["median_s"] / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    numel = (1 << 22 if quick else 1 << 28) if device.type == "cuda" else (1 << 20 if quick else 1 << 26)
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    t = time_calls(lambda: dst.copy_(src), device, warmup=2, repeats=20, budget_s=5.0)
    out["copy_bytes"] = 2 * numel * 4
    out["copy_gb_per_s"] = 2 * numel * 4 / t["median_s"] / 1e9
    _free(device)
    return out


def _conv_flop_count(x_shape, w_shape, out_shape, transposed: bool) -> int:
    from torch.utils.flop_counter import conv_flop_count

    return int(conv_flop_count(list(x_shape), list(w_shape), list(out_shape), transposed))


def _flop_mapping(tally: dict[str, int]) -> dict:
    """FlopCounterMode formulas for convolutions that (1) tally grouped-convolution FLOPs separately and (2) count the
    weight gradient of grouped convolutions correctly (torch's formula multiplies it by the number of groups)."""
    aten = torch.ops.aten

    def forward(x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed, *args, out_shape=None, **kw):
        groups = args[1] if len(args) > 1 else kw.get("groups", 1)
        flops = _conv_flop_count(x_shape, w_shape, out_shape, bool(transposed))
        tally["grouped" if int(groups or 1) > 1 else "dense"] += flops
        return flops

    def backward(
        grad_out_shape,
        x_shape,
        w_shape,
        _bias,
        _stride,
        _padding,
        _dilation,
        transposed,
        _output_padding,
        groups,
        output_mask,
        out_shape,
        **kw,
    ):
        def t(shape):
            return [shape[1], shape[0]] + list(shape[2:])

        flops = 0
        if output_mask[0]:
            flops += _conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
        if output_mask[1]:
            if transposed:
                wgrad = _conv_flop_count(t(grad_out_shape), t(x_shape), t(out_shape[1]), False)
            else:
                wgrad = _conv_flop_count(t(x_shape), t(grad_out_shape), t(out_shape[1]), False)
            flops += wgrad // max(int(groups), 1)
        tally["grouped" if int(groups) > 1 else "dense"] += flops
        return flops

    mapping = {aten.convolution_backward: backward}
    for op in ("convolution", "_convolution", "cudnn_convolution", "cudnn_convolution_transpose"):
        if hasattr(aten, op):
            mapping[getattr(aten, op)] = forward
    return mapping


def _count_flops(fn: Callable[[], Any]) -> tuple[int, int]:
    from torch.utils.flop_counter import FlopCounterMode

    tally = {"dense": 0, "grouped": 0}
    with FlopCounterMode(display=False, custom_mapping=_flop_mapping(tally)) as counter:
        fn()
    return int(counter.get_total_flops()), int(tally["grouped"])


class _ByteCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Bytes of every tensor argument and output of every ATen operation (views excluded): unfused eager traffic."""

    _FREE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias", "lift_fresh"}

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        returns = func._schema.returns
        if func._schema.name.split("::")[-1] in self._FREE:
            return out
        if returns and all(r.alias_info is not None and not r.alias_info.is_write for r in returns):
            return out  # a view: no data moves
        from torch.utils._pytree import tree_flatten

        for value in tree_flatten((args, kwargs))[0] + tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.bytes += value.numel() * value.element_size()
        return out


def count_model(name: str, features: Sequence[int], size: int) -> dict[str, Any]:
    """Parameters, FLOPs per slice (forward in eval mode; forward + loss + backward in train mode, deep supervision
    included) and eager-traffic bytes per slice, counted on the meta device (no data, no time)."""
    loss_fn = make_loss()
    with torch.device("meta"):
        model = build_model(name, features, size)
    params = sum(p.numel() for p in model.parameters())
    x = torch.empty(1, 1, size, size, device="meta")
    y = torch.zeros(1, 1, size, size, dtype=torch.long, device="meta")

    def forward(m=model, x=x):
        m.eval()
        with torch.no_grad():
            m(x)

    def train(m=model, x=x):
        m.train()
        loss_fn(m(x), y).backward()

    out: dict[str, Any] = {"parameters": int(params), "parameter_bytes": int(params) * 4}
    out["flops_forward_per_slice"], out["flops_forward_grouped"] = _count_flops(forward)
    out["flops_train_per_slice"], out["flops_train_grouped"] = _count_flops(train)
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        m = copy.deepcopy(model).to(dtype)
        xx = x.to(dtype)
        for kind, fn in (("forward", forward), ("train", train)):
            counter = _ByteCounter()
            with counter:
                fn(m, xx)
            out[f"bytes_eager_{kind}_per_slice_{dtype_name}"] = int(counter.bytes)
    return out


def floor_bytes(model_stats: dict, size: int, batch_size: int, sw_batch_size: int) -> dict[str, float]:
    """The minimum-bytes model of FLOOR_MODEL for one training and one inference slice."""
    p = model_stats["parameter_bytes"]
    voxels = size * size
    return {
        "bytes_min_train_per_slice": voxels * (4 + 1) + 8 * p / max(batch_size, 1),
        "bytes_min_infer_per_slice": voxels * (4 + 1) + p / max(sw_batch_size, 1),
    }


# ----------------------------------------------------------------------------------------------------------------------
# (a) training step
# ----------------------------------------------------------------------------------------------------------------------


def _row(measurement: str, metric: str, model: str, variant: str, value: float | None, unit: str, **details) -> dict:
    status = details.pop("status", "ok")
    return {
        "measurement": measurement,
        "metric": metric,
        "model": model,
        "variant": variant,
        "value": None if value is None else float(value),
        "unit": unit,
        "status": status,
        "details": details,
    }


def _failed_rows(measurement: str, metrics: Sequence[tuple[str, str]], model: str, variant: str, status: str):
    return [_row(measurement, metric, model, variant, None, unit, status=status) for metric, unit in metrics]


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


# ----------------------------------------------------------------------------------------------------------------------
# (b) model time for one volume
# ----------------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------------
# phantom data (cached across runs in data_dir)
# ----------------------------------------------------------------------------------------------------------------------


def _write_phantom_case(folder: str, name: str, shape: tuple[int, int, int], seed: int) -> str:
    """Generate one knee phantom and write image (int16) and OAI-ZIB label (uint8) NIfTI files atomically."""
    import nibabel as nib

    from scripts.phantom import simulate_knee

    knee = simulate_knee(shape, seed)
    for sub, array in (("images", knee.image), ("labels", knee.label)):
        target = Path(folder) / sub / f"{name}.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(array, knee.affine)
        img.set_qform(knee.affine, code=1)
        img.set_sform(knee.affine, code=1)
        img.header.set_xyzt_units("mm")
        with atomic_path(target) as tmp:
            nib.save(img, str(tmp))
    return name


def ensure_phantoms(
    data_dir: str | Path, shape: Sequence[int], num_train: int, num_test: int, seed: int = 0, workers: int = 0
) -> Path:
    """A phantom dataset `data_dir/knee_DxHxW_sSEED` with `datalist.json` listing `num_train` training and
    `num_test` test cases (the bundle's `datalist` layout); cases already there are reused, missing ones generated
    in parallel. Training case i uses seed (seed, i), test case i seed (seed + 1, i)."""
    from scripts.phantom import case_seed

    shape = tuple(int(s) for s in shape)
    folder = Path(data_dir) / f"knee_{'x'.join(map(str, shape))}_s{seed}"
    cases = [(f"train_{i:03d}", case_seed(seed, i)) for i in range(num_train)]
    cases += [(f"test_{i:03d}", case_seed(seed + 1, i)) for i in range(num_test)]
    missing = [
        (n, s) for n, s in cases if not all((folder / d / f"{n}.nii.gz").is_file() for d in ("images", "labels"))
    ]
    if missing:
        workers = workers or max(1, min(len(missing), os.cpu_count() or 1, 8))
        _log(f"generating {len(missing)} knee phantom(s) of {shape} in {_rel(folder)} with {workers} process(es)")
        start = time.perf_counter()
        if workers == 1:
            for n, s in missing:
                _write_phantom_case(str(folder), n, shape, s)
        else:
            method = "spawn" if torch.cuda.is_initialized() else "fork"
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
                list(
                    pool.map(
                        _write_phantom_case,
                        [str(folder)] * len(missing),
                        [n for n, _ in missing],
                        [shape] * len(missing),
                        [s for _, s in missing],
                    )
                )
        _log(f"phantoms ready in {time.perf_counter() - start:.1f} s")

    def entry(name: str) -> dict[str, str]:
        return {"image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz", "subject": name}

    datalist = {
        "name": "benchmark knee phantoms",
        "label_preset": "oai-zib",
        "shape": list(shape),
        "training": [entry(n) for n, _ in cases[:num_train]],
        "test": [entry(n) for n, _ in cases[num_train:]],
    }
    text = json.dumps(datalist, indent=2) + "\n"
    target = folder / "datalist.json"
    if not target.is_file() or target.read_text() != text:
        atomic_write_text(target, text)
    return folder


# ----------------------------------------------------------------------------------------------------------------------
# (c) end-to-end inference through configs/inference.json
# ----------------------------------------------------------------------------------------------------------------------


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
    `shifted_depthwise` with `shift`; the configs' `network` expression does the rest."""
    return {"channels_last": variant.channels_last, "shifted_depthwise": variant.shifted}


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
) -> list[dict]:
    """(c) configs/inference.json through `monai.bundle.ConfigWorkflow` on one phantom NIfTI scan with a randomly
    initialised checkpoint: the whole workflow (parse, build, load checkpoint, load and preprocess the scan, infer,
    softmax, invert, argmax, write NIfTI) timed after `warmup_runs` runs that absorb CUDA initialisation, cuDNN
    autotuning and compilation. With `volumes` > 1 also one run over that many copies of the scan (per-volume time
    of a batch run, setup amortised, loading overlapped by the data loader). `checkpoint` replaces the random
    weights; the config's cartilage measurements run only with the `measure` variant token."""
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


# ----------------------------------------------------------------------------------------------------------------------
# (d) the real training loop through configs/train.json
# ----------------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------------
# bf16 against fp32 predictions
# ----------------------------------------------------------------------------------------------------------------------


def _load_case(folder: Path, entry: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image scaled like the configs: 0.5-99.5 percentiles to 0..1, (D, 1, H, W) float32; classes (D, H, W) uint8)."""
    import nibabel as nib

    image = np.asarray(nib.load(str(folder / entry["image"])).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(str(folder / entry["label"])).dataobj, dtype=np.uint8)
    lo, hi = (float(v) for v in np.percentile(image, [0.5, 99.5]))
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    classes = np.zeros_like(label)
    classes[label == 2], classes[label == 4] = 1, 2  # oai-zib: femoral cartilage 2 -> 1, tibial cartilage 4 -> 2
    return torch.from_numpy(image).unsqueeze(1), torch.from_numpy(classes)


def _dice(a: torch.Tensor, b: torch.Tensor, cls: int) -> float:
    pa, pb = a == cls, b == cls
    denom = int(pa.sum()) + int(pb.sum())
    return 1.0 if denom == 0 else 2.0 * int((pa & pb).sum()) / denom


def _predict(net, volume: torch.Tensor, device: torch.device, precision: str, sw: int) -> torch.Tensor:
    out = torch.empty(volume.shape[0], *volume.shape[2:], dtype=torch.uint8, device=device)
    with torch.inference_mode(), _autocast(device, precision):
        for i in range(0, volume.shape[0], sw):
            out[i : i + sw] = net(volume[i : i + sw].to(device)).argmax(1).to(torch.uint8)
    return out


def _train_briefly(model, folder: Path, entries: list[dict], device: torch.device, steps: int, batch: int, seed: int):
    """A few SGD steps on random cartilage-containing slices of the phantom training cases, so the predictions
    compared below are those of a model that has learnt something (a random model's logits are near ties)."""
    gen = torch.Generator().manual_seed(seed)
    images, labels = zip(*(_load_case(folder, e) for e in entries))
    pool = [
        (i, s) for i, lab in enumerate(labels) for s in torch.nonzero(lab.flatten(1).amax(1) > 0).flatten().tolist()
    ]
    if not pool:
        raise RuntimeError("no cartilage-containing slices in the phantom training cases")
    loss_fn = make_loss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model.to(memory_format=fmt).train()
    for _ in range(steps):
        pick = [pool[int(j)] for j in torch.randint(len(pool), (batch,), generator=gen)]
        x = torch.stack([images[i][s] for i, s in pick]).to(device).contiguous(memory_format=fmt)
        y = torch.stack([labels[i][s] for i, s in pick]).unsqueeze(1).long().to(device)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, "bf16" if device.type == "cuda" else "fp32"):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def measure_agreement(
    model_name: str,
    device: torch.device,
    features: Sequence[int],
    dataset_dir: Path,
    size: int = 384,
    sw_batch_size: int = 32,
    checkpoint: str | None = None,
    train_steps: int = 0,
    train_batch: int = 16,
    seed: int = 0,
) -> list[dict]:
    """bf16 autocast against fp32 predictions (argmax label maps) of the same eval-mode model on the phantom test
    cases: fraction of voxels that differ, Dice between the two label maps per class, and Dice against the phantom
    labels in each precision (meaningful only for a trained model). The model is `checkpoint` if given, else a
    random initialisation trained here for `train_steps` steps on the phantom training cases."""
    _cudnn(benchmark=True, deterministic=False)
    torch.manual_seed(seed)
    model = build_model(model_name, features, size).to(device)
    datalist = json.loads((Path(dataset_dir) / "datalist.json").read_text())
    if checkpoint:
        model.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
        source = f"checkpoint {Path(checkpoint).name}"
        final_loss = None
    elif train_steps > 0:
        final_loss = _train_briefly(
            model, Path(dataset_dir), datalist["training"], device, train_steps, train_batch, seed
        )
        source = f"random initialisation trained here for {train_steps} steps on {len(datalist['training'])} phantoms"
    else:
        source, final_loss = "random initialisation (seed 0), untrained: Dice against labels is meaningless", None
    model.eval()
    cases = []
    differ, total = 0, 0
    for entry in datalist["test"]:
        image, truth = _load_case(Path(dataset_dir), entry)
        image = image.to(device)
        ref = _predict(model, image, device, "fp32", sw_batch_size).cpu()
        low = _predict(model, image, device, "bf16", sw_batch_size).cpu()
        d = int((ref != low).sum())
        differ, total = differ + d, total + ref.numel()
        cases.append(
            {
                "case": entry["subject"],
                "voxels_differing": d,
                "dice_bf16_vs_fp32": {c: _dice(ref, low, c) for c in (1, 2)},
                "dice_fp32_vs_label": {c: _dice(ref, truth, c) for c in (1, 2)},
                "dice_bf16_vs_label": {c: _dice(low, truth, c) for c in (1, 2)},
            }
        )
    if not cases:
        raise RuntimeError("the phantom dataset has no test cases")

    def mean(key: str, c: int) -> float:
        return float(np.mean([case[key][c] for case in cases]))

    delta = max(abs(mean("dice_bf16_vs_label", c) - mean("dice_fp32_vs_label", c)) for c in (1, 2))
    details = {
        "model_source": source,
        "trained": bool(checkpoint or train_steps > 0),
        "final_training_loss": final_loss,
        "fraction_voxels_differing": differ / max(total, 1),
        "min_dice_bf16_vs_fp32": min(mean("dice_bf16_vs_fp32", c) for c in (1, 2)),
        "mean_dice_fp32_vs_label": {c: mean("dice_fp32_vs_label", c) for c in (1, 2)},
        "mean_dice_bf16_vs_label": {c: mean("dice_bf16_vs_label", c) for c in (1, 2)},
        "cases": cases,
    }
    rows = [
        _row("agreement", "max_dice_change", model_name, "bf16 vs fp32", delta, "Dice", **details),
        _row(
            "agreement",
            "voxels_differing",
            model_name,
            "bf16 vs fp32",
            differ / max(total, 1),
            "fraction",
            model_source=source,
        ),
    ]
    del model
    _free(device)
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# plan, orchestration, report
# ----------------------------------------------------------------------------------------------------------------------


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
    native = cpu_bf16_supported()
    cpu_defaults = ["fp32+cl+fold"] + (["bf16+cl+fold"] if native else [])
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


def _rate(ceilings: dict, precision: str, device: torch.device) -> float | None:
    rates = ceilings.get("matmul_tflops", {})
    if precision == "fp32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        precision = "tf32"
    value = rates.get(precision) or rates.get("fp32")
    return None if value is None else value * 1e12


def _baseline_variant(name: str) -> str:
    """The baseline's row for variant `name`: the same, less `shift` (BasicUNet has no depthwise convolution)."""
    try:
        variant = Variant.parse(name)
    except ValueError:  # not a variant (e.g. an agreement row's "bf16 vs fp32")
        return name
    return replace(variant, shifted=False).name if variant.shifted else name


def _annotate(rows: list[dict], stats: dict, ceilings: dict | None, plan: Plan, device: torch.device) -> None:
    """Add ratio to BasicUNet (same measurement, metric and variant) and the floor to every row."""
    index = {(r["measurement"], r["metric"], r["model"], r["variant"]): r for r in rows}
    for r in rows:
        if r["measurement"] == "train_loop" and r["value"] is not None:
            step = index.get(("train_step", "throughput", r["model"], r["details"].get("step_variant")))
            if step is not None and step["value"]:
                r["details"]["pct_of_train_step"] = 100.0 * r["value"] / step["value"]
    for r in rows:
        base = index.get((r["measurement"], r["metric"], BASELINE, _baseline_variant(r["variant"])))
        ok = r["value"] is not None and base is not None and base["value"] not in (None, 0)
        r["ratio_to_basic_unet"] = r["value"] / base["value"] if ok else None
        r["floor_value"], r["pct_of_floor"] = None, None
        s = stats.get(r["model"])
        if not ceilings or not s or r["value"] in (None, 0):
            continue
        precision = Variant.parse(r["variant"]).precision if "vs" not in r["variant"] else "fp32"
        rate, bw = _rate(ceilings, precision, device), ceilings.get("copy_gb_per_s")
        if not rate or not bw:
            continue
        bw *= 1e9
        eager_key = "bf16" if precision == "bf16" else "fp32"
        if r["measurement"] in ("train_step", "train_loop") and r["metric"] == "throughput":
            t = max(s["flops_train_per_slice"] / rate, s["bytes_min_train_per_slice"] / bw)
            r["floor_value"] = 1.0 / t
            r["pct_of_floor"] = 100.0 * r["value"] / r["floor_value"]
            eager = s[f"bytes_eager_train_per_slice_{eager_key}"] + 5 * s["parameter_bytes"] / plan.batch_size
            r["details"]["eager_traffic_bound"] = bw / eager  # slices/s if unfused eager traffic ran at copy speed
        elif r["measurement"] in ("volume", "volume_sliceinferer", "inference", "inference_batch"):
            depth = r["details"].get("depth") or (r["details"].get("scan_shape") or [plan.depth])[0]
            t = depth * max(s["flops_forward_per_slice"] / rate, s["bytes_min_infer_per_slice"] / bw)
            r["floor_value"] = t
            r["pct_of_floor"] = 100.0 * t / r["value"]
            r["details"]["eager_traffic_bound"] = depth * s[f"bytes_eager_forward_per_slice_{eager_key}"] / bw


def _targets(rows: list[dict], device: torch.device, plan: Plan) -> list[dict]:
    """The issue's targets that this run's rows can decide (full size only)."""
    out: list[dict] = []
    if plan.size != 384:
        return out

    def ok(r):
        return r["status"] == "ok" and r["value"] is not None

    def pick(measurement, metric, model="eas_unet", precision=None):
        found = [
            r
            for r in rows
            if r["measurement"] == measurement and r["metric"] == metric and r["model"] == model and ok(r)
        ]
        if precision:
            found = [r for r in found if Variant.parse(r["variant"]).precision == precision]
        return found

    def add(name, target, value, met, where=""):
        out.append({"target": name, "threshold": target, "value": value, "met": met, "where": where})

    if device.type == "cuda":
        steps = [r for r in pick("train_step", "throughput", precision="bf16") if "det" not in r["variant"]]
        if steps:
            best = max(steps, key=lambda r: r["value"])
            add(
                "training step >= 1000 slices/s (bf16, batch 16)",
                1000,
                best["value"],
                best["value"] >= 1000,
                best["variant"],
            )
            mem = [r for r in pick("train_step", "peak_memory") if r["variant"] == best["variant"]]
            if mem:
                add("peak training memory <= 6 GiB", 6.0, mem[0]["value"], mem[0]["value"] <= 6.0, best["variant"])
        ratios = [r for r in pick("train_step", "throughput") if r.get("ratio_to_basic_unet") is not None]
        if ratios:
            worst = min(ratios, key=lambda r: r["ratio_to_basic_unet"])
            add(
                "EAS U-Net training not slower than BasicUNet (min ratio over variants)",
                1.0,
                worst["ratio_to_basic_unet"],
                worst["ratio_to_basic_unet"] >= 1.0,
                worst["variant"],
            )
        vols = pick("volume_sliceinferer", "time", precision="bf16") or pick("volume", "time", precision="bf16")
        if vols:
            best = min(vols, key=lambda r: r["value"])
            add(
                "model time for a 160-slice volume <= 0.05 s",
                0.05,
                best["value"],
                best["value"] <= 0.05,
                f"{best['measurement']} {best['variant']}",
            )
        infer = pick("inference", "time", precision="bf16")
        if infer:
            best = min(infer, key=lambda r: r["value"])
            add("end-to-end inference of one volume <= 2 s", 2.0, best["value"], best["value"] <= 2.0, best["variant"])
        for r in pick("train_loop", "throughput"):
            pct = r["details"].get("pct_of_train_step")
            if pct is not None:
                add("training loop >= 80 % of the step throughput", 80.0, pct, pct >= 80.0, r["variant"])
        agree = pick("agreement", "max_dice_change")
        if agree:
            r = agree[0]
            add(
                "bf16 Dice within 0.001 of fp32 (phantom test set)",
                0.001,
                r["value"],
                r["value"] <= 0.001,
                r["details"]["model_source"],
            )
    else:
        infer = pick("inference", "time")
        if infer:
            best = min(infer, key=lambda r: r["value"])
            add(
                "CPU end-to-end inference of one volume <= 60 s",
                60.0,
                best["value"],
                best["value"] <= 60.0,
                best["variant"],
            )
    return out


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if value == 0 or not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def format_table(report: dict) -> str:
    """The compact markdown table printed at the end (and written to docs by hand)."""
    lines = [
        "| measurement | model | options | value | unit | ratio to BasicUNet | % of floor |",
        "|---|---|---|---|---|---|---|",
    ]
    order = {
        m: i
        for i, m in enumerate(
            (
                "train_step",
                "train_loop",
                "loader",
                "volume",
                "volume_sliceinferer",
                "inference",
                "inference_batch",
                "agreement",
            )
        )
    }
    rows = sorted(
        report["results"],
        key=lambda r: (
            order.get(r["measurement"], 99),
            r["metric"],
            r["variant"],
            MODELS.index(r["model"]) if r["model"] in MODELS else 9,
        ),
    )
    for r in rows:
        name = r["measurement"] if r["metric"] in ("throughput", "time") else f"{r['measurement']} {r['metric']}"
        value = _fmt(r["value"]) if r["status"] == "ok" else r["status"][:60]
        extra = r["details"].get("pct_of_train_step")
        if extra is not None:
            value += f" ({extra:.0f} % of step)"
        lines.append(
            f"| {name} | {MODEL_LABELS.get(r['model'], r['model'])} | {r['variant']} | {value} | {r['unit']} | "
            f"{_fmt(r.get('ratio_to_basic_unet'), 3)} | {_fmt(r.get('pct_of_floor'), 3)} |"
        )
    return "\n".join(lines)


def _floor_lines(report: dict) -> list[str]:
    lines = []
    c = report.get("ceilings")
    if c:
        rates = ", ".join(f"{k} {_fmt(v, 3)} TFLOP/s" for k, v in c["matmul_tflops"].items())
        lines.append(f"ceilings: matmul {rates}; copy {_fmt(c['copy_gb_per_s'], 3)} GB/s")
    for name, s in report.get("models", {}).items():
        lines.append(
            f"{MODEL_LABELS.get(name, name)}: {s['parameters'] / 1e6:.2f} M params; per slice: forward "
            f"{s['flops_forward_per_slice'] / 1e9:.2f} GFLOP, training {s['flops_train_per_slice'] / 1e9:.2f} GFLOP "
            f"({100 * s['flops_train_grouped'] / max(s['flops_train_per_slice'], 1):.0f} % grouped); minimum bytes "
            f"train {s['bytes_min_train_per_slice'] / 1e6:.2f} MB, "
            f"infer {s['bytes_min_infer_per_slice'] / 1e6:.2f} MB; "
            f"eager bytes train {s['bytes_eager_train_per_slice_fp32'] / 1e9:.2f} GB fp32 / "
            f"{s['bytes_eager_train_per_slice_bf16'] / 1e9:.2f} GB bf16"
        )
        if c and c.get("copy_gb_per_s"):
            bw = c["copy_gb_per_s"] * 1e9
            lines[-1] += "; eager-traffic bound " + ", ".join(
                f"{k} {bw / s[f'bytes_eager_train_per_slice_{k}']:.0f} train slices/s" for k in ("fp32", "bf16")
            )
    return lines


def recorded_command(args: Sequence[str]) -> str:
    """The command line as the JSON records it, absolute paths cut to their file names: the JSON files are committed
    under docs/, and a path of the machine that ran them means nothing elsewhere."""

    def strip(arg: str) -> str:
        flag, eq, value = arg.partition("=")
        if eq and flag.startswith("-") and os.path.isabs(value):
            return f"{flag}={Path(value).name}"
        return Path(arg).name if os.path.isabs(arg) else arg

    return " ".join(["python -m scripts.benchmark", *(strip(a) for a in args)])


def run(
    only: str | Sequence[str] | None = None,
    device: str = "auto",
    output: str | None = None,
    features: str | Sequence[int] | None = None,
    quick: bool = False,
    models: str | Sequence[str] | None = None,
    variants: str | Sequence[str] | None = None,
    volume_variants: str | Sequence[str] | None = None,
    inference_variants: str | Sequence[str] | None = None,
    loop_variants: str | Sequence[str] | None = None,
    loop_overrides: dict | str | None = None,
    batch_size: int | None = None,
    size: int | None = None,
    depth: int | None = None,
    sw_batch_size: int | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
    data_dir: str | None = None,
    checkpoint: str | None = None,
    time_budget_s: float | None = None,
    threads: int | None = None,
    seed: int = 0,
    **plan_overrides: Any,
) -> dict[str, Any]:
    """Measure training and inference speed of EAS U-Net and MONAI BasicUNet (same widths) on one device; print a
    markdown table (value, ratio to BasicUNet, % of the floor) and write everything to JSON.

    Args:
        only: comma-separated subset of floor, train_step, volume, inference, train_loop, agreement (default all).
        device: auto, cpu or cuda.
        output: JSON path (written atomically after each stage); default benchmark-<device>.json in the cwd.
        features: the five widths, e.g. 32,64,128,256,512 (default: configs/train.json's; --quick: 8,...,128).
        quick: tiny sizes and repeats (tests, CI).
        models: eas_unet,basic_unet (default both).
        variants: train_step variants, `+`-joined tokens fp32|bf16, cl, compile[=MODE], det, scaler.
        volume_variants: volume variants (same tokens).
        inference_variants: inference variants (fp32|bf16, cl, compile, bench).
        loop_variants: train_loop variants (fp32|bf16, cl, compile, nwN).
        loop_overrides: extra config overrides for train_loop, a dict or JSON text, e.g.
            '{"train#dataset#copy_cache": false}'.
        batch_size: training batch (default configs/train.json's 16).
        size: in-plane size of slices and phantoms (default 384).
        depth: slices per volume (default 160).
        sw_batch_size: slices per inference chunk (default configs/inference.json's).
        repeats: timed repeats of train_step and volume.
        warmup: warm-up repeats of train_step and volume.
        data_dir: phantom cache (default <bundle>/data/benchmark; generation takes seconds per full-size case).
        checkpoint: trained EAS U-Net state_dict (at --features) for the agreement check and the EAS inference
            runs; default: agreement on a model trained here briefly, inference with random weights.
        time_budget_s: start no new measurement after this many seconds (CUDA default 400, then the run ends within
            about a minute); compile variants run after the plain ones, only with `compile_reserve_s` left.
        threads: torch CPU threads (default: the number of cores this process may use).
        seed: seed of models and inputs.
        **plan_overrides: any other field of `Plan` (e.g. --infer_runs 5 --loop_budget_s 60).

    Returns:
        The report dict that is written to JSON.
    """
    dev = _device(device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(int(threads or cores))
    plan = default_plan(dev, as_bool(quick, "quick"))
    for key, value in {
        "features": _as_list(features, int) or None,
        "models": _as_list(models) or None,
        "variants": _as_list(variants) or None,
        "volume_variants": _as_list(volume_variants) or None,
        "inference_variants": _as_list(inference_variants) or None,
        "loop_variants": _as_list(loop_variants) or None,
        "batch_size": batch_size,
        "size": size,
        "depth": depth,
        "sw_batch_size": sw_batch_size,
        "train_repeats": repeats,
        "volume_repeats": repeats,
        "train_warmup": warmup,
        "volume_warmup": warmup,
        "time_budget_s": time_budget_s,
    }.items():
        if value is not None:
            setattr(plan, key, value)
    for key, value in plan_overrides.items():
        if not hasattr(plan, key):
            raise TypeError(f"unknown option --{key}; see `python -m scripts.benchmark -- --help`")
        setattr(plan, key, type(getattr(plan, key))(value) if getattr(plan, key) is not None else value)
    if len(plan.features) != 5:
        raise ValueError(f"features must be five widths, got {plan.features}")
    unknown = [m for m in plan.models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {MODELS}")
    selected = _as_list(only) or list(MEASUREMENTS)
    bad = [m for m in selected if m not in MEASUREMENTS]
    if bad:
        raise ValueError(f"unknown measurements {bad}; choose from {MEASUREMENTS}")
    if isinstance(loop_overrides, str):
        loop_overrides = json.loads(loop_overrides)
    if loop_overrides:  # fire reads `{"a": false}` itself and leaves JSON's true/false/null as strings
        literals = {"true": True, "false": False, "null": None}
        loop_overrides = {k: literals.get(v, v) if isinstance(v, str) else v for k, v in dict(loop_overrides).items()}
    output_path = Path(output) if output else Path.cwd() / f"benchmark-{dev.type}.json"
    data_root = Path(data_dir) if data_dir else BUNDLE_ROOT / "data" / "benchmark"
    start = time.perf_counter()

    def left() -> float:
        return math.inf if plan.time_budget_s is None else plan.time_budget_s - (time.perf_counter() - start)

    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": recorded_command(sys.argv[1:])
        if sys.argv[0].endswith("benchmark.py")
        else "scripts.benchmark.run(...)",
        "environment": _environment(dev),
        "settings": {k: v for k, v in plan.__dict__.items() if k != "extra"}
        | {
            "only": selected,
            "quick": bool(quick),
            "seed": seed,
            "data_dir": _rel(data_root),
            "checkpoint": Path(checkpoint).name if checkpoint else None,
            "loop_overrides": loop_overrides,
        },
        "floor_model": FLOOR_MODEL,
        "ceilings": None,
        "models": {},
        "results": [],
        "targets": [],
        "notes": [],
    }
    rows: list[dict] = report["results"]

    def save() -> None:
        report["elapsed_s"] = time.perf_counter() - start
        atomic_write_text(output_path, json.dumps(report, indent=1, default=str) + "\n")

    def attempt(measurement, metrics, model, variant_name, fn, reserve: float = 0.0) -> None:
        if left() < reserve or left() <= 0:
            rows.extend(_failed_rows(measurement, metrics, model, variant_name, "skipped: time budget"))
            _log(f"{measurement} {model} {variant_name}: skipped (time budget)")
            return
        t0 = time.perf_counter()
        try:
            new = fn()
        except Exception as exc:  # one failing variant (e.g. a compile error) must not end the run
            status = f"failed: {_short_error(exc)}"
            rows.extend(_failed_rows(measurement, metrics, model, variant_name, status))
            _log(f"{measurement} {model} {variant_name}: {status}")
            _free(dev)
            return
        for r in new:
            r["details"]["wall_s"] = time.perf_counter() - t0
            _log(f"{r['measurement']} {r['metric']} {r['model']} {r['variant']}: {_fmt(r['value'])} {r['unit']}")
        rows.extend(new)
        save()

    _log(
        f"device {dev} ({report['environment']['device_name']}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, plan: features {plan.features}, size {plan.size}, depth {plan.depth}, "
        f"batch {plan.batch_size}, sw_batch_size {plan.sw_batch_size}"
    )

    # data first: generation forks worker processes, best done before CUDA is initialised
    needs_data = [m for m in ("inference", "train_loop", "agreement") if m in selected]
    dataset = None
    if needs_data:
        shape = (plan.depth, plan.size, plan.size)
        num_train = plan.loop_cases if "train_loop" in selected or plan.agreement_train_steps > 0 else 0
        try:
            dataset = ensure_phantoms(data_root, shape, num_train, max(plan.test_cases, 1), seed=seed)
        except Exception as exc:
            report["notes"].append(f"phantom generation failed: {_short_error(exc)}")
            _log(report["notes"][-1])

    # floor: count first
    stats: dict[str, dict] = {}
    if "floor" in selected:
        try:
            precisions = {Variant.parse(v).precision for v in plan.variants + plan.volume_variants}
            report["ceilings"] = measure_ceilings(dev, bool(quick), sorted(precisions))
        except Exception as exc:
            report["notes"].append(f"ceilings failed: {_short_error(exc)}")
        for name in plan.models:
            try:
                s = count_model(name, plan.features, plan.size)
                s.update(floor_bytes(s, plan.size, plan.batch_size, plan.sw_batch_size))
                stats[name] = s
            except Exception as exc:
                report["notes"].append(f"counting {name} failed: {_short_error(exc)}")
        report["models"] = stats
        for line in _floor_lines(report):
            _log(line)
        save()

    train_metrics = [("throughput", "slices/s")] + ([("peak_memory", "GiB")] if dev.type == "cuda" else [])
    volume_metrics = [("time", "s/volume")]
    workdir = Path(tempfile.mkdtemp(prefix="knee-benchmark-"))
    scan = None
    if dataset is not None:
        scan = dataset / json.loads((dataset / "datalist.json").read_text())["test"][0]["image"]
    main_model = plan.models[0]

    # Jobs as (phase, measurement, metrics, model, variant, function, reserve). Phase 0: what decides the issue's
    # targets (every train_step variant for every model, the main model elsewhere); phase 1: the baseline's
    # workflow runs and compiled volume, and further variants. Within a phase, plain before compiled.
    jobs: list[tuple] = []

    def job(phase, measurement, metrics, name, v: Variant, fn, reserve=0.0):
        if v.shifted and name not in MODELS_WITH_DEPTHWISE:  # nothing to shift: the unshifted row is the same
            return
        jobs.append(
            (
                phase,
                1 if v.compile else 0,
                len(jobs),
                measurement,
                metrics,
                name,
                v,
                fn,
                max(reserve, plan.compile_reserve_s if v.compile else 0.0),
            )
        )

    for v in map(Variant.parse, plan.variants if "train_step" in selected else []):
        for name in plan.models:
            job(
                0,
                "train_step",
                train_metrics,
                name,
                v,
                lambda n=name, v=v: measure_train_step(
                    n,
                    v,
                    dev,
                    plan.features,
                    plan.batch_size,
                    plan.size,
                    plan.train_warmup,
                    plan.train_repeats,
                    plan.train_budget_s,
                    seed,
                ),
            )
    for v in map(Variant.parse, plan.volume_variants if "volume" in selected else []):
        for name in plan.models:
            phase = 0 if name == main_model or not v.compile or plan.baseline_everywhere else 1
            job(
                phase,
                "volume",
                volume_metrics,
                name,
                v,
                lambda n=name, v=v: measure_volume(
                    n,
                    v,
                    dev,
                    plan.features,
                    plan.depth,
                    plan.size,
                    plan.sw_batch_size,
                    plan.volume_warmup,
                    plan.volume_repeats,
                    plan.volume_budget_s,
                    plan.slice_inferer,
                    seed,
                ),
            )
    if "agreement" in selected and dataset is not None:
        job(
            0,
            "agreement",
            [("max_dice_change", "Dice"), ("voxels_differing", "fraction")],
            main_model,
            Variant(),
            lambda: measure_agreement(
                main_model,
                dev,
                plan.features,
                dataset,
                plan.size,
                plan.sw_batch_size,
                checkpoint,
                0 if checkpoint else plan.agreement_train_steps,
                plan.batch_size,
                seed,
            ),
        )
    for k, v in enumerate(map(Variant.parse, plan.inference_variants if "inference" in selected and scan else [])):
        for name in plan.models:
            phase = 0 if (name == main_model and k == 0) or plan.baseline_everywhere else 1
            if k > 0 and name != main_model and not plan.baseline_everywhere:
                continue  # the baseline: first variant only
            job(
                phase,
                "inference",
                volume_metrics,
                name,
                v,
                lambda n=name, v=v, k=k: measure_inference(
                    n,
                    v,
                    dev,
                    plan.features,
                    scan,
                    workdir,
                    plan.size,
                    plan.sw_batch_size,
                    plan.infer_warmup_runs,
                    plan.infer_runs,
                    plan.infer_volumes if k == 0 and n == main_model else 1,
                    keep_spacing=plan.size != 384,
                    checkpoint=checkpoint if n == "eas_unet" else None,
                ),
                15.0,
            )
    for k, v in enumerate(map(Variant.parse, plan.loop_variants if "train_loop" in selected and dataset else [])):
        for name in plan.models:
            phase = 0 if (name == main_model and k == 0) or plan.baseline_everywhere else 1
            if k > 0 and name != main_model and not plan.baseline_everywhere:
                continue
            job(
                phase,
                "train_loop",
                [("throughput", "slices/s")],
                name,
                v,
                lambda n=name, v=v: measure_train_loop(
                    n,
                    v,
                    dev,
                    plan.features,
                    dataset,
                    workdir,
                    plan.size,
                    plan.batch_size,
                    plan.loop_slices_per_epoch,
                    plan.loop_epochs,
                    plan.loop_budget_s,
                    plan.loop_loader_batches,
                    keep_spacing=plan.size != 384,
                    overrides=loop_overrides,
                ),
                20.0,
            )
    try:
        for _, _, _, measurement, metrics, name, v, fn, reserve in sorted(jobs, key=lambda j: j[:3]):
            label = "bf16 vs fp32" if measurement == "agreement" else v.name
            attempt(measurement, metrics, name, label, fn, reserve)
            if v.compile:
                torch._dynamo.reset()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    _annotate(rows, stats, report["ceilings"], plan, dev)
    report["targets"] = _targets(rows, dev, plan)
    report["table"] = format_table(report)
    save()
    print()
    for line in _floor_lines(report):
        print(line)
    print()
    print(report["table"])
    if report["targets"]:
        print()
        for t in report["targets"]:
            print(f"target {'MET ' if t['met'] else 'MISS'}: {t['target']}: {_fmt(t['value'])} ({t['where']})")
    for note in report["notes"]:
        print(f"note: {note}")
    print(
        f"\n{report['environment']['device_name']}, torch {torch.__version__}, monai {report['environment']['monai']}"
        f"; {report['elapsed_s']:.0f} s; JSON: {output_path.name}"
    )
    return report


if __name__ == "__main__":
    import fire

    fire.Fire(run, serialize=lambda _: None)
