"""Batch-norm folding for inference: same logits, no batch norm left, refuses what it cannot fold."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine
from monai.networks.blocks import Convolution
from monai.networks.nets import BasicUNet

from scripts.handlers import FoldBatchNorms
from scripts.networks import EASUNet, fold_batch_norms


def _randomise_norms(model: torch.nn.Module, seed: int = 0) -> int:
    """Non-trivial running statistics and affine parameters, as a trained model has."""
    g = torch.Generator().manual_seed(seed)
    count = 0
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
            count += 1
    return count


def _norms(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("channels_last", [False, True])
def test_eas_unet_folds_every_norm_with_the_same_logits(channels_last):
    torch.manual_seed(0)
    model = EASUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(8, 16, 16, 32, 32), eas_levels=(4,))
    total = _randomise_norms(model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(memory_format=fmt)
    x = torch.randn(2, 1, 64, 48).contiguous(memory_format=fmt)
    with torch.no_grad():
        expected = model(x)
        assert fold_batch_norms(model) == total and total > 20
        assert _norms(model) == 0
        folded = model(x)
    assert torch.allclose(folded, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(folded.argmax(1), expected.argmax(1))


def test_monai_basic_unet_folds_too():
    torch.manual_seed(0)
    model = BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 8, 8, 16, 16, 4), norm="batch")
    total = _randomise_norms(model, seed=1)
    model.eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert fold_batch_norms(model) == total
        assert torch.allclose(model(x), expected, atol=1e-4, rtol=1e-4)


def test_sequential_pairs_fold_and_other_orders_are_left_alone():
    seq = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    act_first = Convolution(2, 4, 4, act="relu", norm="batch", adn_ordering="AN")
    model = torch.nn.Sequential(seq, act_first)
    _randomise_norms(model)
    model.eval()
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        expected = model(x)
        assert fold_batch_norms(model) == 1  # the conv -> BN pair; ReLU -> BN cannot be folded into the conv
        assert isinstance(seq[1], torch.nn.Identity) and isinstance(act_first.adn.N, torch.nn.BatchNorm2d)
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="needs an eval-mode model"):
        fold_batch_norms(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)))


@pytest.mark.parametrize("enabled", [True, False])
def test_handler_folds_when_the_engine_starts(enabled, caplog):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    engine = Engine(lambda e, b: None)
    FoldBatchNorms(net, enabled=enabled).attach(engine)
    with caplog.at_level(logging.INFO):
        engine.run([0], max_epochs=1)
    assert _norms(net) == (0 if enabled else 1)
    assert ("folded 1 batch norms" in caplog.text) == enabled
