"""Paired agreement statistics per compartment and measure: bias, limits of agreement, MAD, Pearson's r, Lin's CCC."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scripts.agreement.pairs import MeasurementPair

DEFAULT_MEASURES = ("volume_mm3", "thickness_mean_mm", "thickness_median_mm")

# the usual order of the compartments in tables; others follow in the order first seen
_COMPARTMENT_ORDER = ("femoral", "femoral_medial", "femoral_lateral", "tibial", "tibial_medial", "tibial_lateral")


@dataclass
class AgreementRow:
    """One compartment and measure; differences are automated - reference, in the measure's unit."""

    compartment: str
    measure: str
    n: int  # pairs with both values measured
    n_missing: int  # pairs where either side has no value (e.g. no thickness of an empty segmentation)
    reference_mean: float
    automated_mean: float
    bias: float
    bias_percent: float  # mean of 100 (a - r) / r; NaN unless every reference value is above 0
    sd_difference: float
    loa_lower: float  # bias - 1.96 sd: Bland-Altman 95 % limits of agreement
    loa_upper: float
    mean_abs_difference: float
    max_abs_difference: float
    pearson_r: float  # NaN below 3 pairs or for a constant side
    lin_ccc: float  # Lin's concordance correlation coefficient; NaN below 2 pairs


def agreement_stats(automated: Sequence[float], reference: Sequence[float]) -> dict[str, float | int]:
    """The statistics of one measure over paired values (NaN pairs dropped and counted in `n_missing`)."""
    a_all, r_all = np.asarray(automated, float), np.asarray(reference, float)
    if a_all.shape != r_all.shape:
        raise ValueError(f"automated ({a_all.size}) and reference ({r_all.size}) values are not paired")
    keep = np.isfinite(a_all) & np.isfinite(r_all)
    a, r = a_all[keep], r_all[keep]
    n, nan = int(a.size), math.nan
    out: dict[str, float | int] = {"n": n, "n_missing": int(a_all.size - n)}
    if n == 0:
        keys = ("reference_mean", "automated_mean", "bias", "bias_percent", "sd_difference", "loa_lower", "loa_upper")
        return out | dict.fromkeys(keys + ("mean_abs_difference", "max_abs_difference", "pearson_r", "lin_ccc"), nan)
    d = a - r
    bias = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else nan
    # a percentage only of a quantity that is positive in every pair (a volume, a thickness), not of a change
    bias_percent = float((100 * d / r).mean()) if bool((r > 0).all()) else nan
    pearson = nan
    if n >= 3 and a.std() > 0 and r.std() > 0:
        pearson = float(np.corrcoef(a, r)[0, 1])
    ccc = nan
    if n >= 2:
        # Lin (1989): 2 s_ar / (s_a^2 + s_r^2 + (mean_a - mean_r)^2), moments with 1/n
        cov = float(((a - a.mean()) * (r - r.mean())).mean())
        denominator = float(a.var() + r.var() + (a.mean() - r.mean()) ** 2)
        ccc = 2 * cov / denominator if denominator > 0 else nan
    return out | {
        "reference_mean": float(r.mean()),
        "automated_mean": float(a.mean()),
        "bias": bias,
        "bias_percent": bias_percent,
        "sd_difference": sd,
        "loa_lower": bias - 1.96 * sd,
        "loa_upper": bias + 1.96 * sd,
        "mean_abs_difference": float(np.abs(d).mean()),
        "max_abs_difference": float(np.abs(d).max()),
        "pearson_r": pearson,
        "lin_ccc": ccc,
    }


def _compartment_key(order: Sequence[str]):
    seen = {c: i for i, c in enumerate(order)}
    return lambda c: (_COMPARTMENT_ORDER.index(c), 0) if c in _COMPARTMENT_ORDER else (len(_COMPARTMENT_ORDER), seen[c])


def agreement_rows(pairs: Sequence[MeasurementPair], measures: Sequence[str] = DEFAULT_MEASURES) -> list[AgreementRow]:
    """One row per compartment and measure over all pairs of that compartment."""
    compartments = list(dict.fromkeys(p.compartment for p in pairs))
    rows = []
    for compartment in sorted(compartments, key=_compartment_key(compartments)):
        group = [p for p in pairs if p.compartment == compartment]
        for measure in measures:
            stats = agreement_stats([p.automated[measure] for p in group], [p.reference[measure] for p in group])
            rows.append(AgreementRow(compartment=compartment, measure=measure, **stats))
    return rows
