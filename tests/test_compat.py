"""scripts.compat.Spacingd: MONAI's Spacingd on a MONAI Label-style data dict (NIfTI input plus an `image_path`
string) fails; ours resamples the same, keeps the string, and inverts like MONAI's."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImaged
from monai.transforms import Spacingd as MonaiSpacingd

from scripts.compat import Spacingd


@pytest.fixture
def monai_label_data(tmp_path) -> dict:
    """What MONAI Label hands to the bundle's preprocessing: the loaded NIfTI plus the request's `image_path`."""
    path = tmp_path / "scan.nii.gz"
    volume = np.random.default_rng(0).random((8, 20, 20), dtype=np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([2, 1, 1, 1])), path)
    data = LoadImaged(keys="image", image_only=True, ensure_channel_first=True)({"image": str(path)})
    return {**data, "image_path": str(path)}


def test_monai_spacingd_fails_on_monai_label_data(monai_label_data):
    """Documents the upstream behaviour the subclass exists for (monai 1.6.1); if this starts passing, drop it."""
    with pytest.raises(AttributeError, match="'str' object has no attribute 'update'"):
        MonaiSpacingd(keys="image", pixdim=[-1, 0.5, 0.5])(dict(monai_label_data))


def test_spacingd_resamples_and_keeps_other_entries(monai_label_data):
    out = Spacingd(keys="image", pixdim=[-1, 0.5, 0.5])(dict(monai_label_data))
    expected = MonaiSpacingd(keys="image", pixdim=[-1, 0.5, 0.5])({"image": monai_label_data["image"]})["image"]
    assert out["image"].shape == expected.shape == (1, 8, 39, 39)
    assert torch.allclose(out["image"], expected)
    assert out["image_path"] == monai_label_data["image_path"]


def test_spacingd_inverse_restores_the_grid(monai_label_data):
    transform = Spacingd(keys="image", pixdim=[-1, 0.5, 0.5])
    restored = transform.inverse(transform(dict(monai_label_data)))
    assert restored["image"].shape == monai_label_data["image"].shape
    assert np.allclose(restored["image"].affine, monai_label_data["image"].affine)
