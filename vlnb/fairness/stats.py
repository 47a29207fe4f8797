"""Confidence intervals for subgroup metrics: exact / score intervals for proportions, bootstrap for the rest.

- :func:`wilson_interval` -- Wilson's score interval for a binomial proportion ``k / n`` (Wilson 1927):
  well-behaved at small ``n`` and near 0 or 1, where the normal ("Wald") interval collapses to a point.
- :func:`clopper_pearson_interval` -- the exact (conservative) interval from Beta quantiles (Clopper &
  Pearson 1934): its coverage is at least the nominal level for every true proportion.
- Percentile bootstrap intervals (group gaps, ratios, means of continuous scores, metrics whose units are
  clustered, like the captions of one image) come from :mod:`vlnb.eval.bootstrap`.

Both binomial intervals accept arrays (element-wise) and return ``(lo, hi)`` in [0, 1]; ``n = 0`` gives
``(nan, nan)``.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np


def _check(k, n, level):
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95, got {level}")
    if np.any(n < 0) or np.any(k < 0) or np.any(k > n):
        raise ValueError(f"need 0 <= k <= n, got k={k.tolist()} n={n.tolist()}")
    if np.any(k != np.round(k)) or np.any(n != np.round(n)):
        raise ValueError(f"k and n must be whole numbers of successes and trials, got k={k.tolist()} n={n.tolist()}")
    return k, n


def _out(lo, hi):
    return (float(lo), float(hi)) if np.ndim(lo) == 0 else (lo, hi)


def wilson_interval(k, n, level: float = 0.95):
    """Wilson score interval of the proportion ``k / n`` (``k`` successes in ``n`` trials)."""
    k, n = _check(k, n, level)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        lo, hi = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    # exact endpoints at the boundaries (rounding can leave 1e-17 instead of 0)
    lo, hi = np.where(k == 0, 0.0, lo), np.where(k == n, 1.0, hi)
    lo, hi = np.where(n == 0, np.nan, lo), np.where(n == 0, np.nan, hi)
    return _out(lo, hi)


def clopper_pearson_interval(k, n, level: float = 0.95):
    """Exact Clopper-Pearson interval: ``Beta(a/2; k, n-k+1)`` and ``Beta(1-a/2; k+1, n-k)`` quantiles."""
    from scipy import stats  # lazy: optional (scipy comes with scikit-learn, the fairness extra)

    k, n = _check(k, n, level)
    a = 1 - level
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k == 0, 0.0, stats.beta.ppf(a / 2, k, n - k + 1))
        hi = np.where(k == n, 1.0, stats.beta.ppf(1 - a / 2, k + 1, n - k))
    lo, hi = np.where(n == 0, np.nan, lo), np.where(n == 0, np.nan, hi)
    return _out(lo, hi)


BINOMIAL_INTERVALS = {"wilson": wilson_interval, "clopper-pearson": clopper_pearson_interval}


def binomial_interval(k, n, level: float = 0.95, method: str = "wilson"):
    """``wilson_interval`` or ``clopper_pearson_interval`` by name."""
    if method not in BINOMIAL_INTERVALS:
        raise ValueError(f"unknown binomial interval {method!r}; choose one of {sorted(BINOMIAL_INTERVALS)}")
    return BINOMIAL_INTERVALS[method](k, n, level)


__all__ = ["BINOMIAL_INTERVALS", "binomial_interval", "clopper_pearson_interval", "wilson_interval"]


def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control, valid under any dependence between the
    tests). NaN entries (untestable comparisons) stay NaN and are not counted in the family."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(p[idx], kind="stable")]
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adj
    return out
