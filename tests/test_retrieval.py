"""Recall@K against a brute-force sort-based reference (ties pessimistic), and cross-encoder re-ranking."""

import numpy as np
import pandas as pd
import pytest
import torch

from vlnb.eval import (
    mean_rank,
    median_rank,
    recall_at_k,
    recall_from_ranks,
    rerank_similarity,
    reranked_recall,
    retrieval_ranks,
    retrieval_table,
)

KS = (1, 2, 5, 10)


def _first_positive(scores, is_pos):
    """Position of the first positive after a full sort, best first, negatives before positives on ties."""
    order = np.lexsort((is_pos, -scores))
    return int(np.argmax(is_pos[order]))


def brute_force(sim, t2i, ks=KS):
    sim, t2i = np.asarray(sim, dtype=np.float64), np.asarray(t2i)
    n, m = sim.shape
    i2t = [_first_positive(sim[i], t2i == i) for i in range(n) if (t2i == i).any()]
    t2i_r = [_first_positive(sim[:, j], np.arange(n) == t2i[j]) for j in range(m)]
    out = {}
    for name, r in (("i2t", np.array(i2t)), ("t2i", np.array(t2i_r))):
        out.update({f"{name}_R@{k}": 100.0 * np.mean(r < k) for k in ks})
    return out, np.array(i2t), np.array(t2i_r)


def _uneven_t2i(rng, n, max_caps=7, allow_empty=True):
    caps = rng.integers(0 if allow_empty else 1, max_caps + 1, size=n)
    caps[rng.integers(n)] = max(caps.max(), 1)  # at least one caption overall
    return np.repeat(np.arange(n), caps)


@pytest.mark.parametrize("seed", range(6))
def test_random_matrices_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    t2i = _uneven_t2i(rng, n)
    rng.shuffle(t2i)  # captions need not be grouped
    sim = rng.normal(size=(n, len(t2i))).astype(np.float32)
    # plant some easy positives so recall is not ~0
    sim[t2i, np.arange(len(t2i))] += rng.uniform(0, 3, size=len(t2i)).astype(np.float32)
    ref, ref_i2t, ref_t2i = brute_force(sim, t2i)
    got, ranks = recall_at_k(sim, t2i, KS, return_ranks=True, chunk_size=int(rng.integers(1, 9)))
    assert got == pytest.approx(ref)
    np.testing.assert_array_equal(ranks["i2t"], ref_i2t)
    np.testing.assert_array_equal(ranks["t2i"], ref_t2i)
    np.testing.assert_array_equal(ranks["i2t_images"], np.unique(t2i))


@pytest.mark.parametrize("kind", ["integers", "binary", "constant", "two_levels_float"])
@pytest.mark.parametrize("seed", range(3))
def test_tie_heavy_matrices_match_brute_force(kind, seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 25))
    t2i = _uneven_t2i(rng, n, max_caps=5)
    m = len(t2i)
    sim = {
        "integers": rng.integers(-2, 3, size=(n, m)),
        "binary": rng.integers(0, 2, size=(n, m)).astype(bool),
        "constant": np.full((n, m), 0.3),
        "two_levels_float": rng.choice([0.25, 0.5], size=(n, m)).astype(np.float32),
    }[kind]
    ref, ref_i2t, ref_t2i = brute_force(sim.astype(np.float64), t2i)
    got, ranks = recall_at_k(sim, t2i, KS, return_ranks=True, chunk_size=3)  # int/bool scores are accepted
    assert got == pytest.approx(ref)
    np.testing.assert_array_equal(ranks["t2i"], ref_t2i)
    np.testing.assert_array_equal(ranks["i2t"], ref_i2t)


def test_constant_matrix_is_not_perfect():
    n, caps = 50, 5
    t2i = np.repeat(np.arange(n), caps)
    res = recall_at_k(np.ones((n, n * caps), dtype=np.float32), t2i)
    # pessimistic: every other image/non-caption text ties with the target and is placed ahead of it
    assert all(v == 0.0 for v in res.values()), res


def test_hand_made_case():
    # 3 images, 4 texts: text0,text1 -> image0; text2 -> image1; text3 -> image2
    sim = np.array(
        [
            [0.9, 0.1, 0.8, 0.2],  # image0: best own caption 0.9 ranks first
            [0.5, 0.6, 0.6, 0.1],  # image1: own caption 0.6 ties with text1 (negative) -> rank 1
            [0.3, 0.7, 0.2, 0.1],  # image2: own caption is the worst of 4 -> rank 3
        ]
    )
    t2i = [0, 0, 1, 2]
    res, ranks = recall_at_k(sim, t2i, ks=(1, 2, 3), return_ranks=True)
    assert ranks["i2t"].tolist() == [0, 1, 3]
    # columns: text0 own 0.9 (best) -> 0; text1 own 0.1 (worst of 3) -> 2;
    # text2 own 0.6 vs 0.8 (image0) -> 1; text3 own 0.1 ties image1's 0.1 and loses to image0's 0.2 -> 2
    assert ranks["t2i"].tolist() == [0, 2, 1, 2]
    assert res["i2t_R@1"] == pytest.approx(100 / 3) and res["i2t_R@2"] == pytest.approx(200 / 3)
    assert res["t2i_R@1"] == 25.0 and res["t2i_R@2"] == 50.0 and res["t2i_R@3"] == 100.0


def test_image_without_caption_is_excluded():
    sim = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])  # image 2 has no caption and should not count
    res, ranks = recall_at_k(sim, [0, 1], ks=(1,), return_ranks=True)
    assert ranks["i2t_images"].tolist() == [0, 1]
    assert res["i2t_R@1"] == 100.0
    assert res["t2i_R@1"] == 0.0  # but image 2 still competes as a distractor in t2i


def test_torch_and_numpy_inputs_agree():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(30, 150, generator=g)
    t2i = torch.arange(150) // 5
    a = recall_at_k(sim, t2i)
    b = recall_at_k(sim.numpy(), t2i.numpy())
    c = recall_at_k(sim.double(), t2i.tolist())
    assert a == b == c
    assert set(a) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    assert all(isinstance(v, float) and 0 <= v <= 100 for v in a.values())


def test_input_errors_are_clear():
    sim = np.zeros((3, 4))
    with pytest.raises(ValueError, match="shape mismatch"):
        recall_at_k(sim, [0, 1, 2])
    with pytest.raises(ValueError, match="out of range.*text 3 points to image 3"):
        recall_at_k(sim, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="out of range"):
        recall_at_k(sim, [0, -1, 2, 2])
    bad = sim.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*image 1, text 2"):
        recall_at_k(bad, [0, 1, 2, 2])
    with pytest.raises(ValueError, match="2-D"):
        recall_at_k(np.zeros(4), [0, 0, 0, 0])
    with pytest.raises(ValueError, match="integer"):
        recall_at_k(sim, [0.0, 1.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="positive ints"):
        recall_at_k(sim, [0, 1, 2, 2], ks=(0, 5))


def test_rank_helpers():
    ranks = np.array([0, 0, 1, 4, 9])
    assert recall_from_ranks(ranks, (1, 5)) == {1: 40.0, 5: 80.0}
    assert mean_rank(ranks) == pytest.approx(3.8) and median_rank(ranks) == 2.0
    sim = np.eye(4)
    r = retrieval_ranks(sim, [0, 1, 2, 3])
    assert r["t2i"].tolist() == [0, 0, 0, 0] and r["i2t"].tolist() == [0, 0, 0, 0]


def test_retrieval_table_is_long_format():
    res = [
        {"model": "a", "dataset": "coco", "protocol": "itc", **recall_at_k(np.eye(3), [0, 1, 2])},
        {"model": "b", "dataset": "coco", "i2t_R@1": 50.0, "seed": 1},
    ]
    df = retrieval_table(res)
    assert list(df.columns[:6]) == ["model", "dataset", "protocol", "direction", "k", "recall"]
    assert len(df) == 7 and "seed" in df.columns
    row = df[(df.model == "b")].iloc[0]
    assert (row.direction, row.k, row.recall, row.protocol) == ("i2t", 1, 50.0, "")
    assert (df[df.model == "a"].recall == 100.0).all()
    with pytest.raises(KeyError, match="model"):
        retrieval_table([{"dataset": "x", "i2t_R@1": 1.0}])
    with pytest.raises(ValueError, match="no"):
        retrieval_table([{"model": "m", "dataset": "x"}])
    assert isinstance(retrieval_table([]), pd.DataFrame)


# --------------------------------------------------------------------------------------- re-ranking


class FakeCross:
    """Cross encoder whose score is known: 10 for a true pair, else 0; records every pair it scores."""

    kind = "cross"
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, t2i):
        self.t2i = t2i
        self.pairs = []

    def score(self, pixel_values, texts):
        imgs = pixel_values[:, 0, 0, 0].round().long().tolist()  # pixels encode the image index
        txts = [int(t[1:]) for t in texts]
        self.pairs += list(zip(imgs, txts))
        return torch.tensor([10.0 if self.t2i[j] == i else 0.0 for i, j in zip(imgs, txts)])


def _rerank_setup(k):
    rng = np.random.default_rng(0)
    n, caps = 12, 2
    t2i = np.repeat(np.arange(n), caps)
    m = len(t2i)
    sim = rng.uniform(0, 1, size=(n, m)).astype(np.float32)
    sim[t2i, np.arange(m)] = -1.0  # all true pairs start at the bottom ...
    order = np.argsort(-sim[0])
    sim[0, 0] = (sim[0, order[k - 2]] + sim[0, order[k - 1]]) / 2  # ... except image 0 / text 0: rank k-1
    images = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 2, 2).contiguous()
    texts = [f"t{j}" for j in range(m)]
    return sim, t2i, images, texts


@pytest.mark.parametrize("combine", ["itm+itc", "itm"])
def test_rerank_moves_correct_pair_from_rank_k_minus_1_to_top(combine):
    k = 4
    sim, t2i, images, texts = _rerank_setup(k)
    n, m = sim.shape
    before = retrieval_ranks(sim, t2i)
    assert before["i2t"][0] == k - 1
    fake = FakeCross(t2i)
    rr, n_pairs = rerank_similarity(sim, fake, images, texts, k=k, batch_size=5, combine=combine, progress=False)
    after_i2t = retrieval_ranks(rr["i2t"], t2i)["i2t"]
    assert after_i2t[0] == 0
    assert (after_i2t[1:] >= k).all()  # their captions were outside the top-k: still misses
    # only top-k candidates were scored, each pair once; cost (N + M) * k at most, not N * M
    top_t = {(i, int(j)) for i in range(n) for j in np.argsort(-sim[i], kind="stable")[:k]}
    top_i = {(int(i), j) for j in range(m) for i in np.argsort(-sim[:, j], kind="stable")[:k]}
    assert len(fake.pairs) == len(set(fake.pairs)) == n_pairs
    assert set(fake.pairs) == top_t | top_i
    assert n_pairs <= (n + m) * k < n * m
    # each direction holds exactly its own candidates; the rest is -inf
    assert (torch.isfinite(rr["i2t"]).sum(1) == k).all() and (torch.isfinite(rr["t2i"]).sum(0) == k).all()
    i, j = 0, 0
    expected = 10.0 + (float(sim[i, j]) if combine == "itm+itc" else 0.0)
    assert rr["i2t"][i, j].item() == pytest.approx(expected)
    res = reranked_recall(rr, t2i, ks=(1,))
    assert res["i2t_R@1"] == pytest.approx(100 / n)


def test_rerank_scores_a_text_written_twice_once_per_image():
    k = 4
    sim, t2i, images, texts = _rerank_setup(k)
    n, m = sim.shape
    sim = sim.copy()
    copies = {3: 0, 7: 0, 9: 8}  # text 3 and 7 say what text 0 says, text 9 what text 8 says
    for j, same in copies.items():
        sim[:, j] = sim[:, same]  # the same string has the same embedding, so the same ITC column
    written = [texts[copies.get(j, j)] for j in range(m)]

    class Recorder(FakeCross):  # scores by the written string, as a real cross encoder would
        def score(self, pixel_values, batch_texts):
            imgs = pixel_values[:, 0, 0, 0].round().long().tolist()
            self.pairs += list(zip(imgs, batch_texts))
            return torch.tensor([float(10 * i + int(t[1:])) for i, t in zip(imgs, batch_texts)])

    for combine in ("itm+itc", "itm"):
        fake = Recorder(t2i)
        rr, n_pairs = rerank_similarity(sim, fake, images, written, k=k, batch_size=5, combine=combine,
                                        progress=False)
        assert len(fake.pairs) == len(set(fake.pairs)) == n_pairs  # each (image, string) once
        wanted = {(int(i), written[j]) for i in range(n) for j in np.argsort(-sim[i], kind="stable")[:k]}
        wanted |= {(int(i), written[j]) for j in range(m) for i in np.argsort(-sim[:, j], kind="stable")[:k]}
        assert set(fake.pairs) == wanted
        # every candidate, copies included, holds its pair's score (+ its own ITC similarity)
        for d in ("i2t", "t2i"):
            for i, j in torch.isfinite(rr[d]).nonzero().tolist():
                expected = 10 * i + int(written[j][1:]) + (float(sim[i, j]) if combine == "itm+itc" else 0.0)
                assert rr[d][i, j].item() == pytest.approx(expected)
        assert (torch.isfinite(rr["i2t"]).sum(1) == k).all() and (torch.isfinite(rr["t2i"]).sum(0) == k).all()


def test_rerank_t2i_and_loader_callable():
    k = 3
    sim, t2i, images, texts = _rerank_setup(k)
    sim = sim.copy()
    j = 5  # text 5 (image 2): put its true image at dual rank k-1 in its column
    col = np.argsort(-sim[:, j])
    sim[t2i[j], j] = (sim[col[k - 2], j] + sim[col[k - 1], j]) / 2
    assert retrieval_ranks(sim, t2i)["t2i"][j] == k - 1
    calls = []

    def load(idx):
        calls.append(list(idx))
        return images[idx]

    rr, _ = rerank_similarity(torch.from_numpy(sim), FakeCross(t2i), load, texts, k=k, progress=False)
    rr_t, _ = rerank_similarity(sim, FakeCross(t2i), images, texts, k=k, progress=False)
    assert torch.equal(rr["t2i"], rr_t["t2i"]) and torch.equal(rr["i2t"], rr_t["i2t"])
    assert retrieval_ranks(rr["t2i"], t2i)["t2i"][j] == 0
    assert all(len(c) == len(set(c)) for c in calls)  # each image loaded once per batch


def test_rerank_errors():
    sim, t2i, images, texts = _rerank_setup(3)
    with pytest.raises(ValueError, match="combine"):
        rerank_similarity(sim, FakeCross(t2i), images, texts, combine="sum", progress=False)
    with pytest.raises(ValueError, match="texts"):
        rerank_similarity(sim, FakeCross(t2i), images, texts[:-1], progress=False)
    with pytest.raises(ValueError, match="rows"):
        rerank_similarity(sim, FakeCross(t2i), images[:-1], texts, progress=False)

    class Bad(FakeCross):
        def score(self, pixel_values, texts):
            return super().score(pixel_values, texts)[:, None]

    with pytest.raises(ValueError, match="one score per pair"):
        rerank_similarity(sim, Bad(t2i), images, texts, k=2, progress=False)


class FingerprintedCross(FakeCross):
    """FakeCross with a weight fingerprint: its pair scores can be cached."""

    def __init__(self, t2i, weights="v1"):
        super().__init__(t2i)
        self.weights = weights

    def fingerprint(self):
        return f"fake-cross-{self.weights}"


def test_rerank_pair_scores_are_cached_by_weights_images_texts_and_pairs(tmp_path):
    k = 4
    sim, t2i, images, texts = _rerank_setup(k)
    kw = {"k": k, "batch_size": 5, "progress": False, "cache_dir": tmp_path}
    first = FingerprintedCross(t2i)
    itm, n_pairs = rerank_similarity(sim, first, images, texts, combine="itm", images_key="imgs-a", **kw)
    assert len(first.pairs) == n_pairs > 0
    # the same pairs of the same images and texts by the same weights: read back, nothing scored, same matrices
    again = FingerprintedCross(t2i)
    both, n_again = rerank_similarity(sim, again, images, texts, combine="itm+itc", images_key="imgs-a", **kw)
    assert again.pairs == [] and n_again == n_pairs
    fresh, _ = rerank_similarity(sim, FakeCross(t2i), images, texts, k=k, batch_size=5, combine="itm+itc",
                                 progress=False)
    assert all(torch.equal(both[d], fresh[d]) for d in ("i2t", "t2i"))
    assert torch.equal(itm["i2t"], rerank_similarity(sim, FakeCross(t2i), images, texts, k=k, combine="itm",
                                                     progress=False)[0]["i2t"])
    # another pair set (k), other images, other texts, other weights, or no key: scored again
    other_texts = [f"u{t[1:]}" for t in texts]
    for cross, args in ((FingerprintedCross(t2i), {**kw, "k": k + 1, "images_key": "imgs-a"}),
                        (FingerprintedCross(t2i), {**kw, "images_key": "imgs-b"}),
                        (FingerprintedCross(t2i, "v2"), {**kw, "images_key": "imgs-a"}),
                        (FingerprintedCross(t2i), kw)):
        rerank_similarity(sim, cross, images, texts, **args)
        assert cross.pairs, args
    cross = FingerprintedCross(t2i)
    rerank_similarity(sim, cross, images, other_texts, images_key="imgs-a", **kw)
    assert cross.pairs
    # another first stage: as many pairs (rows and columns shuffled), but other ones, so scored again
    rng = np.random.default_rng(1)
    shuffled = sim[rng.permutation(len(sim))][:, rng.permutation(sim.shape[1])]
    cross = FingerprintedCross(t2i)
    _, n_shuffled = rerank_similarity(shuffled, cross, images, texts, combine="itm", images_key="imgs-a", **kw)
    assert n_shuffled == n_pairs and set(cross.pairs) != set(first.pairs) and len(cross.pairs) == n_pairs
    # a cross encoder without a fingerprint is never cached
    for _ in range(2):
        plain = FakeCross(t2i)
        rerank_similarity(sim, plain, images, texts, images_key="imgs-a", **kw)
        assert len(plain.pairs) == n_pairs
