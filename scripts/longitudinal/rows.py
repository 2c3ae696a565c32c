"""The rows of a longitudinal comparison: one scan's compartment at one visit, and one baseline/follow-up pair."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


class LongitudinalError(ValueError):
    """Input that cannot be paired into visits; the message names the file or scans and what to change."""


@dataclass(frozen=True)
class VisitRow:
    """One quantify row: one compartment of one scan."""

    source: str  # file the row came from, for error messages
    scan: str
    subject: str
    visit: str
    compartment: str
    laterality: str
    volume_mm3: float
    thickness_mean_mm: float
    thickness_median_mm: float
    voxel_size_mm: str
    flags: str
    expected_dice: float  # of the prediction measured (inference's measurements.csv); NaN for a given label map


@dataclass(frozen=True)
class ChangeRow:
    """One subject, compartment and follow-up visit against the subject's baseline. Change = follow-up - baseline."""

    subject: str
    compartment: str
    baseline_visit: str
    followup_visit: str
    laterality: str
    volume_baseline_mm3: float
    volume_followup_mm3: float
    volume_change_mm3: float
    volume_change_percent: float
    thickness_mean_baseline_mm: float
    thickness_mean_followup_mm: float
    thickness_mean_change_mm: float
    thickness_median_change_mm: float
    expected_dice_min: float  # the lower of the two visits' expected Dice; NaN (empty in the CSV) where one has none
    flags: str

    @property
    def usable(self) -> bool:
        """Counted in the summary: no flag, and both thickness values measured."""
        return not self.flags and math.isfinite(self.thickness_mean_change_mm)


CHANGE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ChangeRow))


POOLED = "all"  # the follow-up "visit" of a summary over all follow-up visits
