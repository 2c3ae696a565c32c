"""Pairing each subject's follow-up visits with its baseline, per compartment, with flags for pairs that cannot
be compared (laterality, voxel size, a quantify flag, a low expected Dice)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence

from scripts.longitudinal.rows import ChangeRow, LongitudinalError, VisitRow

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# pairing
# ----------------------------------------------------------------------------------------------------------------------
def _visit_key(visit_order: Sequence[str] | None) -> Callable[[str], int]:
    """Sort key of visit labels: the given order, else the first number in the label (00m < 12m < 96m; V00 < V01)."""
    if visit_order:
        rank = {v: i for i, v in enumerate(visit_order)}
        return lambda visit: rank[visit]
    return lambda visit: int(re.search(r"\d+", visit).group())


def _check_visits(visits: Iterable[str], visit_order: Sequence[str] | None) -> None:
    visits = sorted(set(visits))
    if visit_order:
        if len(set(visit_order)) != len(visit_order):
            raise LongitudinalError(f"--visit_order {','.join(visit_order)} names a visit twice")
        unknown = [v for v in visits if v not in visit_order]
        if unknown:
            raise LongitudinalError(
                f"visit(s) {', '.join(unknown)} are not in --visit_order {','.join(visit_order)}: list every visit, "
                "baseline first"
            )
        return
    no_number = [v for v in visits if not re.search(r"\d", v)]
    if no_number:
        raise LongitudinalError(
            f"visit label(s) {', '.join(no_number)} hold no number to order the visits by: pass --visit_order "
            f"with every visit, baseline first (e.g. --visit_order {','.join(visits)})"
        )
    by_number: dict[int, list[str]] = {}
    for v in visits:
        by_number.setdefault(int(re.search(r"\d+", v).group()), []).append(v)
    clash = [labels for labels in by_number.values() if len(labels) > 1]
    if clash:
        raise LongitudinalError(
            f"visit labels {' and '.join(clash[0])} carry the same number, so their order is unknown: pass "
            "--visit_order with every visit, baseline first"
        )


# compartments whose measurement does not depend on the knee's side, and the quantify flags that only concern the
# medial / lateral split: a knee whose side is unknown still gives a valid whole-femur or whole-tibia change
WHOLE_COMPARTMENTS = frozenset({"femoral", "tibial"})
SIDE_FLAGS = frozenset({"laterality_unknown", "laterality_conflict", "ml_split_uncertain", "ml_labels_disagree"})


def _relevant_flags(row: VisitRow) -> str:
    """The row's quantify flags that bear on its compartment's change (";"-joined, as in the measurement CSV)."""
    flags = [f for f in row.flags.split(";") if f.strip()]
    if row.compartment in WHOLE_COMPARTMENTS:
        flags = [f for f in flags if f.strip() not in SIDE_FLAGS]
    return ";".join(f.strip() for f in flags)


def _pair_flags(base: VisitRow, follow: VisitRow, min_expected_dice: float) -> list[str]:
    flags = []
    if base.laterality != follow.laterality:
        flags.append("laterality_differs")
    if base.voxel_size_mm and follow.voxel_size_mm and base.voxel_size_mm != follow.voxel_size_mm:
        flags.append("voxel_size_differs")
    if min_expected_dice > 0 and not _lower(base.expected_dice, follow.expected_dice) >= min_expected_dice:
        flags.append("low_expected_dice")  # also when a visit has no expected Dice: the threshold cannot be checked
    for visit, row in (("baseline", base), ("followup", follow)):
        if relevant := _relevant_flags(row):
            flags.append(f"{visit}:{relevant}")
    return flags


def _lower(a: float, b: float) -> float:
    """The smaller value, NaN if either is NaN (Python's min would depend on the order)."""
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


def _percent(change: float, base: float) -> float:
    return 100.0 * change / base if base > 0 else math.nan


def change_rows(
    rows: Sequence[VisitRow], visit_order: Sequence[str] | None = None, min_expected_dice: float = 0.0
) -> list[ChangeRow]:
    """Each subject's later visits against its first, per compartment; subjects seen at one visit only are logged.
    With `min_expected_dice` > 0, a pair where either visit's segmentation is expected below it is flagged."""
    _check_visits((r.visit for r in rows), visit_order)
    key = _visit_key(visit_order)
    by_subject: dict[str, dict[str, dict[str, VisitRow]]] = {}
    for r in rows:
        by_subject.setdefault(r.subject, {}).setdefault(r.visit, {})[r.compartment] = r
    single = sorted(s for s, visits in by_subject.items() if len(visits) < 2)
    if single:
        logger.warning(
            "%d subject(s) seen at one visit only, no change to measure: %s", len(single), ", ".join(single[:10])
        )
    out: list[ChangeRow] = []
    for subject in sorted(by_subject):
        visits = sorted(by_subject[subject], key=key)
        baseline = by_subject[subject][visits[0]]
        for visit in visits[1:]:
            follow = by_subject[subject][visit]
            for compartment in dict.fromkeys([*baseline, *follow]):  # the measurement CSV's order
                if compartment not in baseline or compartment not in follow:
                    logger.warning(
                        "%s: %s measured at %s only; no change row",
                        subject,
                        compartment,
                        visits[0] if compartment in baseline else visit,
                    )
                    continue
                b, f = baseline[compartment], follow[compartment]
                volume_change = f.volume_mm3 - b.volume_mm3
                out.append(
                    ChangeRow(
                        subject=subject,
                        compartment=compartment,
                        baseline_visit=b.visit,
                        followup_visit=f.visit,
                        laterality=b.laterality if b.laterality == f.laterality else f"{b.laterality}/{f.laterality}",
                        volume_baseline_mm3=b.volume_mm3,
                        volume_followup_mm3=f.volume_mm3,
                        volume_change_mm3=volume_change,
                        volume_change_percent=_percent(volume_change, b.volume_mm3),
                        thickness_mean_baseline_mm=b.thickness_mean_mm,
                        thickness_mean_followup_mm=f.thickness_mean_mm,
                        thickness_mean_change_mm=f.thickness_mean_mm - b.thickness_mean_mm,
                        thickness_median_change_mm=f.thickness_median_mm - b.thickness_median_mm,
                        expected_dice_min=_lower(b.expected_dice, f.expected_dice),
                        flags=";".join(_pair_flags(b, f, min_expected_dice)),
                    )
                )
    if not out:
        raise LongitudinalError(
            f"no subject has two visits among {len(by_subject)} subject(s): check that the scans of one knee share "
            "the subject part of their names (see --scan_pattern)"
        )
    return out
