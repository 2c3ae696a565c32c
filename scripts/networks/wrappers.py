"""Wrappers that give MONAI baselines the bundle's output contract: one tensor in eval mode."""

from __future__ import annotations

from typing import Union

import torch
import torch.nn as nn

__all__ = ["FirstOutput"]


class FirstOutput(nn.Module):
    """Return only the first output of a network that returns a list (e.g. MONAI's BasicUNetPlusPlus, which returns
    a list even with `deep_supervision=False`) in eval mode; pass the list through in train mode for
    `DeepSupervisionLoss`.

    Args:
        network: the wrapped network.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:  # noqa: UP007 (TorchScript)
        out = self.network(x)
        if self.training or isinstance(out, torch.Tensor):
            return out
        return out[0]
