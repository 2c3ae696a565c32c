"""Tests of the procedural knee phantoms: determinism, OAI-ZIB conventions, anatomy in mm, DESS contrast, writing."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from scripts.phantom import (
    DEFAULT_SPACING,
    TISSUES,
    KneePhantom,
    case_seed,
    default_spacing,
    generate_knee_phantom,
    simulate_knee,
    write_phantom_dataset,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = (16, 64, 64)
SMALL = (40, 96, 96)
TISSUE = {name: code for code, name in TISSUES.items()}


@lru_cache(maxsize=16)
def _knee(shape: tuple[int, int, int], seed: int) -> KneePhantom:
    """Phantoms are deterministic, so tests may share them (read-only)."""
    return simulate_knee(shape, seed)


def _outer_thickness_mm(label: np.ndarray, cartilage: int, bone: int, spacing) -> np.ndarray:
    """Local cartilage thickness (mm) at the articular surface: distance from each outer-surface voxel to the bone.

    For a layer n voxels thick along its normal the outermost voxel lies n voxels from the nearest bone voxel, so this
    estimate has no voxel-size bias; it uses the anisotropic spacing, so it is in mm at any resolution.
    """
    cart = label == cartilage
    to_bone = ndimage.distance_transform_edt(label != bone, sampling=spacing)
    outside = ~(cart | (label == bone))
    outer = cart & ndimage.binary_dilation(outside, structure=ndimage.generate_binary_structure(3, 1))
    return to_bone[outer]


def _write(tmp_path: Path, name: str, **kwargs) -> Path:
    args = {"num_cases": 3, "shape": TINY, "seed": 7, "num_test": 1, **kwargs}
    return write_phantom_dataset(tmp_path / name, **args)


# ------------------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("shape", [TINY, (24, 96, 96)])
def test_same_seed_same_phantom(shape):
    image_a, label_a, spacing_a = generate_knee_phantom(shape, seed=3)
    image_b, label_b, spacing_b = generate_knee_phantom(shape, seed=3)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(label_a, label_b)
    assert spacing_a == spacing_b


@pytest.mark.parametrize("seeds", [(0, 1), (3, 4)])
def test_different_seed_different_phantom(seeds):
    a, b = (_knee(TINY, s) for s in seeds)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.label, b.label)


def test_case_seed_does_not_depend_on_dataset_size(tmp_path):
    """Case i is the same whatever num_cases is (its seed derives from (seed, i) only)."""
    small = _write(tmp_path, "two", num_cases=2, num_test=0)
    large = _write(tmp_path, "four", num_cases=4, num_test=1)
    a = nib.load(small.parent / "imagesTr/phantom_001.nii.gz").get_fdata()
    b = nib.load(large.parent / "imagesTr/phantom_001.nii.gz").get_fdata()
    np.testing.assert_array_equal(a, b)
    assert case_seed(7, 1) == case_seed(7, 1) != case_seed(7, 2) != case_seed(8, 2)


def test_defects_flag_keeps_the_knee():
    """Same seed with and without defects: the same anatomy, only the cartilage differs (and only by thinning)."""
    with_defects = simulate_knee(SMALL, seed=11, defects=True)
    without = simulate_knee(SMALL, seed=11, defects=False)
    np.testing.assert_array_equal(with_defects.label == 3, without.label == 3)
    cart_with = np.isin(with_defects.label, (2, 4)).sum()
    cart_without = np.isin(without.label, (2, 4)).sum()
    assert cart_with <= cart_without


# ------------------------------------------------------------------------------------------------ labels, geometry


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_label_codes_are_oai_zib(seed):
    knee = _knee(SMALL, seed)
    assert knee.label.dtype == np.uint8 and knee.image.dtype == np.int16
    assert knee.label.shape == knee.image.shape == SMALL
    codes = set(np.unique(knee.label).tolist())
    assert codes == {0, 1, 2, 3, 4}
    # unlabelled tissues (patella, its cartilage, menisci, fluid ...) exist in the tissue map but are 0 in the label
    for name in ("patellar bone", "patellar cartilage", "meniscus", "synovial fluid"):
        assert (knee.tissues == TISSUE[name]).any(), name
        assert not knee.label[knee.tissues == TISSUE[name]].any(), name


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((160, 384, 384), DEFAULT_SPACING),
        ((40, 96, 96), (2.8, 1.4584, 1.4584)),
        ((80, 192, 192), (1.4, 0.7292, 0.7292)),
    ],
)
def test_spacing_keeps_field_of_view(shape, expected):
    np.testing.assert_allclose(default_spacing(shape), expected, rtol=1e-6)


def test_written_nifti_geometry(tmp_path):
    datalist = _write(tmp_path, "nii", num_cases=1, num_test=0)
    expected_spacing = default_spacing(TINY)
    for kind in ("images", "labels"):
        img = nib.load(datalist.parent / f"{kind}Tr/phantom_000.nii.gz")
        assert img.shape == TINY
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(img.header.get_zooms(), expected_spacing, rtol=1e-5)
        np.testing.assert_allclose(np.diag(img.affine)[:3], expected_spacing, rtol=1e-5)
        centre = img.affine @ np.array([(n - 1) / 2 for n in TINY] + [1.0])
        np.testing.assert_allclose(centre[:3], 0.0, atol=1e-3)  # field of view centred on the RAS origin
    label = np.asarray(nib.load(datalist.parent / "labelsTr/phantom_000.nii.gz").dataobj)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, simulate_knee(TINY, case_seed(7, 0)).label)


def test_sagittal_layout():
    """Axis 0 is left-right: in each sagittal slice vol[i] the femur lies above (larger z) the tibia."""
    label = _knee(SMALL, 0).label
    z = np.arange(label.shape[2])
    for i in np.nonzero(((label == 1).any((1, 2))) & ((label == 3).any((1, 2))))[0]:
        femur_z = (z * (label[i] == 1)).sum() / (label[i] == 1).sum()
        tibia_z = (z * (label[i] == 3)).sum() / (label[i] == 3).sum()
        assert femur_z > tibia_z


# ------------------------------------------------------------------------------------------------ anatomy in mm


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("cartilage, bone, low, high", [(2, 1, 1.5, 3.0), (4, 3, 1.5, 3.5)])
def test_cartilage_thickness_mm(seed, cartilage, bone, low, high):
    knee = _knee((64, 192, 192), seed)
    thickness = _outer_thickness_mm(knee.label, cartilage, bone, knee.spacing)
    assert low <= np.median(thickness) <= high
    assert np.percentile(thickness, 90) <= 4.0


@pytest.mark.parametrize("seed", [2, 6])
def test_cartilage_volume_is_resolution_independent(seed):
    """Same seed at two resolutions is the same knee in mm: cartilage volumes agree within 20 %."""
    volumes = []
    for shape in ((32, 96, 96), (64, 192, 192)):
        knee = _knee(shape, seed)
        voxel = float(np.prod(knee.spacing))
        volumes.append([(knee.label == c).sum() * voxel for c in (2, 4)])
    np.testing.assert_allclose(volumes[0], volumes[1], rtol=0.2)


@pytest.mark.parametrize("seed", [0, 1, 4, 9])
def test_cartilage_on_part_of_the_sagittal_slices(seed):
    """Only slices through the condyles/trochlea hold cartilage, and the tibial plateaus are split by the spines."""
    label = _knee(SMALL, seed).label
    with_cartilage = np.isin(label, (2, 4)).any((1, 2))
    assert 0.5 <= with_cartilage.mean() <= 0.8
    assert not with_cartilage[0] and not with_cartilage[-1]
    tibial = np.nonzero((label == 4).any((1, 2)))[0]
    assert np.diff(tibial).max() >= 3  # a notch of at least 3 slices (8 mm) without tibial cartilage


# ------------------------------------------------------------------------------------------------ DESS contrast


def _median(knee: KneePhantom, name: str) -> float:
    return float(np.median(knee.image[knee.tissues == TISSUE[name]]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dess_contrast(seed):
    knee = _knee(SMALL, seed)
    cartilage = np.median(knee.image[np.isin(knee.label, (2, 4))])
    marrow = np.median(knee.image[np.isin(knee.label, (1, 3))])
    assert cartilage > 1.5 * marrow  # bright cartilage on fat-suppressed marrow
    fluid = _median(knee, "synovial fluid")
    assert fluid > cartilage  # fluid brightest
    means = {name: knee.image[knee.tissues == code].mean() for code, name in TISSUES.items() if code}
    assert max(means, key=means.get) == "synovial fluid"
    assert _median(knee, "meniscus") < 0.5 * cartilage  # dark menisci next to bright cartilage
    assert _median(knee, "fat") < _median(knee, "muscle")  # fat suppressed
    assert 300 < np.percentile(knee.image, 99.9) < 2000  # scanner-like range


@pytest.mark.parametrize("seed", [0, 5])
def test_not_separable_by_intensity(seed):
    """No constant per-label intensities, and no intensity window finds the cartilage near the joint (Dice < 0.9)."""
    knee = _knee(SMALL, seed)
    image, cartilage = knee.image.astype(np.float32), np.isin(knee.label, (2, 4))
    for code in range(1, 5):
        values = image[knee.label == code]
        assert values.std() > 0.08 * values.mean()
    near = ndimage.binary_dilation(cartilage, iterations=3)
    levels = np.percentile(image[near], np.arange(0, 101, 4))
    best = 0.0
    for i, lo in enumerate(levels):
        for hi in levels[i + 1 :]:
            found = near & (image >= lo) & (image <= hi)
            best = max(best, 2.0 * (found & cartilage).sum() / (found.sum() + cartilage.sum()))
    assert best < 0.9


# ------------------------------------------------------------------------------------------------ dataset writing


def test_datalist_content(tmp_path):
    datalist = _write(tmp_path, "data", num_cases=3, num_test=1)
    content = json.loads(datalist.read_text())
    assert content["name"] == "knee phantoms" and content["label_preset"] == "oai-zib" and content["seed"] == 7
    np.testing.assert_allclose(content["spacing"], default_spacing(TINY))
    assert [d["subject"] for d in content["training"]] == ["phantom_000", "phantom_001"]
    assert [d["subject"] for d in content["test"]] == ["phantom_002"]
    assert content["training"][0] == {
        "image": "imagesTr/phantom_000.nii.gz",
        "label": "labelsTr/phantom_000.nii.gz",
        "subject": "phantom_000",
    }
    for item in content["training"] + content["test"]:
        assert set(item) == {"image", "label", "subject"}
        for key in ("image", "label"):
            assert not Path(item[key]).is_absolute() and (datalist.parent / item[key]).is_file()
    assert not list(datalist.parent.rglob(".*"))  # no temporary or staging files left behind


@pytest.mark.parametrize("num_test", [0, 2])
def test_split_sizes(tmp_path, num_test):
    content = json.loads(_write(tmp_path, f"split{num_test}", num_cases=2, num_test=num_test).read_text())
    assert len(content["training"]) == 2 - num_test and len(content["test"]) == num_test


def test_metaimage_round_trip_equals_nifti(tmp_path):
    """MONAI's ITK reader + Orientationd(RAS) gives the same arrays and affine from .mhd as from .nii.gz."""
    pytest.importorskip("itk")
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    def load(datalist: Path, reader: str) -> dict:
        item = json.loads(datalist.read_text())["test"][0]
        keys = ["image", "label"]
        chain = Compose(
            [LoadImaged(keys, reader=reader), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS", labels=None)]
        )
        return chain({k: str(datalist.parent / item[k]) for k in keys})

    nifti = load(_write(tmp_path, "nii", num_cases=1, num_test=1), "NibabelReader")
    mhd_list = _write(tmp_path, "mhd", num_cases=1, num_test=1, fmt="mhd")
    assert {p.suffix for p in (mhd_list.parent / "imagesTs").iterdir()} == {".mhd", ".raw"}
    mhd = load(mhd_list, "ITKReader")
    for key in ("image", "label"):
        np.testing.assert_array_equal(np.asarray(nifti[key]), np.asarray(mhd[key]))
        np.testing.assert_allclose(np.asarray(nifti[key].affine), np.asarray(mhd[key].affine), atol=1e-4)


def test_refuses_non_empty_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_phantom_dataset(target, num_cases=1, shape=TINY, num_test=0)
    datalist = write_phantom_dataset(target, num_cases=1, shape=TINY, num_test=0, overwrite=True)
    assert datalist.is_file() and (target / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_cases": 2, "num_test": 3},
        {"num_cases": 0, "num_test": 0},
        {"fmt": "png"},
        {"shape": (4, 64, 64)},
        {"shape": (16, 64)},
    ],
)
def test_invalid_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path / "bad", **{"num_cases": 1, "shape": TINY, "num_test": 0, **kwargs})
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("shape", ["16,64,64", "16x64x64", (16, 64, 64), [16, 64, 64]])
def test_shape_spellings(shape):
    assert generate_knee_phantom(shape, seed=1)[0].shape == TINY


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    args = ["--num_cases", "2", "--shape", "16,64,64", "--seed", "3", "--num_test", "1"]
    run = subprocess.run(
        [sys.executable, "-m", "scripts.phantom", str(out), *args], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "phantom 2/2" in run.stderr and "ETA" in run.stderr  # progress lines
    content = json.loads((out / "datalist.json").read_text())
    assert content["seed"] == 3 and len(content["training"]) == 1 and len(content["test"]) == 1
    again = subprocess.run(
        [sys.executable, "-m", "scripts.phantom", str(out), *args], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert again.returncode != 0 and "not empty" in again.stderr
