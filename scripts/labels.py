"""Label presets: which source label codes exist in a dataset and how they map to the three training classes.

The network predicts 0 background, 1 femoral cartilage, 2 tibial cartilage. Source datasets use their own codes; one
config key (`label_preset`) selects the mapping. A value outside a preset's known codes is an error that names the file,
never a silent zero: a wrong preset is the most common way to train on empty labels without noticing.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapLabelValue, MapTransform

__all__ = ["CLASS_NAMES", "LabelPreset", "PRESETS", "get_preset", "check_label_values", "RemapLabelsd", "source_name"]

CLASS_NAMES: dict[int, str] = {0: "background", 1: "femoral cartilage", 2: "tibial cartilage"}


@dataclass(frozen=True)
class LabelPreset:
    """Source codes of one dataset convention.

    Args:
        name: preset key used in configs.
        tissues: every code that may occur, with its anatomical name (also drives label-to-image synthesis).
        to_class: source code -> training class; codes not listed map to background.
        description: one line for docs and error messages.
    """

    name: str
    tissues: dict[int, str]
    to_class: dict[int, int]
    description: str = ""
    known_codes: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "known_codes", frozenset(self.tissues))


_OAI_ZIB = {0: "background", 1: "femoral bone", 2: "femoral cartilage", 3: "tibial bone", 4: "tibial cartilage"}

PRESETS: dict[str, LabelPreset] = {
    "oai-zib": LabelPreset(
        "oai-zib", dict(_OAI_ZIB), {2: 1, 4: 2}, "OAI-ZIB masks (Ambellan 2019) and the bundle's phantoms: codes 0-4"
    ),
    "oaizib-cm": LabelPreset(
        "oaizib-cm",
        {**_OAI_ZIB, 4: "medial tibial cartilage", 5: "lateral tibial cartilage"},
        {2: 1, 4: 2, 5: 2},
        "OAIZIB-CM release: tibial cartilage split into medial (4) and lateral (5)",
    ),
    "oai-labels": LabelPreset(
        "oai-labels",
        {
            **_OAI_ZIB,
            5: "patellar bone",
            6: "patellar cartilage",
            7: "femoral bone lesion",
            8: "tibial bone lesion",
            9: "patellar bone lesion",
        },
        {2: 1, 4: 2},
        "OAI AKOA label maps (Woo et al. 2022): codes 0-9 with patella and bone lesions",
    ),
    "cartilage": LabelPreset(
        "cartilage",
        {0: "background", 1: "femoral cartilage", 2: "tibial cartilage"},
        {1: 1, 2: 2},
        "already in the bundle's classes (0 background, 1 femoral, 2 tibial cartilage), e.g. its own predictions",
    ),
}


def get_preset(name: str) -> LabelPreset:
    """Return the preset called `name`, or raise a ValueError that lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown label_preset {name!r}; choose one of {sorted(PRESETS)}") from None


def source_name(data: object) -> str:
    """Best-effort file name of a MetaTensor (for error messages), else a placeholder."""
    meta = getattr(data, "meta", None) or {}
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    return str(name) if name else "<in-memory array>"


def check_label_values(values: np.ndarray | torch.Tensor, preset: LabelPreset, source: str) -> None:
    """Raise a ValueError naming `source` if `values` holds codes the preset does not know, or non-integers."""
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    uniq = np.unique(arr)
    if uniq.size and not np.all(np.isfinite(uniq)):
        raise ValueError(f"label map {source} contains NaN or infinite values; a label map must hold integer codes")
    if uniq.size and not np.all(np.equal(np.mod(uniq, 1), 0)):
        bad = [float(v) for v in uniq[np.mod(uniq, 1) != 0][:5]]
        raise ValueError(
            f"label map {source} holds non-integer values {bad}; was an image given where a label map was expected?"
        )
    unknown = sorted({int(v) for v in uniq} - preset.known_codes)
    if unknown:
        raise ValueError(
            f"label map {source} holds values {unknown[:10]}{' ...' if len(unknown) > 10 else ''} that label_preset "
            f"{preset.name!r} does not know (known codes: {sorted(preset.known_codes)}; {preset.description}). "
            f"Choose the preset that matches this dataset: {sorted(PRESETS)}."
        )


class RemapLabelsd(MapTransform):
    """Validate source codes against a preset, then map them to the training classes (uint8 by default).

    Args:
        keys: keys of the label maps to remap.
        preset: a key of `PRESETS` (the config's `label_preset`).
        dtype: output dtype; uint8 keeps cached 3D label maps four times smaller than float32.
        allow_missing_keys: don't raise if a key is absent (e.g. inference data without labels).
    """

    def __init__(
        self,
        keys: KeysCollection,
        preset: str,
        dtype: torch.dtype = torch.uint8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.preset = get_preset(preset)
        codes = sorted(self.preset.known_codes)
        self.mapper = MapLabelValue(codes, [self.preset.to_class.get(c, 0) for c in codes], dtype=dtype)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            check_label_values(d[key], self.preset, source_name(d[key]))
            d[key] = self.mapper(d[key])
        return d
