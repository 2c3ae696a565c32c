"""Input checks that turn a bad scan or a wrong model file into one message naming the file and the problem, instead
of an index error deep inside a network, a resampler or `load_state_dict`.

- `CheckScand` runs right after `LoadImaged`: one 3D volume, finite varying intensities, one DICOM series per folder.
- `unreadable_reason` says why a reader failed (truncated gzip, a `.mhd` whose `.raw` is missing, ...).
- `require_checkpoint` runs in `initialize`: the model file exists, loads with `weights_only=True` and fits the network.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from scripts.labels import source_name

logger = logging.getLogger(__name__)

__all__ = [
    "ScanError",
    "check_scan",
    "intensity_problem",
    "geometry_problem",
    "check_dicom_series",
    "unreadable_reason",
    "short_error",
    "CheckScand",
    "label_map_hint",
    "state_dict_of",
    "check_state_dict",
    "load_checkpoint",
    "require_checkpoint",
    "require_compiler",
]

HEADER_DATA_FIELDS = {".mhd": "ElementDataFile", ".nhdr": "data file"}  # detached-header formats and their data key


class ScanError(ValueError):
    """A scan that cannot be segmented as it is (unreadable, wrong dimensionality, NaN, constant, mixed series)."""


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
    affine = getattr(image, "affine", None)
    if affine is not None and (problem := geometry_problem(affine)):
        raise ScanError(f"{source}: {problem}")
    if problem := intensity_problem(image):
        raise ScanError(f"{source}: {problem}")


def geometry_problem(affine: Any) -> str | None:
    """Why a scan's voxel-to-world matrix cannot place it (NaN, a zero spacing, axes that are not independent), or
    None. Reorientation and resampling need an invertible affine; without this check a header with a zero pixdim
    fails deep inside MONAI's Orientation with "Unable to find out axis ... in start_ornt"."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    if not np.isfinite(matrix).all():
        return "its voxel-to-world matrix (affine) holds NaN or infinite values; the header is damaged"
    spacing = np.sqrt((matrix**2).sum(axis=0))
    shown = "x".join(f"{v:.4g}" for v in spacing)
    if spacing.min() <= 1e-6 or abs(np.linalg.det(matrix)) <= 1e-6 * float(np.prod(spacing)):
        return (
            f"its voxel-to-world matrix (affine) is singular (voxel spacing {shown} mm, or axes that are not "
            "independent): a zero pixdim or a damaged qform/sform in the header; fix the header before use"
        )
    return None


def intensity_problem(values: torch.Tensor | np.ndarray) -> str | None:
    """Why the intensities of a loaded scan cannot be normalised (NaN/inf, one value, a range beyond float32), or
    None. Percentile scaling divides by the range, so any of these would give NaN or zeros to the network."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.size == 0:
        return "holds no voxels"
    if not bool(np.isfinite(array).all()):
        return "contains NaN or infinite intensities (or values too large for float32)"
    low, high = array.min(), array.max()
    if low == high:
        return f"every voxel has the same value ({low.item()}); empty scan?"
    with np.errstate(over="ignore"):
        span = np.float32(high) - np.float32(low)
    if not np.isfinite(span):
        return (
            f"intensities span {float(low):.3g} to {float(high):.3g}, too wide to normalise in float32; a damaged "
            "file or a wrong intensity scaling (scl_slope) in its header?"
        )
    return None


def check_dicom_series(folder: str | Path) -> None:
    """Raise ScanError if a DICOM folder holds more than one series: MONAI's ITK reader would silently read the first
    one (with only a warning), so a localiser or a second sequence could be segmented instead of the knee scan."""
    import itk

    def series_ids(details: bool) -> list[str]:
        names = itk.GDCMSeriesFileNames.New()
        names.SetUseSeriesDetails(details)
        if details:
            names.AddSeriesRestriction("0008|0021")  # with the details: the grouping of monai.data.ITKReader
        names.SetGlobalWarningDisplay(False)
        names.SetDirectory(str(folder))
        return [str(s) for s in names.GetSeriesUIDs()]

    grouped = series_ids(details=True)
    if len(grouped) <= 1:
        return
    uids = series_ids(details=False)
    if len(uids) > 1:
        what = f"{len(uids)} series (SeriesInstanceUID {', '.join(uids[:4])}{' ...' if len(uids) > 4 else ''})"
    else:
        what = f"{len(grouped)} groups of slices of one series ({uids[0]}) that differ in size, orientation or date"
    raise ScanError(
        f"{folder}: this DICOM folder holds {what}, and only the first would be read. Put each series in its own "
        "folder, one scan per folder, and run again."
    )


def short_error(exc: BaseException) -> str:
    """`Type: the informative line` of an exception (ITK prefixes its messages with a source-file line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not re.fullmatch(r"\S+\.(cxx|h|hxx|cpp):\d+:", line)]
    text = re.sub(r"\w+IO\(0x[0-9a-f]+\): ", "", " ".join(lines[:2]))
    if len(text) > 240:  # cut at a word and say so, rather than mid-word
        text = text[:240].rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _gzip_problem(path: Path) -> str | None:
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except EOFError:
        return "the gzip data ends early: the file is truncated (an interrupted download or copy?)"
    except (OSError, zlib.error) as e:
        return f"it is not valid gzip data although it ends in .gz ({short_error(e)})"
    return None


def _detached_data_problem(path: Path) -> str | None:
    """For a `.mhd`/`.nhdr` header: the data file it names, when that file is missing."""
    field = HEADER_DATA_FIELDS.get(path.suffix.lower())
    try:
        header = path.read_text(errors="replace")[:65536]
    except OSError:
        return None
    match = re.search(rf"^\s*{field}\s*[:=]\s*(.+?)\s*$", header, re.IGNORECASE | re.MULTILINE) if field else None
    if match is None or match.group(1).split()[0].upper() in ("LOCAL", "LIST"):
        return None
    data = path.parent / match.group(1)
    if not data.exists():
        return f"its data file {data.name} (named by '{field}' in the header) is missing; keep it next to {path.name}"
    return None


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def unreadable_reason(path: str | Path, exc: BaseException | None = None) -> str:
    """Why `path` could not be read, in words a user can act on; `exc` is the reader's exception, if any."""
    p = Path(path)
    if not p.exists():
        return "file not found"
    if p.is_file() and p.suffix.lower() in HEADER_DATA_FIELDS and (problem := _detached_data_problem(p)):
        return problem
    if p.is_file() and p.name.lower().endswith(".gz") and (problem := _gzip_problem(p)):
        return f"cannot be read: {problem}"
    if p.is_file() and p.stat().st_size == 0:
        return "cannot be read: the file is empty"
    if p.is_file() and not p.name.lower().endswith(".gz") and _starts_with(p, b"\x1f\x8b"):
        return f"cannot be read: it holds gzip data but its name does not end in .gz; rename it to {p.name}.gz"
    return f"cannot be read ({short_error(exc)})" if exc is not None else "cannot be read"


class CheckScand(MapTransform):
    """Dictionary wrapper of `check_scan` (and `check_dicom_series` for a scan read from a folder), placed right after
    loading."""

    def __init__(self, keys: KeysCollection, min_size: int = 8, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.min_size = min_size

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            source = source_name(d[key])
            if Path(source).is_dir():
                check_dicom_series(source)
            check_scan(d[key], source, self.min_size)
            if hint := label_map_hint(d[key]):
                logger.warning("%s: %s", source, hint)
        return d


def label_map_hint(image: torch.Tensor, max_values: int = 16) -> str | None:
    """A warning text when a scan looks like a label map (a few non-negative whole values), the file a user most
    often passes by mistake: it would be segmented without complaint. Judged on every 4th voxel per axis (cheap)."""
    sample = image[..., ::4, ::4, ::4] if image.dim() >= 3 else image
    values = torch.unique(sample.detach().reshape(-1)[:2_000_000])
    if len(values) > max_values or values.min() < 0 or not bool(torch.all(values == torch.round(values))):
        return None
    return (
        f"holds only {len(values)} distinct whole values ({', '.join(f'{v:g}' for v in values[:8].tolist())}"
        f"{', ...' if len(values) > 8 else ''}): is it a label map rather than an MR scan?"
    )


def state_dict_of(checkpoint: Any, key: str = "model") -> Any:
    """The network weights in a checkpoint, the way MONAI's CheckpointLoader finds them: the `key` entry of a full
    training state, else the file itself (a plain state_dict)."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
        return checkpoint[key]
    return checkpoint


def check_state_dict(state: Any, network: torch.nn.Module, source: str) -> None:
    """Raise SystemExit with one paragraph if `state` cannot be loaded strictly into `network` (missing or unexpected
    keys, other shapes): the sign of a checkpoint trained with another network or other `network_def` settings."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SystemExit(
            f"error: {source} is not a state_dict of tensors (got {type(state).__name__}); the model file must be "
            "saved with torch.save(network.state_dict(), path), as training does."
        )
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or reshaped):
        return
    parts = [
        f"{len(items)} {what} (e.g. {', '.join(items[:3])})"
        for items, what in (
            (missing, "keys missing from the checkpoint"),
            (unexpected, "keys the network does not have"),
            (reshaped, "tensors of another shape, checkpoint vs network"),
        )
        if items
    ]
    raise SystemExit(
        f"error: checkpoint {source} does not fit the configured network {type(network).__name__}: "
        f"{'; '.join(parts)}. It was trained with another network or other network_def settings (features, "
        "eas_levels, ...): run it with the configs it was trained with (e.g. add configs/networks/unet.json for a "
        "U-Net, or configs/demo.json for the quick start's smaller network), or point --model_path/--ckpt_dir at the "
        "matching model."
    )


def require_checkpoint(path: str, network: torch.nn.Module | None = None) -> str:
    """Exit with one clear paragraph when the model file that evaluation or inference needs is missing, cannot be
    loaded with `weights_only=True`, or (when `network` is given) does not fit the network."""
    if not Path(path).is_file():
        raise SystemExit(
            f"error: no model checkpoint at {path}. Train one first (README: 'Train on your data'), or point "
            "--ckpt_dir at the folder that holds model.pt (or --model_path at the model file)."
        )
    if network is not None:
        check_state_dict(state_dict_of(load_checkpoint(path)), network, path)
    return path


def load_checkpoint(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)` on CPU, or SystemExit with one paragraph saying why it cannot be used."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any loader failure is "not a usable checkpoint", reported with its cause
        why = (
            "it holds pickled Python objects, which weights_only=True loading refuses for safety; save only the "
            "weights with torch.save(network.state_dict(), path)"
            if "Unsupported global" in str(e)
            else "it is not a PyTorch checkpoint or is damaged "
            f"({type(e).__name__ if 'Weights only' in str(e) else short_error(e)})"
        )
        raise SystemExit(f"error: cannot load model checkpoint {path}: {why}.") from None


def require_compiler(enabled: bool, device: Any) -> None:
    """Exit with one clear paragraph, before any data is loaded, when `compile` is on but torch.compile cannot build
    kernels for `device`: Triton on a GPU, a C++ compiler on a CPU. Without this check the run would fail at its
    first batch, after caching the dataset, with a long inductor traceback. Skipped where torch's own probes (private
    modules) are missing."""
    if not enabled:
        return
    kind = torch.device(device).type
    if kind == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return
        if not has_triton():
            raise SystemExit(
                "error: compile is on but torch.compile cannot build GPU kernels here: Triton is not installed or "
                "does not work with this torch and GPU. Install the triton build that matches your torch (pip "
                "install triton), or run without --compile True."
            )
    elif kind == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
            from torch._inductor.exc import InvalidCxxCompiler
        except ImportError:
            return
        try:
            get_cpp_compiler()
        except InvalidCxxCompiler:
            raise SystemExit(
                "error: compile is on but torch.compile cannot build CPU kernels here: no working C++ compiler "
                "(g++ or clang++) was found. Install one (e.g. apt install g++) or name it in the CXX environment "
                "variable, or run without --compile True."
            ) from None
