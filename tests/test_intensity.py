"""The percentile scaling gives MONAI's numbers, also on scan-sized volumes (the sample-bracket path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import ScaleIntensityRangePercentilesd as MonaiPercentilesd

from scripts.intensity import ScaleIntensityRangePercentilesd, _order_statistics, percentiles

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "values",
    [
        RNG.random(1000).astype(np.float32),
        RNG.integers(0, 5, 999).astype(np.int16),  # many ties
        np.array([3.0]),
        np.array([1.0, 2.0]),
        RNG.normal(size=(2, 7, 9)),
        RNG.integers(0, 4000, (1, 40, 50, 30)).astype(np.uint16),
    ],
)
@pytest.mark.parametrize("qs", [(0.5, 99.5), (0, 100), (50, 50), (1, 99), (99.5, 0.5)])
def test_percentiles_equal_numpy(values, qs):
    assert percentiles(values, qs) == pytest.approx(list(np.percentile(values, qs)), abs=0, rel=1e-6)
    assert percentiles(torch.as_tensor(values.astype(np.float64)), qs) == pytest.approx(
        list(np.percentile(values.astype(np.float64), qs)), abs=0, rel=1e-12
    )


@pytest.mark.parametrize(
    "values",
    [
        RNG.normal(size=(20, 130, 120)).astype(np.float32),  # 312,000 voxels: above the partition-only size
        np.asfortranarray(RNG.integers(0, 900, (30, 120, 100)).astype(np.float32)),  # ties, Fortran order (NIfTI)
        np.concatenate([np.zeros(200_000), RNG.exponential(size=150_000)]),  # a background of zeros
        np.full(300_000, 7.0, np.float32),  # constant
    ],
)
def test_percentiles_of_scan_sized_volumes_equal_numpy(values):
    qs = (0.5, 99.5, 0, 100, 37.3)
    assert percentiles(values, qs) == pytest.approx(list(np.percentile(values, qs)), abs=1e-9, rel=1e-12)


def test_order_statistics_fall_back_when_the_sample_misses(monkeypatch):
    # a sample that saw one value only brackets nothing: the ranks fall outside and the full partition answers
    flat = RNG.normal(size=400_000)
    ks = [0, 1, 1999, 2000, 399_999]
    want = {k: float(v) for k, v in zip(ks, np.sort(flat)[ks])}
    assert _order_statistics(flat, ks) == want

    class OneIndex:
        def integers(self, low, high, size):
            return np.full(size, 7)

    monkeypatch.setattr(np.random, "default_rng", lambda seed: OneIndex())
    partitions = []
    real_partition = np.partition
    monkeypatch.setattr(np, "partition", lambda a, k: partitions.append(a.size) or real_partition(a, k))
    assert _order_statistics(flat, ks) == want
    assert flat.size in partitions  # the exact fallback ran


def test_percentiles_hand_computed():
    # 0..10: the 25th percentile lies at position 2.5 -> 2.5; the 95th at 9.5 -> 9.5
    assert percentiles(np.arange(11.0), (25, 95, 0, 100)) == [2.5, 9.5, 0.0, 10.0]


def test_percentiles_bad_input():
    with pytest.raises(ValueError, match="empty image"):
        percentiles(np.array([]), (1, 99))
    with pytest.raises(ValueError, match=r"must be in \[0, 100\]"):
        percentiles(np.arange(5.0), (-1, 99))
    assert all(np.isnan(percentiles(np.array([1.0, np.nan, 3.0]), (1, 99))))  # numpy's answer for NaN


@pytest.mark.parametrize(
    "extra",
    [{}, {"channel_wise": True}, {"relative": True}, {"clip": False}, {"b_min": None, "b_max": None, "clip": False}],
)
def test_scaling_equals_monai(extra):
    image = MetaTensor(torch.rand(2, 12, 16, 16) * 900 - 100, affine=torch.diag(torch.tensor([0.7, 0.36, 0.36, 1])))
    kwargs = {**dict(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True), **extra}
    ours = ScaleIntensityRangePercentilesd(**kwargs)({"image": image.clone()})["image"]
    theirs = MonaiPercentilesd(**kwargs)({"image": image.clone()})["image"]
    assert isinstance(ours, MetaTensor) and torch.equal(ours.affine, image.affine)
    assert ours.dtype == theirs.dtype == torch.float32
    # the same up to float32 rounding: MONAI takes a_max - a_min in float32, we in float64
    assert torch.allclose(ours.as_tensor(), theirs.as_tensor(), rtol=1e-6, atol=1e-6)


def test_integer_scan_is_scaled_in_float_and_input_kept():
    image = torch.arange(0, 1000, dtype=torch.int16).reshape(1, 10, 10, 10)
    out = ScaleIntensityRangePercentilesd(keys="image", lower=0, upper=100, b_min=0.0, b_max=1.0)({"image": image})
    assert out["image"].dtype == torch.float32
    assert float(out["image"].min()) == 0.0 and float(out["image"].max()) == 1.0
    assert float(out["image"].flatten()[1]) == pytest.approx(1 / 999)
    assert image.dtype == torch.int16 and int(image.max()) == 999  # the input is not modified


def test_constant_image_warns_and_shifts():
    with pytest.warns(UserWarning, match="constant"):
        out = ScaleIntensityRangePercentilesd(keys="image", lower=1, upper=99, b_min=0.0, b_max=1.0)(
            {"image": torch.full((1, 4, 4, 4), 7.0)}
        )
    assert torch.equal(torch.as_tensor(out["image"]), torch.zeros(1, 4, 4, 4))
