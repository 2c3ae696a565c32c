"""Fold eval-mode batch norms into the convolutions before them, for inference.

Why: in eval mode a batch norm is a fixed per-channel affine map, so conv -> BN equals one convolution with rescaled
weights and a bias. EAS U-Net has 43 batch norms per slice (two per depthwise-separable unit, as the paper
specifies), each a full pass over a feature map; folding them removes those passes and gives the same logits up to
float rounding (on a 2-core CPU, 8 full-size slices took 3.4-4.2 s instead of 5.7-7.3 s). Weights on disk keep the
batch norms: folding happens in memory after the checkpoint is loaded (`scripts.handlers.FoldBatchNorms`).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

from .shifted import ShiftedDepthwiseConv

__all__ = ["fold_batch_norms"]

_FOLDABLE_CONVS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, ShiftedDepthwiseConv)


def _first_child(module: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
    return next(iter(module.named_children()), None)


def _fused(conv: torch.nn.Module, norm: _BatchNorm) -> torch.nn.Module:
    """conv with norm folded in, its weight kept in the memory format it had (channels_last stays channels_last)."""
    if isinstance(conv, ShiftedDepthwiseConv):  # not an nn.Conv: fold into its (shared) parameters, then unshare
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
        )
        conv.weight, conv.bias = weight, bias
        return conv
    fused = fuse_conv_bn_eval(conv, norm)
    if conv.weight.dim() == 4 and conv.weight.is_contiguous(memory_format=torch.channels_last):
        fused.weight.data = fused.weight.data.contiguous(memory_format=torch.channels_last)
    return fused


def fold_batch_norms(model: torch.nn.Module) -> int:
    """Fold, in place, every batch norm that directly follows a (non-transposed) convolution: MONAI `Convolution`
    blocks whose ADN starts with its norm, and `Conv` -> `BatchNorm` pairs inside `nn.Sequential`. Each folded norm
    becomes `nn.Identity`. Returns the number folded. The model must be in eval mode: a model in training mode
    normalises with batch statistics, which no fixed convolution can reproduce."""
    if model.training:
        raise ValueError(
            "fold_batch_norms needs an eval-mode model (call model.eval() first): in training mode batch "
            "norm uses the batch's statistics, which cannot be folded into a convolution"
        )
    folded = 0
    for module in model.modules():
        if isinstance(module, Convolution) and isinstance(module.conv, _FOLDABLE_CONVS):
            adn = getattr(module, "adn", None)
            first = _first_child(adn) if adn is not None else None
            if first is not None and first[0] == "N" and isinstance(first[1], _BatchNorm):
                module.conv = _fused(module.conv, first[1])
                adn.N = torch.nn.Identity()
                folded += 1
        elif isinstance(module, torch.nn.Sequential):
            names = [name for name, _ in module.named_children()]
            for prev, name in zip(names, names[1:]):
                conv, norm = getattr(module, prev), getattr(module, name)
                if isinstance(conv, _FOLDABLE_CONVS) and isinstance(norm, _BatchNorm):
                    setattr(module, prev, _fused(conv, norm))
                    setattr(module, name, torch.nn.Identity())
                    folded += 1
    return folded
