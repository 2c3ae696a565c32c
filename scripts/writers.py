"""Writing label maps safely: atomic (temporary file, then rename), never over an input, never silently over an
existing output. MONAI's SaveImaged writes in place and overwrites, which a batch run over hundreds of scans cannot
afford."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import NibabelWriter
from monai.transforms import MapTransform
from monai.utils import get_equivalent_dtype

from scripts.datalist import case_name
from scripts.io_utils import atomic_path, check_writable_target
from scripts.labels import source_name

__all__ = ["output_path", "SaveLabelMapd"]


def output_path(source: str, output_dir: str | Path, postfix: str) -> Path:
    """`<output_dir>/<case>_<postfix>.nii.gz` for a scan file or DICOM series folder `source`."""
    return Path(output_dir) / f"{case_name(source)}_{postfix}.nii.gz"


class SaveLabelMapd(MapTransform):
    """Write each channel-first label map as NIfTI in its own geometry (the MetaTensor's affine), atomically.

    Args:
        keys: keys of the label maps (after Invertd, so in the input scan's geometry).
        output_dir: destination folder (created if missing).
        postfix: appended to the scan's case name.
        dtype: on-disk data type (uint8 holds the classes 0/1/2).
        overwrite: replace an existing output; otherwise an existing file is an error.
        path_key: the written path is stored in the dict under `<key>_<path_key>`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        postfix: str = "seg",
        dtype: np.dtype | type = np.uint8,
        overwrite: bool = False,
        path_key: str = "path",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.postfix, self.dtype = Path(output_dir), postfix, dtype
        self.overwrite, self.path_key = overwrite, path_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            source = source_name(label)
            target = output_path(source, self.output_dir, self.postfix)
            if Path(source).resolve() == target.resolve():
                raise FileExistsError(f"refusing to write {target} over its own input scan")
            check_writable_target(target, self.overwrite)
            writer = NibabelWriter(output_dtype=self.dtype)
            # cast where the label map is (the GPU after inference): a quarter of float32's bytes to copy back
            array = label.detach().to(get_equivalent_dtype(self.dtype, torch.Tensor)).cpu()
            writer.set_data_array(array, channel_dim=0, squeeze_end_dims=True)
            writer.set_metadata({"affine": label.affine, "original_affine": label.affine}, resample=False)
            with atomic_path(target, self.overwrite) as tmp:
                writer.write(str(tmp), verbose=False)
            d[f"{key}_{self.path_key}"] = str(target)
        return d
