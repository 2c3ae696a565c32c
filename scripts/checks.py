"""Input checks run inside the transform chains, so a bad scan fails with a message that names the file and the
problem instead of an index error deep inside a network or a resampler."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from scripts.labels import source_name

__all__ = ["ScanError", "check_scan", "CheckScand", "require_checkpoint"]


class ScanError(ValueError):
    """A scan that cannot be segmented as it is (wrong dimensionality, NaN intensities, constant image)."""


def check_scan(image: torch.Tensor, source: str, min_size: int = 8) -> None:
    """Raise ScanError unless `image` is a channel-first single-channel 3D volume with finite, varying values.

    Args:
        image: `(1, D, H, W)` tensor as produced by LoadImaged(ensure_channel_first=True).
        source: file name for the message.
        min_size: smallest accepted extent per axis (a 2D image saved as 3D has an axis of size 1).
    """
    shape = tuple(image.shape)
    if image.dim() != 4 or shape[0] != 1:
        spatial = shape[1:] if image.dim() >= 2 else shape
        raise ScanError(
            f"{source}: a single 3D volume is required, got data of shape {spatial} "
            f"({image.dim() - 1}D{' with ' + str(shape[0]) + ' channels/time points' if shape[0] != 1 else ''})"
        )
    if min(shape[1:]) < min_size:
        raise ScanError(f"{source}: volume of shape {shape[1:]} has an axis under {min_size} voxels (a 2D image?)")
    if not bool(torch.isfinite(image).all()):
        raise ScanError(f"{source}: contains NaN or infinite intensities")
    if bool((image.amax() - image.amin()) <= 0):
        raise ScanError(f"{source}: every voxel has the same value ({float(image.flatten()[0])}); empty scan?")


class CheckScand(MapTransform):
    """Dictionary wrapper of `check_scan`, placed right after loading."""

    def __init__(self, keys: KeysCollection, min_size: int = 8, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.min_size = min_size

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            check_scan(d[key], source_name(d[key]), self.min_size)
        return d


def require_checkpoint(path: str) -> str:
    """Exit with one clear line when the model file that evaluation or inference needs is missing."""
    if not Path(path).is_file():
        raise SystemExit(
            f"error: no model checkpoint at {path}. Train one first (README: 'Train on your data'), or point "
            "--ckpt_dir (or --model_path) at the folder that holds model.pt."
        )
    return path
