"""Fuzzing the loading and preprocessing path with hypothesis: random shapes, spacings, orientations, dtypes, file
formats and label values. Every example either works (a finite, normalised, padded volume; labels in the bundle's
classes) or stops with our clear error naming the file; never an internal exception, never a hang.

Examples are derandomised (the same ones on every run, so CI is reproducible) and few: tiny volumes, well under a
minute on 2 CPU cores."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from monai.bundle import ConfigParser
from monai.transforms import Compose, LoadImaged

from scripts.batch import describe_failure, exception_chain
from scripts.checks import ScanError
from scripts.datalist import DatasetError, validate_entries
from scripts.labels import RemapLabelsd

REPO = Path(__file__).resolve().parents[1]
SECONDS_PER_EXAMPLE = 30
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),  # FUZZ_EXAMPLES=1000 for a longer search
    deadline=None,  # wall time varies on a shared 2-core machine; hangs are caught by `time_limit` instead
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DTYPES = ["float32", "int16", "uint8", "uint16", "int32", "float64"]
ITK_DTYPES = ["float32", "int16", "uint8", "uint16"]


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail an example that runs longer than `seconds` (a hang) instead of blocking the suite."""

    def expire(signum, frame):
        raise TimeoutError(f"example ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def preprocessing() -> Compose:
    """inference.json's preprocessing as shipped (in-plane resampling to 0.3646 mm included)."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "inference.json"))
    return parser.get_parsed_content("preprocessing")


@st.composite
def affines(draw) -> np.ndarray:
    """A voxel-to-world affine: any axis order and flips, optionally a small oblique rotation, random spacing."""
    spacing = np.array(draw(st.lists(st.floats(0.2, 3.0), min_size=3, max_size=3)))
    flips = np.array(draw(st.lists(st.sampled_from([-1, 1]), min_size=3, max_size=3)))
    axes = np.eye(3)[draw(st.permutations([0, 1, 2]))] * flips
    angle = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5]))
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ axes @ np.diag(spacing)
    affine[:3, 3] = draw(st.lists(st.floats(-200, 200), min_size=3, max_size=3))
    return affine


@st.composite
def scans(draw) -> tuple[np.ndarray, np.ndarray, str]:
    """(array, affine, file suffix): mostly 3D, sometimes 2D or 4D; some constant, NaN or infinite values."""
    ndim = 3 if draw(st.integers(0, 3)) < 3 else draw(st.sampled_from([2, 4]))
    shape = draw(st.lists(st.integers(8, 20), min_size=ndim, max_size=ndim))
    if draw(st.integers(0, 5)) == 5:  # now and then a thin axis: a slab, or a 2D image stored as 3D
        shape[draw(st.integers(0, ndim - 1))] = draw(st.integers(1, 7))
    shape = tuple(shape)
    suffix = draw(st.sampled_from([".nii.gz", ".mhd", ".nii"]))
    dtype = np.dtype(draw(st.sampled_from(ITK_DTYPES if suffix == ".mhd" else DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["random", "constant", "nan", "inf", "huge"]))
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    high = min(info.max, 4000) if info else 10.0 ** draw(st.integers(-3, 6))
    low = max(info.min, -1000) if info else -high
    data = (rng.random(shape) * (high - low) + low).astype(dtype)
    if kind == "constant":
        data[...] = data.flat[0]
    elif kind in ("nan", "inf") and dtype.kind == "f":
        data.flat[rng.integers(data.size)] = np.nan if kind == "nan" else -np.inf
    elif kind == "huge" and dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            data = (data / max(np.abs(data).max(), 1e-30) * np.finfo(dtype).max * 0.9).astype(dtype)
    return data, draw(affines()), suffix


def write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    if path.name.endswith(".mhd"):
        import itk

        image = itk.image_from_array(np.ascontiguousarray(data.T))  # itk wants (z, y, x)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if image.GetImageDimension() == 3:
            image.SetSpacing(spacing.tolist())
            image.SetOrigin(affine[:3, 3].tolist())
            image.SetDirection(itk.matrix_from_array(affine[:3, :3] / spacing))
        itk.imwrite(image, str(path))
    else:
        nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def clear_error(exc: BaseException, path: Path) -> bool:
    """Our error (the innermost cause is ScanError) whose message names the file."""
    root = exception_chain(exc)[-1]
    return isinstance(root, ScanError) and path.name in str(root) and describe_failure(exc, str(path)) == str(root)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # MONAI's float32 cast of float64 extremes
@FUZZ
@given(scan=scans())
def test_preprocessing_works_or_raises_our_error(scan, preprocessing):
    data, affine, suffix = scan
    with tempfile.TemporaryDirectory() as tmp, time_limit(SECONDS_PER_EXAMPLE):
        path = write(Path(tmp) / f"scan{suffix}", data, affine)
        try:
            out = preprocessing({"image": str(path)})["image"]
        except Exception as e:  # noqa: BLE001 - the point: which exceptions escape
            assert clear_error(e, path), f"{data.dtype} {data.shape}: {describe_failure(e, str(path))}"
            event(f"clear error: {type(exception_chain(e)[-1]).__name__}")
            return
        event(f"works: {suffix}")
    assert out.dtype == torch.float32 and out.dim() == 4 and out.shape[0] == 1
    assert out.shape[2] % 16 == 0 and out.shape[3] % 16 == 0
    assert bool(torch.isfinite(out).all()), f"non-finite values after preprocessing {data.dtype} {data.shape}"
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@st.composite
def label_maps(draw, shape: tuple[int, ...] = (8, 9, 10)) -> np.ndarray:
    """Label maps with known, unknown, negative, non-integer or NaN codes, in any dtype."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    codes = draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 255, -1, 2.5, np.nan]), min_size=1, max_size=4))
    if dtype.kind in "iu":
        codes = [c for c in codes if not (isinstance(c, float) and (np.isnan(c) or c % 1))] or [0]
        codes = [c for c in codes if np.iinfo(dtype).min <= c <= np.iinfo(dtype).max] or [0]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return np.array(codes, dtype=np.float64)[rng.integers(len(codes), size=shape)].astype(dtype)


@FUZZ
@given(labels=label_maps(), preset=st.sampled_from(["oai-zib", "oaizib-cm", "oai-labels", "cartilage"]))
def test_label_values_work_or_raise_our_error(labels, preset):
    with tempfile.TemporaryDirectory() as tmp, time_limit(SECONDS_PER_EXAMPLE):
        path = write(Path(tmp) / "lab.nii.gz", labels, np.eye(4))
        loaded = LoadImaged("label", image_only=True, ensure_channel_first=True)({"label": str(path)})
        try:
            out = RemapLabelsd("label", preset)(loaded)["label"]
        except ValueError as e:
            assert f"label map {path}" in str(e)
            event("clear error")
            return
        event("works")
    assert set(torch.unique(out).tolist()) <= {0, 1, 2}


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@FUZZ
@given(image=scans(), same_grid=st.booleans(), draw=st.data())
def test_dataset_check_reports_or_passes(image, same_grid, draw):
    """The training-set check on random pairs: it passes, or raises ONE DatasetError whose lines name the files."""
    data, affine, suffix = image
    labels = draw.draw(label_maps(data.shape if same_grid else (8, 9, 10)))
    with tempfile.TemporaryDirectory() as tmp, time_limit(SECONDS_PER_EXAMPLE):
        image_path = write(Path(tmp) / f"img{suffix}", data, affine)
        label_path = write(Path(tmp) / "lab.nii.gz", labels, affine if same_grid else np.eye(4))
        try:
            validate_entries([{"image": str(image_path), "label": str(label_path)}], "oai-zib", num_workers=1)
        except DatasetError as e:
            lines = str(e).splitlines()[1:]
            assert lines and all("img" in line or "lab.nii.gz" in line for line in lines), str(e)
            event("clear error")
            return
        event("works")
