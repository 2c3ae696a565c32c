"""Depthwise convolutions as shifted sums (scripts/networks/shifted.py): the same function, parameters and state
dict as the convolutions they replace, in 2D and 3D, with dilation, under autocast, and through batch-norm folding."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from scripts.networks import EASUNet, ShiftedDepthwiseConv, fold_batch_norms, use_shifted_depthwise
from scripts.networks.shifted import is_depthwise

TINY = (4, 8, 16, 32, 64)


@pytest.mark.parametrize(
    ("conv", "shape"),
    [
        (nn.Conv2d(3, 3, 3, padding=1, groups=3), (2, 3, 9, 7)),
        (nn.Conv2d(4, 4, 3, padding=4, dilation=4, groups=4, bias=False), (1, 4, 12, 10)),
        (nn.Conv2d(2, 2, (3, 5), padding=(1, 2), groups=2), (1, 2, 6, 8)),
        (nn.Conv3d(2, 2, 3, padding=1, groups=2), (1, 2, 5, 6, 4)),
        (nn.Conv1d(1, 1, 5, padding=2, bias=False), (3, 1, 16)),  # ECA's 1D convolution over channels
    ],
)
def test_shifted_form_equals_the_convolution(conv, shape):
    torch.manual_seed(0)
    conv = conv.double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    shifted = ShiftedDepthwiseConv(conv)
    expected, got = conv(x), shifted(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    (g_expected,) = torch.autograd.grad(expected.square().sum(), x)
    (g_got,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(g_got, g_expected, rtol=1e-12, atol=1e-12)
    assert shifted.weight is conv.weight  # shared, not copied


def test_hand_computed_taps():
    """A 3x3 kernel with a single 1 at (row 0, col 2) reads the pixel up and to the right (zero outside)."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 2] = 1.0
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    out = ShiftedDepthwiseConv(conv)(x)
    expected = torch.tensor([[0.0, 0, 0, 0], [1, 2, 3, 0], [5, 6, 7, 0]])
    assert torch.equal(out[0, 0], expected)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4),  # strided
        nn.Conv2d(4, 8, 3, padding=1, groups=4),  # two filters per channel
        nn.Conv2d(4, 4, 3, padding=1),  # dense
        nn.Conv2d(4, 4, 1, groups=4),  # 1x1: nothing to gain
        nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, padding="same", groups=4),
    ],
)
def test_other_convolutions_are_refused(conv):
    assert not is_depthwise(conv)
    with pytest.raises(ValueError, match="not a stride-1, zero-padded depthwise convolution"):
        ShiftedDepthwiseConv(conv)


def test_eas_unet_same_outputs_gradients_and_state_dict():
    torch.manual_seed(0)
    net = EASUNet(features=TINY).train()
    shifted = use_shifted_depthwise(copy.deepcopy(net))
    # 21 depthwise units (10 encoder, 3 atrous, 8 decoder) and ECA's 1D convolution
    assert sum(isinstance(m, ShiftedDepthwiseConv) for m in shifted.modules()) == 22
    assert {k: v.shape for k, v in shifted.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    net, shifted = net.double(), shifted.double()
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    outs, outs_shifted = net(x), shifted(x)
    for a, b in zip(outs, outs_shifted):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    sum(o.sum() for o in outs).backward()
    sum(o.sum() for o in outs_shifted).backward()
    for (name, p), q in zip(net.named_parameters(), shifted.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-9, msg=name)
    # a checkpoint of either form loads into the other
    net.load_state_dict(shifted.state_dict())


def test_autocast_computes_in_the_autocast_dtype():
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=3)
    x = torch.randn(1, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = conv(x), ShiftedDepthwiseConv(conv)(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.05, atol=0.05)


def test_batch_norms_fold_into_the_shifted_form():
    torch.manual_seed(0)
    net = EASUNet(features=TINY).train()
    for _ in range(2):  # running statistics away from their initial values
        net(torch.randn(4, 1, 32, 32))
    net.eval()
    shifted = use_shifted_depthwise(copy.deepcopy(net))
    assert fold_batch_norms(shifted) == fold_batch_norms(copy.deepcopy(net)) == 43
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(shifted(x), net(x), rtol=1e-4, atol=1e-5)
