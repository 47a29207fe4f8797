"""The one chance level (vlnb.eval.chance): exact against brute-force enumeration and random scores."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from vlnb.eval import recall_at_k
from vlnb.eval.chance import manifest_recall_chance, recall_chance, recall_chance_from_counts, zeroshot_chance
from vlnb.eval.zeroshot import classification_metrics


def _enumerated_recall(counts, k):
    """Expected Recall@k (percent) over *every* ordering of the gallery, by enumeration."""
    t2i = np.repeat(np.arange(len(counts)), counts)
    n_img, n_txt = len(counts), len(t2i)
    i2t_hits = []
    for i in np.nonzero(np.asarray(counts) > 0)[0]:  # image i ranks the texts in every possible order
        own = set(np.nonzero(t2i == i)[0])
        perms = list(itertools.permutations(range(n_txt)))
        i2t_hits.append(np.mean([bool(own & set(p[:k])) for p in perms]))
    perms = list(itertools.permutations(range(n_img)))
    t2i_hit = np.mean([[t2i[j] in p[:k] for p in perms] for j in range(n_txt)])
    return 100 * np.mean(i2t_hits), 100 * t2i_hit


@pytest.mark.parametrize("counts", [[1, 3, 0, 2], [2, 1, 1, 0, 3], [4, 1]])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_recall_chance_equals_enumeration_on_uneven_counts(counts, k):
    ch = recall_chance_from_counts(counts, ks=(k,))
    i2t, t2i = _enumerated_recall(counts, k)
    assert ch[f"i2t_R@{k}"] == pytest.approx(i2t, abs=1e-9)
    assert ch[f"t2i_R@{k}"] == pytest.approx(t2i, abs=1e-9)


def test_recall_chance_matches_random_scores_through_the_metric():
    # uneven caption counts (1..9, some images without any), scored by the book's own metric
    rng = np.random.default_rng(0)
    counts = np.r_[rng.integers(1, 10, 25), [0, 0, 0]]
    t2i = np.repeat(np.arange(len(counts)), counts)
    ch = recall_chance(t2i, len(counts), ks=(1, 5))
    sims = [recall_at_k(rng.random((len(counts), len(t2i))), t2i, ks=(1, 5)) for _ in range(400)]
    for key, v in ch.items():
        mc = np.array([s[key] for s in sims])
        assert abs(mc.mean() - v) < 4 * mc.std() / math.sqrt(len(mc)) + 1e-9, key
    # the approximation chapter 4 used before (every image at n_texts / n_images captions) is measurably off
    m, per = len(t2i), len(t2i) / len(counts)
    at_mean = 100 * (1 - np.prod([(m - per - j) / (m - j) for j in range(5)]))
    mc5 = np.array([s["i2t_R@5"] for s in sims])
    assert abs(at_mean - mc5.mean()) > 4 * mc5.std() / math.sqrt(len(mc5))


def test_recall_chance_closed_forms_and_manifest():
    ch = recall_chance(np.repeat(np.arange(30), 3), 30, ks=(1, 5))
    assert ch["t2i_R@1"] == 100 / 30 and ch["t2i_R@5"] == 500 / 30
    assert ch["i2t_R@1"] == pytest.approx(100 * 3 / 90)
    assert ch["i2t_R@5"] == pytest.approx(100 * (1 - math.comb(87, 5) / math.comb(90, 5)))
    # K beyond the gallery: certain
    assert recall_chance([0, 1], 2, ks=(5,)) == {"i2t_R@5": 100.0, "t2i_R@5": 100.0}
    df = pd.DataFrame({"captions": [["a", "b"], ["c"], []]})
    assert manifest_recall_chance(df, ks=(1,)) == recall_chance([0, 0, 1], 3, ks=(1,))


def test_recall_chance_rejects_bad_input():
    with pytest.raises(ValueError, match="no image has a caption"):
        recall_chance_from_counts([0, 0])
    with pytest.raises(ValueError, match="outside"):
        recall_chance([0, 3], 2)
    with pytest.raises(ValueError, match="ks"):
        recall_chance([0, 1], 2, ks=(0,))


def _enumerated_topk(label_sets, n_classes, k):
    perms = list(itertools.permutations(range(n_classes)))
    return np.mean([np.mean([bool(set(p[:k]) & s) for p in perms]) for s in label_sets if s])


@pytest.mark.parametrize("k", [1, 2, 4])
def test_zeroshot_chance_equals_enumeration(k):
    sets = [{0}, {1, 2}, {0, 3, 4}, set(), {2}]
    c = 6
    y = np.zeros((len(sets), c), dtype=bool)
    for i, s in enumerate(sets):
        y[i, list(s)] = True
    expect = _enumerated_topk(sets, c, k)
    assert zeroshot_chance(y, c, ks=(k,))[f"top{k}"] == pytest.approx(expect, abs=1e-12)
    assert zeroshot_chance([sorted(s) for s in sets], c, ks=(k,))[f"top{k}"] == pytest.approx(expect, abs=1e-12)
    # single-label (-1 = no label, excluded): exactly k / C
    assert zeroshot_chance(np.array([0, 5, -1, 2]), c, ks=(k,))[f"top{k}"] == k / c


def test_zeroshot_chance_matches_random_scores_and_edge_cases():
    rng = np.random.default_rng(1)
    y = rng.random((60, 10)) < 0.2
    ch = zeroshot_chance(y, 10, ks=(1, 3))
    mc = [classification_metrics(rng.random((60, 10)), y, ks=(1, 3)) for _ in range(300)]
    for k in (1, 3):
        v = np.array([m[f"top{k}"] for m in mc])
        assert abs(v.mean() - ch[f"top{k}"]) < 4 * v.std() / math.sqrt(len(v)), k
    assert math.isnan(zeroshot_chance(np.full(3, -1), 4)["top1"])
    with pytest.raises(ValueError, match="n_classes"):
        zeroshot_chance(np.array([0]), 0)
