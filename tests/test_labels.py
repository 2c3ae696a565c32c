"""Label presets: mapping on hand-made arrays, and the error for codes a preset does not know."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.labels import PRESETS, RemapLabelsd, check_label_values, get_preset


@pytest.mark.parametrize(
    "preset,values,expected",
    [
        ("oai-zib", [0, 1, 2, 3, 4], [0, 0, 1, 0, 2]),
        ("oaizib-cm", [0, 1, 2, 3, 4, 5], [0, 0, 1, 0, 2, 2]),
        ("oai-labels", list(range(10)), [0, 0, 1, 0, 2, 0, 0, 0, 0, 0]),
        ("cartilage", [0, 1, 2], [0, 1, 2]),
    ],
)
def test_preset_mapping(preset, values, expected):
    label = MetaTensor(torch.tensor(values, dtype=torch.int16).reshape(1, 1, 1, -1))
    out = RemapLabelsd("label", preset)({"label": label})["label"]
    assert out.dtype == torch.uint8
    assert out.flatten().tolist() == expected
    assert isinstance(out, MetaTensor)


@pytest.mark.parametrize("preset,bad", [("oai-zib", 5), ("oaizib-cm", 6), ("oai-labels", 10), ("cartilage", 3)])
def test_unknown_code_names_file_and_values(preset, bad):
    label = MetaTensor(torch.tensor([0, 1, bad, bad]).reshape(1, 1, 2, 2), meta={"filename_or_obj": "knee_7.nii.gz"})
    with pytest.raises(ValueError) as err:
        RemapLabelsd("label", preset)({"label": label})
    message = str(err.value)
    assert "knee_7.nii.gz" in message and f"[{bad}]" in message and preset in message


def test_non_integer_values_are_rejected():
    with pytest.raises(ValueError, match="non-integer"):
        check_label_values(np.array([0.0, 0.5, 1.0]), get_preset("oai-zib"), "img.nii.gz")
    with pytest.raises(ValueError, match="NaN"):
        check_label_values(np.array([0.0, np.nan]), get_preset("oai-zib"), "img.nii.gz")


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown label_preset 'zib'.*oai-zib"):
        get_preset("zib")


def test_every_preset_maps_only_to_training_classes():
    for preset in PRESETS.values():
        assert set(preset.to_class.values()) <= {1, 2}
        assert set(preset.to_class) <= preset.known_codes
