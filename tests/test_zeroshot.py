"""Zero-shot classifier (template ensemble), scores through model.similarity, pessimistic metrics, templates."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlnb.data import ObjectAnnotation
from vlnb.eval import (
    CIFAR100_CLASSNAMES,
    CIFAR_TEMPLATES,
    OPENAI_IMAGENET_TEMPLATES,
    SIMPLE_TEMPLATES,
    classification_metrics,
    get_templates,
    multilabel_targets,
    primary_targets,
    zeroshot_classifier,
    zeroshot_scores,
)
from vlnb.paths import shared_data_dir


class FakeTextModel:
    """encode_texts from a lookup table (deliberately NOT normalised); similarity follows the contract."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, table):
        self.table = table
        self.calls = []

    def encode_texts(self, texts, batch_size=256, progress=False):
        self.calls.append((list(texts), batch_size))
        return torch.tensor([self.table[t] for t in texts], dtype=torch.float32)

    def similarity(self, image_emb, text_emb):
        if image_emb.ndim == 3:  # multi-query: max over queries
            return torch.einsum("nqd,md->nqm", image_emb, text_emb).amax(dim=1)
        return image_emb @ text_emb.T


def test_template_ensemble_normalises_each_prompt_then_averages():
    table = {
        "a cat.": [3.0, 0.0, 0.0], "the cat!": [0.0, 1.0, 0.0],
        "a dog.": [0.0, 0.0, 2.0], "the dog!": [0.0, 0.0, 5.0],
    }
    model = FakeTextModel(table)
    clf = zeroshot_classifier(model, ["cat", "dog"], ["a {}.", lambda c: f"the {c}!"], batch_size=7)
    assert model.calls == [(["a cat.", "the cat!", "a dog.", "the dog!"], 7)]
    s = 2 ** -0.5
    # averaging unnormalised embeddings would give (3, 1, 0)/sqrt(10) instead
    torch.testing.assert_close(clf, torch.tensor([[s, s, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="placeholder"):
        zeroshot_classifier(model, ["cat"], ["a photo"])
    with pytest.raises(ValueError, match="at least one"):
        zeroshot_classifier(model, [], ["a {}."])


def test_zeroshot_scores_single_and_multi_query():
    model = FakeTextModel({})
    clf = F.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    img = F.normalize(torch.randn(7, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    torch.testing.assert_close(zeroshot_scores(model, img, clf, batch_size=3), img @ clf.T)
    multi = F.normalize(torch.randn(7, 4, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    expected = torch.stack([(multi[:, q] @ clf.T) for q in range(4)]).amax(0)
    torch.testing.assert_close(zeroshot_scores(model, multi, clf, batch_size=2), expected)
    with pytest.raises(ValueError, match="mismatch"):
        zeroshot_scores(model, img[:, :4], clf)


def test_single_label_metrics_by_hand():
    scores = np.array(
        [
            [0.9, 0.1, 0.0],  # true 0: rank 0
            [0.5, 0.4, 0.3],  # true 1: rank 1
            [0.2, 0.2, 0.1],  # true 1: ties with class 0 -> pessimistic rank 1
            [0.1, 0.3, 0.2],  # true 0: rank 2
            [0.0, 0.0, 0.0],  # no label (-1): excluded
        ]
    )
    m = classification_metrics(scores, [0, 1, 1, 0, -1], ks=(1, 2))
    assert m["top1"] == 0.25 and m["top2"] == 0.75 and m["n"] == 4
    # class 0: 1 of 2 correct at top-1; class 1: 0 of 2 -> balanced accuracy 0.25
    assert m["mean_per_class_recall"] == 0.25
    m2 = classification_metrics(torch.tensor(scores[:4]), torch.tensor([0, 0, 0, 0]), ks=(1,))
    assert m2["top1"] == 0.5 and m2["mean_per_class_recall"] == 0.5  # only class 0 present


def test_constant_scores_are_never_correct():
    m = classification_metrics(np.ones((6, 4)), [0, 1, 2, 3, 0, 1], ks=(1, 3, 4))
    assert m["top1"] == 0.0 and m["top3"] == 0.0 and m["top4"] == 1.0


def test_mean_per_class_recall_differs_from_accuracy_when_imbalanced():
    scores = np.eye(3)[[0, 0, 0, 0, 0, 0, 0, 0, 2, 2]]  # always predicts 0 then 2
    targets = [0] * 8 + [1, 2]
    m = classification_metrics(scores, targets, ks=(1,))
    assert m["top1"] == pytest.approx(0.9)
    assert m["mean_per_class_recall"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)


def test_multilabel_targets_in_all_forms():
    scores = np.array([[0.1, 0.8, 0.3], [0.6, 0.2, 0.6], [0.5, 0.4, 0.3]])
    sets = [{0, 1}, {2}, set()]  # row 0: top-1 (class 1) is a label; row 1: label 2 ties class 0; row 2: none
    as_bool = np.zeros((3, 3), dtype=bool)
    as_bool[0, [0, 1]] = True
    as_bool[1, 2] = True
    a = classification_metrics(scores, sets, ks=(1, 2))
    b = classification_metrics(scores, as_bool, ks=(1, 2))
    c = classification_metrics(scores, [[0, 1], [2], []], ks=(1, 2))
    assert a == b == c
    assert a["top1"] == 0.5 and a["top2"] == 1.0 and a["n"] == 2
    # classes 0 and 1 are carried by row 0 (hit), class 2 by row 1 (miss)
    assert a["mean_per_class_recall"] == pytest.approx(2 / 3)


def _brute_force_topk(scores, y, k):
    hits = []
    for s, pos in zip(scores, y):
        if pos.any():
            order = np.lexsort((pos, -s))
            hits.append(np.argmax(pos[order]) < k)
    return float(np.mean(hits))


@pytest.mark.parametrize("seed", range(4))
def test_metrics_match_sort_based_reference(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(40, 7)).astype(np.float32)  # many ties
    y = rng.random((40, 7)) < 0.2
    m = classification_metrics(scores, y, ks=(1, 3))
    assert m["top1"] == pytest.approx(_brute_force_topk(scores, y, 1))
    assert m["top3"] == pytest.approx(_brute_force_topk(scores, y, 3))


def test_metric_input_errors():
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(np.array([[np.nan, 1.0]]), [0])
    with pytest.raises(ValueError, match="out of range"):
        classification_metrics(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="out of range"):
        classification_metrics(np.zeros((1, 3)), [{0, 5}])
    with pytest.raises(ValueError, match="boolean"):
        classification_metrics(np.zeros((2, 3)), np.eye(3, dtype=int)[:2])
    with pytest.raises(ValueError, match="2 rows"):
        classification_metrics(np.zeros((2, 3)), [0, 1, 2])
    with pytest.raises(ValueError, match="no row has a label"):
        classification_metrics(np.zeros((2, 3)), [-1, -1])


def test_target_builders():
    classes = ["cat", "dog", "person"]
    np.testing.assert_array_equal(
        multilabel_targets([["dog", "person"], [], ["cat"]], classes),
        [[False, True, True], [False, False, False], [True, False, False]],
    )
    with pytest.raises(KeyError, match="horse"):
        multilabel_targets([["horse"]], classes)
    objs = [
        [ObjectAnnotation("person", (0, 0, 1, 1), area=30.0), ObjectAnnotation("dog", (0, 0, 1, 1), area=20.0),
         ObjectAnnotation("dog", (0, 0, 1, 1), area=15.0)],  # dog's total 35 beats the single largest object
        {"cat": 5.0, "person": 5.0},  # equal areas: first in class order
        [],
    ]
    assert primary_targets(objs, classes).tolist() == [1, 0, -1]


def test_templates_are_the_published_lists():
    assert len(OPENAI_IMAGENET_TEMPLATES) == len(set(OPENAI_IMAGENET_TEMPLATES)) == 80
    assert OPENAI_IMAGENET_TEMPLATES[0] == "a bad photo of a {}." and OPENAI_IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."
    assert len(CIFAR_TEMPLATES) == 18 and CIFAR_TEMPLATES[-1] == "a photo of the big {}."
    assert SIMPLE_TEMPLATES == ("a photo of a {}.",) and get_templates("cifar") is CIFAR_TEMPLATES
    assert all(t.count("{}") == 1 for t in OPENAI_IMAGENET_TEMPLATES + CIFAR_TEMPLATES)
    with pytest.raises(KeyError, match="known"):
        get_templates("imagenet-a")


def test_cifar100_classnames_match_the_real_label_names():
    path = shared_data_dir() / "cifar100-test-partial" / "cifar100_test_first916.npz"
    if not path.exists():
        pytest.skip("shared CIFAR-100 partial data not available")
    names = np.load(path, allow_pickle=False)["fine_label_names"]
    assert [str(n).replace("_", " ") for n in names] == list(CIFAR100_CLASSNAMES)
