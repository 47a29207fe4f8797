"""Bootstrap confidence intervals: a generic one for any statistic over resampled units, and Recall@K.

A test set is a sample. Re-drawing its *units* (images, people, prompts ...) with replacement, many times,
and recomputing the statistic on each draw shows how much the number would move on another test set of
the same size (Efron & Tibshirani 1993). The interval reported is the percentile interval of those draws.

- :func:`bootstrap_indices` / :func:`bootstrap_weights` -- the draws themselves (seeded; the same seed and
  ``n_units`` always give the same draws, so two models evaluated with one seed are compared on *paired*
  resamples, and a difference of two statistics gets its own interval);
- :func:`bootstrap_ci` -- any ``statistic(indices) -> float | array`` over resampled units, optionally
  stratified (units re-drawn within each stratum, keeping the strata sizes, e.g. subgroups in a fairness
  analysis);
- :func:`bootstrap_recall` -- Recall@K of a retrieval evaluation with *images* as the units: a drawn image
  brings its image->text query and the text->image queries of all its captions. The ranks are computed
  once on the full test set (:func:`vlnb.eval.retrieval.retrieval_ranks`) and only the queries are
  re-drawn -- the usual "conditional on the gallery" bootstrap, which needs no re-ranking. Several rank sets
  (e.g. one per training seed) give the interval of their *mean* recall on the same draws.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..timing import timer
from .retrieval import DIRECTIONS, check_ks


@dataclass
class BootstrapResult:
    """Point estimate (on all units), percentile interval and the bootstrap draws of a statistic."""

    estimate: np.ndarray | float
    lo: np.ndarray | float
    hi: np.ndarray | float
    samples: np.ndarray  #: (n_boot, ...) the statistic on every draw
    level: float

    @property
    def se(self):
        """Bootstrap standard error (standard deviation of the draws)."""
        return self.samples.std(axis=0, ddof=1)


def _check(n_units: int, n_boot: int, level: float) -> None:
    if int(n_units) < 1:
        raise ValueError(f"bootstrap needs at least one unit, got n_units={n_units}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95, got {level}")


def bootstrap_indices(n_units: int, n_boot: int = 1000, seed: int = 0, strata=None) -> np.ndarray:
    """``(n_boot, n_units)`` unit indices drawn with replacement (row ``b`` = draw ``b``).

    ``strata`` (length ``n_units``, any labels): draw within each stratum, so every draw keeps the
    strata sizes (column positions of a stratum's units are kept; their indices are re-drawn among them).
    """
    _check(n_units, n_boot, 0.5)
    rng = np.random.default_rng([int(seed), 0xB005])
    if strata is None:
        return rng.integers(0, n_units, size=(n_boot, n_units))
    strata = np.asarray(strata)
    if len(strata) != n_units:
        raise ValueError(f"strata has {len(strata)} labels but there are {n_units} units")
    out = np.empty((n_boot, n_units), dtype=np.int64)
    for s in pd.unique(strata):
        members = np.flatnonzero(strata == s)
        out[:, members] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
    return out


def bootstrap_weights(n_units: int, n_boot: int = 1000, seed: int = 0, strata=None) -> np.ndarray:
    """``(n_boot, n_units)`` counts: how often each unit is drawn in each draw of :func:`bootstrap_indices`."""
    idx = bootstrap_indices(n_units, n_boot, seed, strata)
    w = np.zeros((n_boot, n_units), dtype=np.float64)
    np.add.at(w, (np.repeat(np.arange(n_boot), n_units), idx.ravel()), 1.0)
    return w


def percentile_interval(samples, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The ``level`` percentile interval of bootstrap draws along axis 0 (NaN draws are ignored)."""
    a = (1 - level) / 2
    s = np.asarray(samples, dtype=np.float64)
    return np.nanquantile(s, a, axis=0), np.nanquantile(s, 1 - a, axis=0)


@timer("metrics")
def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | np.ndarray],
    n_units: int,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    strata=None,
) -> BootstrapResult:
    """Percentile bootstrap interval of ``statistic(indices)`` (float or array of floats).

    ``statistic`` receives the drawn unit indices (length ``n_units``, with repeats) and returns the value
    on that sample; the point estimate is ``statistic(arange(n_units))``. Example -- the mean of ``x``::

        bootstrap_ci(lambda i: x[i].mean(), len(x))
    """
    _check(n_units, n_boot, level)
    est = np.asarray(statistic(np.arange(n_units)), dtype=np.float64)
    idx = bootstrap_indices(n_units, n_boot, seed, strata)
    samples = np.stack([np.asarray(statistic(i), dtype=np.float64) for i in idx])
    lo, hi = percentile_interval(samples, level)
    scalar = est.ndim == 0
    return BootstrapResult(float(est) if scalar else est, float(lo) if scalar else lo, float(hi) if scalar else hi,
                           samples, level)


# ---------------------------------------------------------------------------------------------- Recall@K
def per_image_hits(ranks: Mapping, text_to_image: np.ndarray, n_images: int, ks) -> dict:
    """Per image: i2t hit (0/1) and number of its captions hit at each k, so a weighted mean is a recall."""
    t2i = np.asarray(text_to_image, dtype=np.int64)
    if len(ranks["t2i"]) != len(t2i):
        raise ValueError(f"ranks hold {len(ranks['t2i'])} text queries but text_to_image has {len(t2i)} texts")
    n_caps = np.bincount(t2i, minlength=n_images).astype(np.float64)
    i2t_hit = np.zeros((len(ks), n_images))
    has_cap = np.zeros(n_images)
    has_cap[ranks["i2t_images"]] = 1.0
    t2i_hit = np.zeros((len(ks), n_images))
    for a, k in enumerate(ks):
        i2t_hit[a, ranks["i2t_images"]] = (np.asarray(ranks["i2t"]) < k).astype(np.float64)
        t2i_hit[a] = np.bincount(t2i, weights=(np.asarray(ranks["t2i"]) < k).astype(np.float64), minlength=n_images)
    return {"i2t": (i2t_hit, has_cap), "t2i": (t2i_hit, n_caps)}


@timer("metrics")
def bootstrap_recall(
    ranks: Mapping | Sequence[Mapping],
    text_to_image,
    ks: Sequence[int] = (1, 5, 10),
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    n_images: int | None = None,
    return_samples: bool = False,
):
    """Recall@K (percent) with percentile bootstrap intervals, resampling *images*.

    ``ranks``: a :func:`vlnb.eval.retrieval.retrieval_ranks` dict (``recall_at_k(..., return_ranks=True)``),
    or a list of them over the same test set (e.g. one per training seed): then the statistic is their mean
    recall, every draw applied to all of them alike. ``text_to_image``: the image index of every text.

    Returns a tidy frame ``direction, k, recall, ci_lo, ci_hi, level, n_boot`` (``recall`` = on the full
    test set), and with ``return_samples=True`` also ``{(direction, k): draws (n_boot,)}`` for paired
    comparisons (the same ``seed`` and test set give the same draws).
    """
    ks = check_ks(ks)
    many = list(ranks) if not isinstance(ranks, Mapping) else [ranks]
    if not many:
        raise ValueError("bootstrap_recall needs at least one set of ranks")
    t2i = np.asarray(text_to_image, dtype=np.int64)
    n = int(n_images if n_images is not None else (t2i.max() + 1 if len(t2i) else 0))
    if n_images is None:
        n = max(n, max(int(np.max(r["i2t_images"], initial=-1)) + 1 for r in many))
    _check(n, n_boot, level)
    hits = [per_image_hits(r, t2i, n, ks) for r in many]
    w = bootstrap_weights(n, n_boot, seed)
    full = np.ones((1, n))
    rows, draws = [], {}
    for d in DIRECTIONS:
        num = np.mean([h[d][0] for h in hits], axis=0)  # (len(ks), n): mean over rank sets
        den = hits[0][d][1]  # (n,): queries per image (same for every rank set)
        if den.sum() == 0:
            raise ValueError(f"no {d} query in the test set: recall is undefined")
        with np.errstate(invalid="ignore", divide="ignore"):
            samples = 100.0 * (w @ num.T) / (w @ den)[:, None]  # (n_boot, len(ks)); NaN if a draw has no query
        est = 100.0 * (full @ num.T) / (full @ den)[:, None]
        lo, hi = percentile_interval(samples, level)
        for a, k in enumerate(ks):
            rows.append({"direction": d, "k": k, "recall": float(est[0, a]), "ci_lo": float(lo[a]),
                         "ci_hi": float(hi[a]), "level": level, "n_boot": int(n_boot)})
            draws[d, k] = samples[:, a]
    df = pd.DataFrame(rows)
    return (df, draws) if return_samples else df


def recall_difference(samples_a: Mapping, samples_b: Mapping, level: float = 0.95) -> pd.DataFrame:
    """Paired interval of ``recall_a - recall_b`` from two ``bootstrap_recall(..., return_samples=True)``
    draws made with the same seed on the same test set. Columns ``direction, k, diff_lo, diff_hi,
    p_not_better`` (share of draws where a does not beat b)."""
    rows = []
    for key in samples_a:
        if key not in samples_b or len(samples_a[key]) != len(samples_b[key]):
            raise ValueError(f"the two sample sets do not match at {key}: use the same seed, n_boot and keys")
        diff = np.asarray(samples_a[key]) - np.asarray(samples_b[key])
        lo, hi = percentile_interval(diff, level)
        rows.append({"direction": key[0], "k": key[1], "diff_lo": float(lo), "diff_hi": float(hi),
                     "p_not_better": float(np.mean(diff <= 0))})
    return pd.DataFrame(rows)


__all__ = ["BootstrapResult", "bootstrap_ci", "bootstrap_indices", "bootstrap_recall", "bootstrap_weights", "per_image_hits", "percentile_interval", "recall_difference"]
