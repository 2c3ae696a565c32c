"""Entry points: `synthesize_knee_mr` (the single implementation) and the MONAI transforms that call it for training
(`RandSynthesizeKneeMRd`) and validation / test (`SynthesizeKneeMRd`)."""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends

from scripts.labels import check_label_values, get_preset, source_name
from scripts.synthesis.draws import draw_parameters, tissue_roles
from scripts.synthesis.params import SynthesisParams
from scripts.synthesis.render import CodeSets, render_image


def resolve_spacing(label: torch.Tensor, spacing: float | Sequence[float] | None) -> tuple[float, ...]:
    """Voxel size in mm per spatial axis: `spacing` if given, else the column norms of the MetaTensor's affine.

    A plain tensor has no geometry, and guessing 1 mm would make every mm-sized feature 3x too large on a 0.36 mm
    slice, so it is an error instead.
    """
    ndim = label.ndim - 1
    if spacing is not None:
        values = [float(spacing)] * ndim if np.isscalar(spacing) else [float(s) for s in spacing]
        if len(values) != ndim:
            raise ValueError(f"spacing {spacing!r} has {len(values)} values but the label has {ndim} spatial axes")
    elif isinstance(label, MetaTensor):
        affine = torch.as_tensor(label.affine, dtype=torch.float64)
        if affine.shape[-1] != ndim + 1:
            raise ValueError(
                f"the label's affine is {tuple(affine.shape)} but the label has {ndim} spatial axes; pass spacing"
            )
        values = torch.linalg.norm(affine[:ndim, :ndim], dim=0).tolist()
    else:
        raise ValueError("spacing is required for a plain tensor label (a MetaTensor's affine would give it)")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be positive and finite, got {values}")
    return tuple(values)


def _codes(label: torch.Tensor, preset_name: str) -> tuple[torch.Tensor, int]:
    """(1, *spatial) int32 codes (a new tensor) on the label's device and the lookup-table size, after cheap checks.

    The per-call check is a min/max (enough for presets whose codes are 0..k); the full, slower `check_label_values`
    only runs to word an error.
    """
    if not isinstance(label, torch.Tensor):
        label = torch.as_tensor(np.asarray(label))
    if label.ndim not in (3, 4) or label.shape[0] != 1:
        raise ValueError(
            f"label must be channel-first (1, H, W) or (1, D, H, W), got shape {tuple(label.shape)} "
            f"from {source_name(label)}"
        )
    preset = get_preset(preset_name)
    raw = label.as_tensor() if isinstance(label, MetaTensor) else label
    codes = raw.round().to(torch.int32) if raw.is_floating_point() else raw.to(torch.int32, copy=True)
    if raw.is_floating_point() and not torch.equal(codes.to(raw.dtype), raw):
        check_label_values(raw, preset, source_name(label))  # non-integer or NaN values: raises
    lo, hi = (int(v) for v in torch.aminmax(codes))
    top = max(preset.known_codes)
    gaps = len(preset.known_codes) != top + 1
    if lo < 0 or hi > top or (gaps and not set(torch.unique(codes).tolist()) <= preset.known_codes):
        check_label_values(raw, preset, source_name(label))  # raises, naming the file and the unknown codes
    return codes, top + 1


def _numpy_rng(generator: np.random.Generator | torch.Generator | int | None) -> np.random.Generator:
    """One numpy Generator for all scalar draws, whatever kind of generator or seed the caller has."""
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        return np.random.default_rng(seed)
    return np.random.default_rng(generator)


def synthesize_knee_mr(
    label: torch.Tensor,
    preset: str,
    spacing: float | Sequence[float] | None = None,
    generator: np.random.Generator | torch.Generator | int | None = None,
    **params: Any,
) -> torch.Tensor:
    """Synthesise one MR-like image from a raw tissue-code label map (the single implementation of the model).

    Args:
        label: (1, H, W) or (1, D, H, W) tissue codes of `preset`, any device; MetaTensor or plain tensor.
        preset: a `scripts.labels.PRESETS` key; its `tissues` names decide each code's role.
        spacing: mm per spatial axis (scalar = isotropic); None reads it from a MetaTensor's affine.
        generator: numpy Generator, torch Generator or int seed (None = fresh entropy).
        params: overrides of `SynthesisParams` ranges.

    Returns:
        float32 plain tensor, same shape and device as `label`, values in [0, 1].
    """
    p = SynthesisParams.create(**params)
    codes, n_codes = _codes(label, preset)
    sp = resolve_spacing(label, spacing)
    roles = tissue_roles(get_preset(preset).tissues)
    draw = draw_parameters(_numpy_rng(generator), p, roles, codes.ndim - 1)
    gen = torch.Generator(device=codes.device)
    gen.manual_seed(draw.seed)
    return render_image(codes, sp, draw, CodeSets.of(roles, n_codes), gen)


def _with_label_meta(image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Wrap `image` as a MetaTensor carrying the label's affine and meta, so spatial transforms and SaveImage work."""
    if not isinstance(label, MetaTensor):
        return image
    meta, ops = copy.deepcopy(label.meta), copy.deepcopy(label.applied_operations)  # never share the label's affine
    return MetaTensor(image, meta=meta, applied_operations=ops)


def case_rng(label: torch.Tensor, seed: int) -> np.random.Generator:
    """RNG fixed by `seed` and a crc32 of the label's file name (not path: same image on every machine)."""
    name = source_name(label)
    base = PurePath(name).name if name != "<in-memory array>" else ""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(base.encode("utf-8"))])


class _SynthesisKeys:
    """Argument handling shared by both transforms."""

    def _setup(self, label_key: Hashable, image_key: Hashable, preset: str, spacing: Any, params: dict) -> None:
        get_preset(preset)  # fail at construction on a bad preset name
        self.label_key, self.image_key, self.preset, self.spacing = label_key, image_key, preset, spacing
        self.params = SynthesisParams.create(**params).as_dict()


class RandSynthesizeKneeMRd(RandomizableTransform, MapTransform, _SynthesisKeys):
    """Training transform: a new random MR-like image from the raw tissue label map on every call.

    Args:
        label_key: key of the RAW tissue-code label map (relabel to training classes afterwards, not before).
        image_key: key to write the synthesised image to.
        preset: `scripts.labels` preset naming what each code is.
        spacing: mm per spatial axis; None reads the MetaTensor's affine.
        prob: probability of synthesising; when skipped, an image already under `image_key` (e.g. a real scan) is
            kept, which allows mixing real and synthetic training images.
        allow_missing_keys: return the data unchanged when `label_key` is absent.
        params: `SynthesisParams` ranges, e.g. ``noise_std=[0, 0.1]``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        label_key: Hashable = "tissue",
        image_key: Hashable = "image",
        preset: str = "oai-labels",
        spacing: float | Sequence[float] | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
        **params: Any,
    ) -> None:
        MapTransform.__init__(self, label_key, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self._setup(label_key, image_key, preset, spacing, params)
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, torch.Tensor], randomize: bool = True) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.label_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"key {self.label_key!r} (the tissue label map) is not in the data: {sorted(map(str, d))}")
        if randomize:
            self.randomize()
        if not self._do_transform:
            if self.image_key not in d:
                raise ValueError(
                    f"prob={self.prob} skipped synthesis but there is no image under {self.image_key!r} to keep"
                )
            return d
        label = d[self.label_key]
        image = synthesize_knee_mr(label, self.preset, self.spacing, np.random.default_rng(self._seed), **self.params)
        d[self.image_key] = _with_label_meta(image, label)
        return d


class SynthesizeKneeMRd(MapTransform, _SynthesisKeys):
    """Validation/test transform: one fixed MR-like image per case, from `seed` + crc32 of the label's file name.

    Not Randomizable on purpose: MONAI's CacheDataset caches every transform up to the first random one, so the
    (seconds-long) 3D synthesis runs once per case, and the result does not depend on worker or case order.

    Args: as `RandSynthesizeKneeMRd`, with `seed` instead of `prob`.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        label_key: Hashable = "tissue",
        image_key: Hashable = "image",
        preset: str = "oai-labels",
        spacing: float | Sequence[float] | None = None,
        seed: int = 0,
        allow_missing_keys: bool = False,
        **params: Any,
    ) -> None:
        MapTransform.__init__(self, label_key, allow_missing_keys)
        self._setup(label_key, image_key, preset, spacing, params)
        self.seed = int(seed)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            image = synthesize_knee_mr(label, self.preset, self.spacing, case_rng(label, self.seed), **self.params)
            d[self.image_key] = _with_label_meta(image, label)
        return d
