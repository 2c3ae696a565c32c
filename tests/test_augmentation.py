"""The batched device-side augmentation does what MONAI's per-sample transforms of the same names do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import AdjustContrast, Affine, GaussianSmooth, RandBiasField

from scripts.augmentation import AugmentedBatch, BatchAugmentation

OFF = dict(
    affine_prob=0.0,
    bias_prob=0.0,
    contrast_prob=0.0,
    scale_intensity_prob=0.0,
    shift_intensity_prob=0.0,
    smooth_prob=0.0,
    noise_prob=0.0,
)


def _smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.as_tensor(GaussianSmooth(2.0)(torch.rand(1, h, w, generator=g)))


def _labels_of(image: torch.Tensor) -> torch.Tensor:
    m = image.mean()
    return (image > m).to(torch.uint8) + (image > m + 0.02).to(torch.uint8)


def _matrix(angle: float, scale: tuple[float, float], shift: tuple[float, float]) -> torch.Tensor:
    c, s = np.cos(angle), np.sin(angle)
    rotation = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    linear = rotation * torch.tensor(scale, dtype=torch.float64)[None, :]
    offset = rotation @ torch.tensor(shift, dtype=torch.float64)
    return torch.cat([linear, offset[:, None]], dim=1)[None]


@pytest.mark.parametrize(
    "h,w,angle,scale,shift", [(96, 80, 0.2, (1.1, 0.9), (5.0, -7.0)), (64, 64, -0.26, (0.85, 1.15), (-20.0, 3.5))]
)
def test_warp_matches_monai_affine(h, w, angle, scale, shift):
    image = _smooth_image(h, w)
    label = _labels_of(image)
    kwargs = dict(
        rotate_params=angle, scale_params=scale, translate_params=shift, padding_mode="zeros", image_only=True
    )
    expected = torch.as_tensor(Affine(mode="bilinear", **kwargs)(image))
    expected_label = torch.as_tensor(Affine(mode="nearest", **kwargs)(label.float()))
    warped, warped_label = BatchAugmentation.warp(image[None], label[None], _matrix(angle, scale, shift))
    assert torch.allclose(warped[0], expected, atol=1e-4)
    assert warped_label.dtype == torch.uint8
    assert torch.equal(warped_label[0].float(), expected_label)


def test_bias_field_matches_monai():
    image = _smooth_image(48, 40)
    transform = RandBiasField(prob=1.0, coeff_range=(0.0, 0.3), degree=3)
    transform.set_random_state(3)
    expected = torch.as_tensor(transform(image))
    basis = BatchAugmentation()._legendre_basis(48, 40, torch.device("cpu"))
    assert basis.shape == (10, 48, 40)
    field = torch.einsum("k,khw->hw", torch.tensor(transform._coeff, dtype=torch.float32), basis).exp()
    assert torch.allclose(image[0] * field, expected[0], atol=1e-5)


def test_smoothing_matches_monai_per_sample():
    images = torch.stack([_smooth_image(40, 36, seed) for seed in range(2)])
    sigmas = torch.tensor([[0.6, 0.9], [0.25, 1.0]], dtype=torch.float64)
    ours = BatchAugmentation()._smooth(images, sigmas)
    for i in range(2):
        expected = torch.as_tensor(GaussianSmooth(sigma=tuple(sigmas[i].tolist()))(images[i]))
        assert torch.allclose(ours[i], expected, atol=1e-6)


def test_contrast_matches_monai():
    image = _smooth_image(32, 32)[None] * 3.0 - 0.5
    aug = BatchAugmentation(**{**OFF, "contrast_prob": 1.0, "gamma": (0.5, 0.5)})
    out, _ = aug(image.clone())
    expected = torch.as_tensor(AdjustContrast(0.5)(image[0]))
    assert torch.allclose(out[0], expected, atol=1e-5)


def test_all_probabilities_zero_is_identity():
    image = torch.rand(3, 1, 32, 32)
    label = _labels_of(image)
    out, out_label = BatchAugmentation(**OFF)(image.clone(), label.clone())
    assert torch.equal(out, image) and torch.equal(out_label, label)


def test_default_augmentation_keeps_labels_and_types():
    image = torch.stack([_smooth_image(64, 48, s) for s in range(8)])
    label = _labels_of(image)
    out, out_label = BatchAugmentation(seed=1)(image, label)
    assert out.shape == image.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out_label.shape == label.shape and out_label.dtype == torch.uint8
    assert set(out_label.unique().tolist()) <= {0, 1, 2}
    assert not torch.equal(out, image)


def test_samples_draw_their_own_parameters_and_seed_reproduces():
    image = _smooth_image(48, 48).expand(6, 1, 48, 48).clone()
    aug = BatchAugmentation(**{**OFF, "affine_prob": 1.0}, seed=5)
    first, _ = aug(image)
    for i in range(1, 6):
        assert not torch.allclose(first[0], first[i]), "every sample must get its own transform"
    again, _ = aug.set_random_state(5)(image)
    assert torch.equal(first, again)
    other, _ = aug.set_random_state(6)(image)
    assert not torch.equal(first, other)


def test_probability_is_per_sample():
    image = _smooth_image(24, 24).expand(400, 1, 24, 24).clone()
    out, _ = BatchAugmentation(**{**OFF, "shift_intensity_prob": 0.3, "shift_offsets": (0.5, 1.0)}, seed=0)(image)
    changed = (out - image).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert 0.22 < changed.float().mean().item() < 0.38
    shifts = (out - image)[changed].mean(dim=(1, 2, 3))
    assert shifts.min() >= 0.5 - 1e-5 and shifts.max() <= 1.0 + 1e-5


def test_noise_std_is_within_range():
    image = torch.zeros(50, 1, 64, 64)
    out, _ = BatchAugmentation(**{**OFF, "noise_prob": 1.0, "noise_std": 0.03}, seed=0)(image)
    std = out.std(dim=(1, 2, 3))
    assert std.max() < 0.03 * 1.1 and std.min() >= 0 and abs(out.mean().item()) < 1e-3
    assert (std > 0.015).any() and (std < 0.015).any()  # std drawn uniformly in [0, 0.03]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"affine_prob": 1.5}, "affine_prob must be a probability"),
        ({"gamma": (1.5, 0.7)}, "gamma: low 1.5 is above high 0.7"),
        ({"smooth_sigma": (0.0, 1.0)}, "smooth_sigma must be positive"),
        ({"translate_range": (1, 2, 3)}, "one per in-plane axis"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchAugmentation(**kwargs)


def test_bad_batches_are_named():
    aug = BatchAugmentation()
    with pytest.raises(ValueError, match=r"expects a \(B, C, H, W\) batch"):
        aug(torch.rand(1, 8, 8, 8, 8))
    with pytest.raises(ValueError, match="do not match"):
        aug(torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 9, dtype=torch.uint8))


def test_prepare_batch_moves_and_augments():
    image = MetaTensor(torch.rand(2, 1, 32, 32))
    label = MetaTensor(_labels_of(image.as_tensor()))
    batch = {"image": image, "label": label}
    plain_image, plain_label = AugmentedBatch(None)(batch, torch.device("cpu"))
    assert torch.equal(torch.as_tensor(plain_image), image.as_tensor())
    prepare = AugmentedBatch(BatchAugmentation(**{**OFF, "affine_prob": 1.0}))
    prepare.set_random_state(0)
    out, out_label = prepare(batch, torch.device("cpu"))
    assert type(out) is torch.Tensor and type(out_label) is torch.Tensor  # plain tensors for the trainer
    assert out.shape == (2, 1, 32, 32) and not torch.equal(out, image.as_tensor())
    prepare.set_random_state(0)
    again, _ = prepare(batch, torch.device("cpu"))
    assert torch.equal(out, again)
