"""The change per compartment and follow-up visit as studies report it: mean ± sd, range, knees thinned, SRM."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from scripts.longitudinal.rows import POOLED, ChangeRow


# ----------------------------------------------------------------------------------------------------------------------
# summary and output
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompartmentSummary:
    """Change of one compartment at one follow-up visit (or at all, pooled) over the usable pairs."""

    compartment: str
    followup_visit: str  # POOLED when the visits were pooled
    n: int
    n_flagged: int
    thickness_change_mean_mm: float
    thickness_change_sd_mm: float
    thickness_change_min_mm: float
    thickness_change_max_mm: float
    n_thinned: int
    srm: float
    volume_change_mean_percent: float
    volume_change_sd_percent: float
    volume_change_min_percent: float
    volume_change_max_percent: float
    n_lost_volume: int


def summarise(
    rows: Sequence[ChangeRow], pool_visits: bool = False, visit_key: Callable[[str], object] | None = None
) -> list[CompartmentSummary]:
    """Per compartment (first-seen order) and follow-up visit (in `visit_key` order, else first-seen): mean ± sd and
    range of the change over usable pairs, sd with ddof=1. Changes over different intervals are not one quantity, so
    each follow-up visit is summarised apart unless `pool_visits` (e.g. a cohort whose intervals differ per knee)."""
    visits = list(dict.fromkeys(r.followup_visit for r in rows))
    if visit_key is not None:
        visits.sort(key=visit_key)
    groups = [POOLED] if pool_visits else visits
    out = []
    for compartment, visit in ((c, v) for c in dict.fromkeys(r.compartment for r in rows) for v in groups):
        pairs = [r for r in rows if r.compartment == compartment and visit in (POOLED, r.followup_visit)]
        if not pairs:
            continue
        usable = [r for r in pairs if r.usable]
        dt = np.array([r.thickness_mean_change_mm for r in usable], dtype=float)
        dv = np.array([r.volume_change_percent for r in usable], dtype=float)
        dv = dv[np.isfinite(dv)]
        sd_t = float(dt.std(ddof=1)) if dt.size > 1 else math.nan
        out.append(
            CompartmentSummary(
                compartment=compartment,
                followup_visit=visit,
                n=len(usable),
                n_flagged=len(pairs) - len(usable),
                thickness_change_mean_mm=float(dt.mean()) if dt.size else math.nan,
                thickness_change_sd_mm=sd_t,
                thickness_change_min_mm=float(dt.min()) if dt.size else math.nan,
                thickness_change_max_mm=float(dt.max()) if dt.size else math.nan,
                n_thinned=int((dt < 0).sum()),
                srm=float(dt.mean()) / sd_t if dt.size > 1 and sd_t > 0 else math.nan,
                volume_change_mean_percent=float(dv.mean()) if dv.size else math.nan,
                volume_change_sd_percent=float(dv.std(ddof=1)) if dv.size > 1 else math.nan,
                volume_change_min_percent=float(dv.min()) if dv.size else math.nan,
                volume_change_max_percent=float(dv.max()) if dv.size else math.nan,
                n_lost_volume=int((dv < 0).sum()),
            )
        )
    return out
