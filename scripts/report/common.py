"""What the report commands share: display names for runs and the two cartilage structures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _names(names: str | Sequence[str] | None, runs: Sequence[str]) -> list[str]:
    if names is None:
        return [Path(r).name for r in runs]
    out = names.split(",") if isinstance(names, str) else list(names)
    if len(out) != len(runs):
        raise ValueError(f"{len(out)} names for {len(runs)} runs")
    return [n.strip() for n in out]


STRUCTURES = ("femoral cartilage", "tibial cartilage")
