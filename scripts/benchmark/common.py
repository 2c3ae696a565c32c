"""Shared parts of the benchmark: constants, small helpers, variants, the models and the result rows."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# the bundle root: configs/, and the default phantom cache data/benchmark/
BUNDLE_ROOT = Path(__file__).resolve().parents[2]

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
        onnxruntime: the eval-mode network exported to ONNX and run by onnxruntime (`ort`; CPU, volume and
            inference only: the configs' `cpu_runtime` "onnxruntime"; without the token the benchmark sets "torch").
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
    onnxruntime: bool = False

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
            elif token in ("ort", "onnxruntime"):
                kwargs["onnxruntime"] = True
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
        if self.onnxruntime:
            tokens.append("ort")
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
