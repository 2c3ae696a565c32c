"""Wrappers that give MONAI baselines the bundle's output contract: one tensor in eval mode, and in train mode a
list whose first element is the final prediction (what `DeepSupervisionLoss` weighs most)."""

from __future__ import annotations

from typing import Union

import torch
import torch.nn as nn

__all__ = ["FirstOutput"]


class FirstOutput(nn.Module):
    """Return only the final output of a network that returns a list in eval mode; pass the list through in train
    mode for `DeepSupervisionLoss`, which weighs its first element most.

    MONAI's `BasicUNetPlusPlus` returns `[X^{0,1}, X^{0,2}, X^{0,3}, X^{0,4}]` with `deep_supervision=True`: the
    shallowest output first. Wrap it with `deepest_last=True` so the list is reversed and the full-depth `X^{0,4}` is
    both the eval output and the output the loss weighs most.

    Args:
        network: the wrapped network.
        deepest_last: the network lists its outputs from shallowest to deepest (reverse them).
    """

    def __init__(self, network: nn.Module, deepest_last: bool = False):
        super().__init__()
        self.network = network
        self.deepest_last = deepest_last

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:  # noqa: UP007 (TorchScript)
        out = self.network(x)
        if isinstance(out, torch.Tensor):
            return out
        if self.deepest_last:
            out = [out[len(out) - 1 - i] for i in range(len(out))]
        if self.training:
            return out
        return out[0]
