"""scripts.losses.DeepSupervisionLoss gives MONAI's value and gradients."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DeepSupervisionLoss as MonaiDeepSupervisionLoss
from monai.losses import DiceCELoss

from scripts.losses import DeepSupervisionLoss


def _losses(weight_mode: str = "exp"):
    inner = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    return DeepSupervisionLoss(inner, weight_mode=weight_mode), MonaiDeepSupervisionLoss(inner, weight_mode=weight_mode)


@pytest.mark.parametrize("weight_mode", ["exp", "same", "two"])
def test_list_of_outputs_gives_monai_value_and_gradients(weight_mode):
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 32, 32)).float()  # float: MONAI resizes it to each output (nearest)
    outputs = [torch.randn(2, 3, 32 // 2**i, 32 // 2**i, requires_grad=True) for i in range(4)]
    ours, theirs = _losses(weight_mode)
    a = ours(outputs, target)
    grads_a = torch.autograd.grad(a, outputs)
    b = theirs(outputs, target)
    grads_b = torch.autograd.grad(b, outputs)
    assert a.shape == b.shape == ()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-8)


def test_single_output_and_bad_input():
    torch.manual_seed(1)
    target = torch.randint(0, 3, (2, 1, 16, 16))
    pred = torch.randn(2, 3, 16, 16)
    ours, theirs = _losses()
    torch.testing.assert_close(ours(pred, target), theirs(pred, target))
    with pytest.raises(ValueError, match="empty list"):
        ours([], target)
    with pytest.raises(ValueError, match="None"):
        ours(None, target)
