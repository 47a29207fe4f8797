"""Bootstrap intervals (vlnb.eval.bootstrap): of a mean, of Recall@K per method and seed, and of paired
differences; seeded and stratified draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlnb.eval.bootstrap import (
    bootstrap_ci,
    bootstrap_indices,
    bootstrap_recall,
    bootstrap_weights,
    percentile_interval,
    recall_difference,
)
from vlnb.eval.retrieval import recall_at_k


def test_bootstrap_ci_of_a_mean_matches_the_normal_approximation():
    x = (np.random.default_rng(0).random(2000) < 0.3).astype(float)
    r = bootstrap_ci(lambda i: x[i].mean(), len(x), n_boot=2000, seed=1)
    se = math.sqrt(x.mean() * (1 - x.mean()) / len(x))
    assert r.estimate == pytest.approx(x.mean())
    assert r.lo < x.mean() < r.hi
    assert (r.hi - r.lo) == pytest.approx(2 * 1.96 * se, rel=0.12)
    assert r.se == pytest.approx(se, rel=0.12)
    # a constant statistic has a zero-width interval; vector statistics work elementwise
    assert bootstrap_ci(lambda i: 5.0, 10, n_boot=50).lo == 5.0
    v = bootstrap_ci(lambda i: np.array([x[i].mean(), 1.0]), len(x), n_boot=200)
    assert v.estimate.shape == (2,) and v.lo[1] == v.hi[1] == 1.0
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(lambda i: 0.0, 5, level=95)
    with pytest.raises(ValueError, match="at least one unit"):
        bootstrap_ci(lambda i: 0.0, 0)


def test_bootstrap_draws_are_seeded_and_stratified():
    a, b = bootstrap_indices(50, 20, seed=3), bootstrap_indices(50, 20, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, bootstrap_indices(50, 20, seed=4))
    w = bootstrap_weights(50, 20, seed=3)
    assert w.shape == (20, 50) and np.all(w.sum(1) == 50)
    assert np.array_equal(w[0], np.bincount(a[0], minlength=50))
    strata = np.array([0] * 10 + [1] * 40)
    s = bootstrap_indices(50, 30, seed=0, strata=strata)
    assert np.all(s[:, :10] < 10) and np.all(s[:, 10:] >= 10)
    lo, hi = percentile_interval(np.arange(101.0)[:, None], 0.9)
    assert lo[0] == pytest.approx(5) and hi[0] == pytest.approx(95)


def test_bootstrap_recall_known_cases():
    n, caps = 40, 2
    t2i = np.repeat(np.arange(n), caps)
    perfect = torch.eye(n).repeat_interleave(caps, dim=1)
    _, ranks = recall_at_k(perfect, t2i, return_ranks=True)
    df = bootstrap_recall(ranks, t2i, n_boot=200)
    assert (df["recall"] == 100).all() and (df["ci_lo"] == 100).all() and (df["ci_hi"] == 100).all()
    # half of the images (and their captions) retrieved at rank 0, the rest never in the top 10
    sim = perfect.clone()
    sim[n // 2:] = -perfect[n // 2:]
    res, ranks = recall_at_k(sim, t2i, return_ranks=True)
    df, draws = bootstrap_recall(ranks, t2i, ks=(1, 10), n_boot=2000, seed=0, return_samples=True)
    for _, r in df.iterrows():
        assert r["recall"] == pytest.approx(res[f"{r['direction']}_R@{r['k']}"])
        assert r["ci_lo"] < 50 < r["ci_hi"] and r["recall"] == 50
        # 40 images, p = 0.5: bootstrap se ~ 50 / sqrt(40) ~ 7.9 points
        assert (r["ci_hi"] - r["ci_lo"]) == pytest.approx(2 * 1.96 * 50 / math.sqrt(n), rel=0.2)
    # a list of rank sets: the mean recall; paired difference of a method with itself is exactly zero
    avg = bootstrap_recall([ranks, recall_at_k(perfect, t2i, return_ranks=True)[1]], t2i, ks=(1,), n_boot=100)
    assert avg["recall"].tolist() == [75.0, 75.0]
    diff = recall_difference(draws, draws)
    assert (diff["diff_lo"] == 0).all() and (diff["diff_hi"] == 0).all()
