"""MONAI's deep-supervision loss without a host-to-device copy at every training step."""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss as _MonaiDeepSupervisionLoss

__all__ = ["DeepSupervisionLoss"]


class DeepSupervisionLoss(_MonaiDeepSupervisionLoss):
    """`monai.losses.DeepSupervisionLoss` (same arguments, same value) that starts its weighted sum from the first
    term instead of `torch.tensor(0, device=target.device)`.

    Why: creating that zero on a CUDA device copies it from pageable host memory, and such a copy makes the CPU wait
    until the GPU has finished everything queued so far: the forward pass, at every training step. The profile of
    the training loop on an H100 showed it as one of two host syncs per iteration (docs/benchmarks.md).
    """

    def forward(self, input: None | torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, (list, tuple)):
            return super().forward(input, target)
        if not input:
            raise ValueError("input is an empty list of deep-supervision outputs")
        weights = self.get_weights(levels=len(input))
        loss = weights[0] * self.get_loss(input[0].float(), target)
        for level in range(1, len(input)):
            loss = loss + weights[level] * self.get_loss(input[level].float(), target)
        return loss
