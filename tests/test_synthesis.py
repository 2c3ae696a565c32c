"""Tests of label -> MR-like image synthesis (scripts/synthesis/): contract, reproducibility, no label leak."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, MetaTensor
from monai.transforms import Compose, Randomizable, SqueezeDimd
from scipy.ndimage import binary_dilation

from scripts.synthesis import (
    RandSynthesizeKneeMRd,
    SynthesisParams,
    SynthesizeKneeMRd,
    resolve_spacing,
    synthesize_knee_mr,
)

PRESET = "oai-labels"
SPACING_2D = (0.3646, 0.3646)
SPACING_3D = (0.7, 0.3646, 0.3646)
CARTILAGE = (2, 4, 6)


def knee_like_slice(size: int = 128, spacing: float = 0.3646) -> np.ndarray:
    """A hand-made sagittal knee slice with OAI codes: condyle, tibial plateau and patella, each with cartilage.

    Geometry in mm so the structures are anatomy-sized at any `size`: a round femoral condyle (1) with a 2.5 mm
    cartilage crescent (2) on its distal half, a tibial plateau (3) with a 2 mm cartilage slab (4) 1 mm below the
    femoral cartilage, an anterior patella (5) with cartilage (6) facing the femur, and a bone lesion (7) in the
    condyle.
    """
    fov = size * spacing
    y, x = np.meshgrid(np.arange(size) * spacing, np.arange(size) * spacing, indexing="ij")
    lab = np.zeros((size, size), dtype=np.int64)
    cy, cx, r = 0.40 * fov, 0.50 * fov, 0.22 * fov
    dist = np.hypot(y - cy, x - cx)
    lab[(dist < r + 2.5) & (y > cy)] = 2
    lab[dist < r] = 1
    plateau = cy + r + 3.5
    inside = np.abs(x - cx) < 0.3 * fov
    lab[inside & (y >= plateau - 2.0) & (y < plateau)] = 4
    lab[inside & (y >= plateau)] = 3
    py, px = cy - 0.1 * fov, cx - r - 6.0
    pat = np.hypot((y - py) / 1.6, x - px)
    lab[(pat < 4.5) & (x > px) & (lab == 0)] = 6
    lab[pat < 3.5] = 5
    lab[np.hypot(y - cy - 0.5 * r, x - cx) < 0.2 * r] = 7
    return lab


def label_2d(size: int = 64, filename: str = "case_a.nii.gz") -> MetaTensor:
    affine = torch.diag(torch.tensor([*SPACING_2D, 1.0], dtype=torch.float64))
    return MetaTensor(torch.as_tensor(knee_like_slice(size)[None]), affine=affine, meta={"filename_or_obj": filename})


def label_3d(depth: int = 4, size: int = 48, filename: str = "case_a.nii.gz") -> MetaTensor:
    vol = np.stack([knee_like_slice(size) for _ in range(depth)])[None]
    affine = torch.diag(torch.tensor([*SPACING_3D, 1.0], dtype=torch.float64))
    return MetaTensor(torch.as_tensor(vol), affine=affine, meta={"filename_or_obj": filename})


def best_band_dice(image: np.ndarray, mask: np.ndarray, n_bins: int = 128) -> float:
    """Best Dice any single intensity band [lo, hi] reaches for `mask`: what an intensity-only 'segmenter' gets.

    Every band between `n_bins` + 1 evenly spaced levels is scored at once from cumulative histograms.
    """
    edges = np.linspace(image.min(), image.max() + 1e-6, n_bins + 1)
    inside = np.concatenate([[0], np.cumsum(np.histogram(image[mask], edges)[0])])
    total = np.concatenate([[0], np.cumsum(np.histogram(image, edges)[0])])
    tp = inside[None, :] - inside[:, None]  # band from level i to level j
    predicted = total[None, :] - total[:, None]
    dice = 2.0 * tp / np.maximum(predicted + mask.sum(), 1)
    return float(np.triu(dice, 1).max())


def histogram_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Shared area of two normalised intensity histograms (1 = same distribution, 0 = separable)."""
    bins = np.linspace(0.0, 1.0, 33)
    ha, hb = np.histogram(a, bins)[0], np.histogram(b, bins)[0]
    return float(np.minimum(ha / ha.sum(), hb / hb.sum()).sum())


# ------------------------------------------------------------------------------------------------------ contract
@pytest.mark.parametrize(
    "make_label, transform",
    [
        (label_2d, RandSynthesizeKneeMRd(label_key="tissue", preset=PRESET)),
        (label_2d, SynthesizeKneeMRd(label_key="tissue", preset=PRESET, seed=3)),
        (label_3d, RandSynthesizeKneeMRd(label_key="tissue", preset=PRESET)),
        (label_3d, SynthesizeKneeMRd(label_key="tissue", preset=PRESET, seed=3)),
    ],
)
def test_shape_dtype_range(make_label, transform):
    label = make_label()
    out = transform({"tissue": label})
    image = out["image"]
    assert image.shape == label.shape
    assert image.dtype == torch.float32
    assert image.device == label.device
    assert torch.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert out["tissue"] is label  # the label map is left alone


@pytest.mark.parametrize("make_label", [label_2d, label_3d])
def test_meta_and_affine_copied(make_label):
    label = make_label()
    image = SynthesizeKneeMRd(label_key="tissue", preset=PRESET)({"tissue": label})["image"]
    assert isinstance(image, MetaTensor)
    assert torch.equal(image.affine, label.affine)
    assert image.meta["filename_or_obj"] == label.meta["filename_or_obj"]
    image.affine[0, 0] = 99.0
    assert label.affine[0, 0] != 99.0  # a copy, not shared


def test_plain_tensor_in_plain_tensor_out():
    label = torch.as_tensor(knee_like_slice(48)[None])
    image = RandSynthesizeKneeMRd(label_key="tissue", preset=PRESET, spacing=SPACING_2D)({"tissue": label})["image"]
    assert type(image) is torch.Tensor and image.shape == label.shape


@pytest.mark.parametrize(
    "label, spacing, expected",
    [
        (label_3d(), None, SPACING_3D),
        (label_2d(), None, SPACING_2D),
        (label_2d(), 0.5, (0.5, 0.5)),
        (label_3d(), [1.5, 0.3125, 0.3125], (1.5, 0.3125, 0.3125)),
    ],
)
def test_resolve_spacing(label, spacing, expected):
    assert resolve_spacing(label, spacing) == pytest.approx(expected)


def test_spacing_survives_slicing_a_volume():
    """The training chain slices volumes to (1, 1, H, W) and squeezes; the 2D affine must still give the spacing."""
    volume = label_3d(depth=1)
    sliced = SqueezeDimd(keys="tissue", dim=1)({"tissue": volume})["tissue"]
    assert resolve_spacing(sliced, None) == pytest.approx(SPACING_3D[1:])


# -------------------------------------------------------------------------------------------------- reproducibility
def test_fixed_transform_same_file_same_image():
    first = SynthesizeKneeMRd(label_key="tissue", preset=PRESET, seed=7)({"tissue": label_2d()})["image"]
    transform = SynthesizeKneeMRd(label_key="tissue", preset=PRESET, seed=7)
    transform({"tissue": label_2d(filename="case_b.nii.gz")})  # another case first: order must not matter
    again = transform({"tissue": label_2d()})["image"]
    elsewhere = label_2d(filename="/another/folder/case_a.nii.gz")
    moved = SynthesizeKneeMRd(label_key="tissue", preset=PRESET, seed=7)({"tissue": elsewhere})["image"]
    assert torch.equal(first, again)
    assert torch.equal(first, moved)  # the file name, not the machine's path, fixes the image


@pytest.mark.parametrize("other", [{"filename": "case_b.nii.gz", "seed": 7}, {"filename": "case_a.nii.gz", "seed": 8}])
def test_fixed_transform_differs_across_cases_and_seeds(other):
    base = SynthesizeKneeMRd(label_key="tissue", preset=PRESET, seed=7)({"tissue": label_2d()})["image"]
    transform = SynthesizeKneeMRd(label_key="tissue", preset=PRESET, seed=other["seed"])
    changed = transform({"tissue": label_2d(filename=other["filename"])})["image"]
    assert not torch.allclose(base, changed)


def test_fixed_transform_is_cacheable():
    transform = SynthesizeKneeMRd(label_key="tissue", preset=PRESET)
    assert not isinstance(transform, Randomizable)
    assert isinstance(RandSynthesizeKneeMRd(), Randomizable)
    ds = CacheDataset([{"tissue": label_2d()}], transform=Compose([transform]), cache_rate=1.0, progress=False)
    assert torch.equal(ds[0]["image"], ds[0]["image"])


def test_random_transform_changes_and_replays():
    transform = RandSynthesizeKneeMRd(label_key="tissue", preset=PRESET)
    transform.set_random_state(seed=11)
    first = transform({"tissue": label_2d()})["image"]
    second = transform({"tissue": label_2d()})["image"]
    assert not torch.allclose(first, second)
    replay = RandSynthesizeKneeMRd(label_key="tissue", preset=PRESET)
    replay.set_random_state(seed=11)
    assert torch.equal(replay({"tissue": label_2d()})["image"], first)
    assert torch.equal(replay({"tissue": label_2d()})["image"], second)


@pytest.mark.parametrize(
    "make_generator",
    [lambda: 5, lambda: np.random.default_rng(5), lambda: torch.Generator().manual_seed(5)],
    ids=["int", "numpy", "torch"],
)
def test_functional_core_is_seeded(make_generator):
    label = label_2d()
    a = synthesize_knee_mr(label, PRESET, None, make_generator())
    b = synthesize_knee_mr(label, PRESET, None, make_generator())
    assert type(a) is torch.Tensor
    assert torch.equal(a, b)


def test_prob_zero_keeps_an_existing_image():
    transform = RandSynthesizeKneeMRd(label_key="tissue", preset=PRESET, prob=0.0)
    real = torch.rand(1, 64, 64)
    assert transform({"tissue": label_2d(), "image": real})["image"] is real
    with pytest.raises(ValueError, match="no image"):
        transform({"tissue": label_2d()})


# -------------------------------------------------------------------------------------------- content and honesty
@pytest.mark.parametrize("seed", range(6))
def test_handmade_knee_gives_a_usable_image(seed):
    label = label_2d(96)
    image = synthesize_knee_mr(label, PRESET, None, seed)
    assert not torch.isnan(image).any() and torch.isfinite(image).all()
    assert image.std() > 0.02
    cart = torch.isin(label.as_tensor(), torch.tensor(CARTILAGE))
    assert image[cart].std() > 0  # textured and noisy, never one constant per label


@pytest.mark.parametrize(
    "preset, keep, relabel",
    [
        ("oai-zib", (0, 1, 2, 3, 4), {}),  # no patella, no lesions
        ("oaizib-cm", (0, 1, 2, 3, 4), {}),
        ("cartilage", (0, 2, 4), {2: 1, 4: 2}),  # cartilage only: no bone, so no rim; still a valid image
    ],
)
def test_other_presets(preset, keep, relabel):
    lab = knee_like_slice(64)
    lab = np.where(np.isin(lab, keep), lab, 0)
    lab = np.vectorize(lambda c: relabel.get(c, c))(lab)
    image = synthesize_knee_mr(torch.as_tensor(lab[None]), preset, SPACING_2D, 0)
    assert torch.isfinite(image).all() and image.std() > 0.01


def test_parameter_overrides_are_checked():
    assert SynthesisParams.create(noise_std=0.05).noise_std == (0.05, 0.05)
    assert SynthesisParams.create(gamma=[0.8, 1.2]).gamma == (0.8, 1.2)
    fixed = synthesize_knee_mr(label_2d(), PRESET, None, 1, noise_std=0.0, blur_sigma_mm=0.0, bias_strength=0.0)
    assert torch.isfinite(fixed).all()


def test_intensity_alone_does_not_reveal_cartilage():
    """No label leak: the best single intensity band finds cartilage poorly, and its intensities overlap the rest.

    The same measure on a leaky image (one constant per label plus noise) scores near 1, so the test has teeth.
    """
    label = knee_like_slice(320)  # a 117 mm field of view, like a real sagittal knee slice
    cart = np.isin(label, CARTILAGE)
    ring = binary_dilation(cart, iterations=8) & ~cart  # ~3 mm of neighbours
    dice, ring_overlap, overlap = [], [], []
    for seed in range(10):
        image = synthesize_knee_mr(torch.as_tensor(label[None]), PRESET, SPACING_2D, seed)[0].numpy()
        dice.append(best_band_dice(image, cart))
        ring_overlap.append(histogram_overlap(image[cart], image[ring]))
        overlap.append(histogram_overlap(image[cart], image[~cart]))
    assert np.mean(dice) < 0.4 and np.max(dice) < 0.6
    assert np.mean(ring_overlap) > 0.15
    assert np.mean(overlap) > 0.2

    leaky = np.where(cart, 0.95, label / 10.0) + np.random.default_rng(0).normal(0.0, 0.02, label.shape)
    assert best_band_dice(leaky, cart) > 0.9


@pytest.mark.shared
def test_real_oai_label_slices(oai_label_files):
    """Real anatomy: medial and lateral sagittal slices of one OAI label map give valid, non-leaking images."""
    nib = pytest.importorskip("nibabel")
    volume = np.asarray(nib.load(str(oai_label_files[0])).dataobj).astype(np.int64)
    assert volume.shape == (160, 384, 384)
    dice = []
    for index, seed in [(40, 0), (110, 1), (40, 2), (110, 3)]:
        label = volume[index][None]
        image = synthesize_knee_mr(torch.as_tensor(label), PRESET, SPACING_2D, seed)
        assert image.shape == label.shape and torch.isfinite(image).all() and image.std() > 0.02
        cart = np.isin(label[0], (2, 4))
        dice.append(best_band_dice(image[0].numpy(), cart))
    assert np.mean(dice) < 0.5


# -------------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "label, kwargs, match",
    [
        (label_2d(), {"preset": "no-such-preset"}, "unknown label_preset"),
        (MetaTensor(torch.zeros(1, 2, 8, 8, 8)), {}, "channel-first"),
        (MetaTensor(torch.zeros(2, 16, 16)), {}, "channel-first"),
        (MetaTensor(torch.full((1, 16, 16), 42)), {}, "does not know"),
        (MetaTensor(torch.full((1, 16, 16), -1)), {}, "does not know"),
        (MetaTensor(torch.full((1, 16, 16), 0.5)), {}, "non-integer"),
        (torch.zeros(1, 16, 16, dtype=torch.long), {}, "spacing is required"),
        (label_2d(), {"spacing": (1.0, 1.0, 1.0)}, "spatial axes"),
        (label_2d(), {"noise_sd": 0.1}, "unknown synthesis parameter"),
        (label_2d(), {"gamma": (2.0, 1.0)}, "lo <= hi"),
        (label_2d(), {"fluid_prob": 1.5}, r"in \[0, 1\]"),
    ],
)
def test_bad_input_raises_a_clear_error(label, kwargs, match):
    kwargs = {"preset": PRESET, **kwargs}
    with pytest.raises(ValueError, match=match):
        synthesize_knee_mr(label, kwargs.pop("preset"), kwargs.pop("spacing", None), 0, **kwargs)


@pytest.mark.parametrize("cls", [RandSynthesizeKneeMRd, SynthesizeKneeMRd])
def test_transforms_reject_bad_settings_at_construction(cls):
    with pytest.raises(ValueError, match="unknown label_preset"):
        cls(preset="no-such-preset")
    with pytest.raises(ValueError, match="unknown synthesis parameter"):
        cls(noise_sd=0.1)


# ------------------------------------------------------------------------------------------------------------- GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("make_label", [label_2d, label_3d])
def test_runs_on_cuda(make_label):
    label = make_label().to("cuda")
    for transform in (RandSynthesizeKneeMRd(preset=PRESET), SynthesizeKneeMRd(preset=PRESET)):
        image = transform({"tissue": label})["image"]
        assert image.device == label.device and image.shape == label.shape and image.dtype == torch.float32
        assert torch.isfinite(image).all()
