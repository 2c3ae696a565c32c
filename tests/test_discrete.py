"""scripts.discrete: MONAI's AsDiscrete(d) results, with the argmax through torch.max."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import AsDiscrete as MonaiAsDiscrete
from monai.transforms import AsDiscreted as MonaiAsDiscreted

from scripts.discrete import AsDiscrete, AsDiscreted, channel_argmax


def test_channel_argmax_matches_torch_argmax_including_ties():
    ties = torch.tensor([[1.0, 0.0, 2.0, 5.0], [1.0, 3.0, 2.0, 5.0], [0.0, 3.0, 2.0, 5.0]])  # (3 classes, 4 voxels)
    assert channel_argmax(ties, keepdim=False).tolist() == [0, 1, 0, 0]  # the first maximum, as torch.argmax
    many = torch.randint(0, 3, (3, 5, 7, 9)).float()  # mostly ties
    assert torch.equal(channel_argmax(many), torch.argmax(many, 0, keepdim=True))
    strided = torch.rand(3, 6, 8, 10).permute(0, 3, 2, 1)  # Invertd hands on such views
    assert torch.equal(channel_argmax(strided), torch.argmax(strided, 0, keepdim=True))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"argmax": True},
        {"argmax": True, "to_onehot": 3},
        {"argmax": False, "to_onehot": 3},
        {"argmax": False, "threshold": 0.5},
    ],
)
def test_same_output_dtype_and_metadata_as_monai(kwargs):
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(3, 4, 6, 8), 0)
    data = MetaTensor(probs, affine=torch.diag(torch.tensor([0.7, 0.36, 0.36, 1.0])), meta={"filename_or_obj": "k.nii"})
    if not kwargs["argmax"]:
        data = MetaTensor(torch.argmax(probs, 0, keepdim=True).float(), affine=data.affine, meta=data.meta)
    ours, theirs = AsDiscrete(**kwargs)(data), MonaiAsDiscrete(**kwargs)(data)
    assert isinstance(ours, MetaTensor) and ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert torch.equal(ours.as_tensor(), theirs.as_tensor())
    assert torch.equal(ours.affine, theirs.affine) and ours.meta["filename_or_obj"] == "k.nii"


def test_numpy_input_gives_monais_type_and_values():
    probs = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    ours, theirs = AsDiscrete(argmax=True)(probs), MonaiAsDiscrete(argmax=True)(probs)
    assert type(ours) is type(theirs) and ours.dtype == theirs.dtype
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_dictionary_version_per_key_settings_as_monai():
    """evaluate.json's use: argmax + one-hot for the prediction, one-hot only for the label."""
    torch.manual_seed(1)
    data = {"pred": torch.randn(3, 5, 6, 7), "label": torch.randint(0, 3, (1, 5, 6, 7)).float()}
    args = {"keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 3}
    ours, theirs = AsDiscreted(**args)(dict(data)), MonaiAsDiscreted(**args)(dict(data))
    for key in ("pred", "label"):
        assert torch.equal(torch.as_tensor(ours[key]), torch.as_tensor(theirs[key]))


@pytest.mark.parametrize(
    ("files", "key"),
    [
        (["configs/inference.json"], "postprocessing"),
        (["configs/train.json"], "validate#postprocessing"),
        (["configs/train.json", "configs/evaluate.json"], "validate#postprocessing"),
    ],
)
def test_configs_use_the_fast_argmax(files, key):
    parser = ConfigParser()
    parser.read_config(files)
    transforms = parser.get_parsed_content(key).transforms
    discrete = [t for t in transforms if isinstance(t, MonaiAsDiscreted)]
    assert discrete and all(isinstance(t, AsDiscreted) for t in discrete)
    assert all(isinstance(t.converter, AsDiscrete) for t in discrete)
