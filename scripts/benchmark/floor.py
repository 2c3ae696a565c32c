"""The floor: measured ceilings of the device, and FLOPs and minimum bytes of one slice per model."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

from scripts.benchmark.common import _free, build_model, make_loss, time_calls


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
