"""Depthwise convolutions written as sums of shifted, channel-scaled copies of the input, for `torch.compile`.

Why: a depthwise kxk convolution does k*k multiply-adds per output value, too few for a convolution library to be
more than memory-bound, and eager PyTorch then writes its output, reads it for the batch norm's statistics, reads
it again to normalise, and again for the activation. Written as k*k shifted products, the convolution is plain
elementwise arithmetic that inductor can fuse with the batch norm and activation that follow it (and their
backward), so the feature map makes fewer trips through memory. In eager mode the shifted form is slower (k*k
separate passes): use it only under `torch.compile`. Parameters, state dict and results are those of the
convolution it replaces (up to float rounding), so checkpoints move freely between the two forms.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ShiftedDepthwiseConv", "is_depthwise", "use_shifted_depthwise"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_depthwise(conv: nn.Module) -> bool:
    """A stride-1, zero-padded convolution with one filter per input channel and a kernel larger than 1."""
    return (
        isinstance(conv, _CONVS)
        and not isinstance(conv, ShiftedDepthwiseConv)
        and conv.groups == conv.in_channels == conv.out_channels
        and all(s == 1 for s in conv.stride)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and any(k > 1 for k in conv.kernel_size)
    )


class ShiftedDepthwiseConv(nn.Module):
    """The depthwise convolution `conv`, computed as a sum over its kernel taps of the padded input shifted by the
    tap's offset and scaled per channel. Shares `conv`'s parameters (same names: `weight`, `bias`)."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        if not is_depthwise(conv):
            raise ValueError(f"not a stride-1, zero-padded depthwise convolution: {conv}")
        self.weight = conv.weight  # (C, 1, *kernel)
        self.bias = conv.bias
        self.kernel_size = tuple(conv.kernel_size)
        self.dilation = tuple(conv.dilation)
        self.padding = tuple(conv.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):  # follow autocast as the convolution would: compute in its dtype
            dtype = torch.get_autocast_dtype(device_type)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        spatial = x.shape[2:]
        pad: list[int] = []
        for p in reversed(self.padding):  # F.pad takes the last dimension first
            pad += [p, p]
        padded = F.pad(x, pad)
        channel_shape = (1, -1) + (1,) * len(spatial)
        out = None
        for tap in itertools.product(*(range(k) for k in self.kernel_size)):
            window = padded[
                (slice(None), slice(None))
                + tuple(slice(t * d, t * d + n) for t, d, n in zip(tap, self.dilation, spatial))
            ]
            term = window * weight[(slice(None), 0) + tap].reshape(channel_shape)
            out = term if out is None else out + term
        if bias is not None:
            out = out + bias.reshape(channel_shape)
        return out

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, kernel_size={self.kernel_size}, dilation={self.dilation}"


def use_shifted_depthwise(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Replace, in place, every depthwise convolution of `model` (see `is_depthwise`) by its shifted form, sharing
    the parameters, and return `model` (so a config can wrap `network_def` in it; `enabled`, the configs'
    `shifted_depthwise` key, False returns it untouched). The state dict keeps its keys and shapes."""
    if not enabled:
        return model
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if is_depthwise(child)
    ]
    for parent, name, child in targets:
        setattr(parent, name, ShiftedDepthwiseConv(child))
    return model
