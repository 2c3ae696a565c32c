"""Work-arounds for MONAI behaviour that breaks the bundle inside other tools; each one says which and why.

`Spacingd`: monai 1.6.1's `Spacingd` treats every `<key>_*` entry of the data dictionary as a metadata dict and calls
`.update()` on it when the input is NIfTI. MONAI Label puts the input path under `image_path` (a string) before running
the bundle's `preprocessing`, so every MONAI Label infer request on a NIfTI scan fails with
`AttributeError: 'str' object has no attribute 'update'`. This subclass hides such non-dict entries for the duration
of the call and puts them back; resampling and its inverse (used by `Invertd`) are MONAI's own.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import Spacingd as _MonaiSpacingd

__all__ = ["Spacingd"]


class Spacingd(_MonaiSpacingd):
    """`monai.transforms.Spacingd` that tolerates non-dict `<key>_*` entries (e.g. MONAI Label's `image_path`)."""

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        hidden = [k for k in d if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], Mapping)]
        stash = {k: d.pop(k) for k in hidden}
        out = super().__call__(d, lazy=lazy)
        out.update(stash)
        return out
