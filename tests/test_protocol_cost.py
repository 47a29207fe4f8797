"""One caption per image vs all captions (vlnb.eval.protocol_cost), on the same similarity matrix."""

from types import SimpleNamespace

import numpy as np
import torch

from vlnb.eval.protocol_cost import cost_sentence, first_caption_columns, one_caption_cost


def test_one_caption_cost_on_a_hand_made_matrix():
    # 3 images x 2 captions each; image 0's first caption is ranked last, its second caption first
    t2i = np.array([0, 0, 1, 1, 2, 2])
    sim = torch.tensor([[0.0, 0.9, 0.1, 0.1, 0.1, 0.1],
                        [0.1, 0.1, 0.9, 0.8, 0.1, 0.1],
                        [0.1, 0.1, 0.1, 0.1, 0.9, 0.8]])
    assert first_caption_columns(t2i).tolist() == [0, 2, 4]
    cost = one_caption_cost([SimpleNamespace(model="m", dataset="d", similarity=sim, text_to_image=t2i)], ks=(1,))
    r = cost.set_index("direction").loc["i2t"]
    # all captions: every image finds one of its captions at rank 1; first only: image 0 does not
    assert r["all captions"] == 100.0 and abs(r["first caption only"] - 200 / 3) < 1e-9
    assert abs(r["cost"] - 100 / 3) < 1e-9 and r["captions_per_image"] == 2.0
    assert "m on d: 100.0 → 66.7 (-33.3 points" in cost_sentence(cost, "i2t", 1)
    single = SimpleNamespace(model="m", dataset="d", similarity=sim[:, [0, 2, 4]], text_to_image=np.arange(3))
    assert one_caption_cost([single]).empty and "not measurable" in cost_sentence(one_caption_cost([single]))


def test_retrieval_intervals_bracket_the_recall_and_name_missing_rows():
    from vlnb.eval.intervals import interval_text, retrieval_intervals
    from vlnb.eval.retrieval import recall_at_k, retrieval_ranks

    rng = np.random.default_rng(0)
    n = 40
    t2i = np.repeat(np.arange(n), 5)
    sim = torch.tensor(rng.normal(size=(n, len(t2i))) + 1.5 * (np.arange(n)[:, None] == t2i[None, :]),
                       dtype=torch.float32)
    run = SimpleNamespace(model="m", dataset="d", text_to_image=t2i, image_ids=list(range(n)),
                          ranks=lambda: retrieval_ranks(sim, t2i))
    t = retrieval_intervals([run], n_boot=200)
    exact = recall_at_k(sim, t2i)
    for r in t.itertuples():
        assert abs(r.recall - exact[f"{r.direction}_R@{r.k}"]) < 1e-9 and r.ci_lo <= r.recall <= r.ci_hi
    assert interval_text(t, "m", "d", "i2t").startswith("95 % CI ")
    assert "no interval" in interval_text(t, "other", "d", "i2t")
