"""The paired test the comparisons use: an exact (or sampled) sign-flip test over subjects."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sign_flip_p(differences: Sequence[float], draws: int = 100_000, seed: int = 0) -> float:
    """Two-sided p of a paired sign-flip permutation test of "mean difference 0": the share of the 2^n sign patterns
    whose |mean| reaches the observed one, exact up to n = 24 (all 2^24 patterns of a 24-subject cross-validation,
    in chunks), beyond that estimated from `draws` random patterns as (hits + 1) / (draws + 1), never 0.

    Why this test: it assumes only differences symmetric about 0 under the null, no normality, and with n
    independent units its smallest possible p is 2 / 2^n, which states plainly what a test set of n subjects can
    and cannot show (4 subjects: never below 0.125).
    """
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        raise ValueError("no paired differences to test")
    n = d.size
    threshold = abs(d.mean()) * n - 1e-12 * max(1.0, abs(d.sum()))  # compare |sum|: no division per pattern
    if n > 24:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(draws, n))
        return float((np.count_nonzero(np.abs(signs @ d) >= threshold) + 1) / (draws + 1))
    hits, chunk = 0, 1 << min(n, 20)
    bits = np.arange(n)
    for first in range(0, 1 << n, chunk):
        signs = 1.0 - 2.0 * ((np.arange(first, first + chunk)[:, None] >> bits) & 1)
        hits += np.count_nonzero(np.abs(signs @ d) >= threshold)
    return hits / (1 << n)


def _p_text(p: float) -> str:
    """0.125 as 0.125, 1.19e-07 as 1.2e-07 (a 24-subject floor would print as 0.000)."""
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.2g}"
