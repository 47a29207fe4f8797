"""The compositionality probe: grammar-checked world foils, ARO order shuffles, the metric, NegCLIP's loss."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from vlnb.data.negatives import (
    NEGATIVE_TYPES,
    ORDER_PERTURBATIONS,
    CaptionParseError,
    caption_holds,
    order_perturbations,
    parse_caption,
    perturb_order,
    pos_tags,
    world_negatives,
)
from vlnb.data.world import Scene, WorldConfig, build_world_manifest, generate, relation
from vlnb.eval.compositionality import (
    grouped_accuracy,
    order_probe,
    probe_pivot,
    say,
    score_pairs,
    win,
    world_probe,
)


def _bag(text):
    """Words with the article normalised ("an orange" / "a red" swap their articles)."""
    return ["a" if w == "an" else w for w in text.split()]


def _obj(shape, colour, size="small", centre=(10.0, 10.0)):
    return {"shape": shape, "colour": colour, "size": size, "centre": centre}


def _scene(objs, bg="grey"):
    return Scene(image=np.zeros((8, 8, 3), np.uint8), objects=objs, background=bg, captions=[], split="test", index=0)


@pytest.fixture(scope="module")
def scenes():
    return generate(WorldConfig(), "test", 150)


def test_every_world_caption_parses_and_holds(scenes):
    """The checker agrees with the generator on all the world's own (true) captions."""
    for sc in scenes:
        for c in sc.captions:
            assert caption_holds(c, sc.objects, sc.background), (c, sc.image_id)


def test_parser_semantics_on_hand_made_scenes():
    objs = [_obj("circle", "red", centre=(10, 30)), _obj("square", "blue", "large", centre=(40, 31)),
            _obj("square", "blue", centre=(40, 5))]
    assert caption_holds("a red circle and two blue squares", objs, "grey")
    assert not caption_holds("a red circle and a blue square", objs, "grey")  # exactly one: false
    assert caption_holds("a red circle to the left of a large square", objs, "grey")
    assert not caption_holds("a large square to the left of a red circle", objs, "grey")
    assert caption_holds("three shapes on a plain grey background", objs, "grey")
    assert not caption_holds("three shapes on grass", objs, "grey")
    assert parse_caption("a grass background with a red circle").background == "grass"
    with pytest.raises(CaptionParseError, match="a red dog"):
        parse_caption("a red dog")
    with pytest.raises(CaptionParseError, match="'shiny'"):
        parse_caption("a shiny circle")


def test_every_kept_negative_is_false_and_the_true_caption_holds(scenes):
    items, report = world_negatives(scenes)
    assert set(items["type"]) == set(NEGATIVE_TYPES)
    by_id = {sc.image_id: sc for sc in scenes}
    for r in items.itertuples():
        sc = by_id[r.image_id]
        assert r.negative != r.true_caption
        assert caption_holds(r.true_caption, sc.objects, sc.background)
        assert not caption_holds(r.negative, sc.objects, sc.background), (r.type, r.negative)
    # an independent check of the swaps: the foil's words are a permutation of the true caption's
    for t in ("attribute swap", "relation swap"):
        d = items[items["type"] == t]
        assert len(d) > 20
        assert all(Counter(_bag(a)) == Counter(_bag(b)) for a, b in zip(d["true_caption"], d["negative"]))
    # relation foils really reverse a relation of the scene (by box centres)
    counts = report.set_index("type")
    assert (counts["kept"] + counts["dropped_identical"] + counts["dropped_true_not_true"]
            + counts["dropped_not_false"] == counts["candidates"]).all()
    assert counts.loc["attribute swap", "dropped_identical"] > 0  # equal colours occur in the world


def test_swapping_equal_colours_or_identical_objects_is_dropped():
    same = _scene([_obj("circle", "red", centre=(10, 30)), _obj("square", "red", centre=(40, 30))])
    items, rep = world_negatives([same], ["attribute swap"])
    assert items.empty and rep.loc[0, "dropped_identical"] == 1 and rep.loc[0, "kept"] == 0
    # red circle + blue circle: the swap reads "a blue circle and a red circle" -- true, so dropped
    two_circles = _scene([_obj("circle", "red", centre=(10, 30)), _obj("circle", "blue", centre=(40, 30))])
    items, rep = world_negatives([two_circles], ["attribute swap"])
    assert items.empty and rep.loc[0, "dropped_not_false"] == 1
    # two identical red circles side by side: the relation swap is the same caption
    twins = _scene([_obj("circle", "red", centre=(10, 30)), _obj("circle", "red", centre=(40, 30))])
    assert relation(*twins.objects) == "left"
    items, rep = world_negatives([twins], ["relation swap"])
    assert items.empty and rep.loc[0, "candidates"] == 1 and rep.loc[0, "kept"] == 0
    # a real swap is kept
    ok = _scene([_obj("circle", "red", centre=(10, 30)), _obj("square", "blue", centre=(40, 30))])
    items, rep = world_negatives([ok], ["attribute swap", "relation swap"])
    assert list(items["negative"]) == ["a blue circle and a red square", "a blue square to the left of a red circle"]


def test_unknown_type_is_one_clear_error(scenes):
    with pytest.raises(ValueError, match="unknown negative type"):
        world_negatives(scenes[:2], ["colour swap"])


# ---------------------------------------------------------------------------------------------- ARO shuffles
CAPS = ["A man riding a brown horse on a sunny beach.", "Two small dogs play with a red ball in the green grass",
        "A plate of food with broccoli and rice", "a cat sleeping on a wooden bench next to a window"]


def test_order_perturbations_keep_the_word_multiset_and_differ():
    df = order_perturbations(CAPS, seed=3)
    assert list(df["type"].unique()) == list(ORDER_PERTURBATIONS) and len(df) == 4 * len(CAPS)
    for r in df.itertuples():
        assert Counter(r.perturbed.split()) == Counter(r.caption.split())
        assert (r.perturbed != r.caption) == r.changed
    assert df["changed"].mean() > 0.9
    # what stays in place: non-nouns/adjectives in the first, nouns/adjectives in the second
    for r in df.itertuples():
        a, b, tags = r.caption.split(), r.perturbed.split(), pos_tags(r.caption.split())
        if r.type == "shuffle nouns and adjectives":
            assert all(x == y for x, y, t in zip(a, b, tags) if t == "OTHER")
            assert Counter(x for x, t in zip(b, tags) if t == "ADJ") == Counter(x for x, t in zip(a, tags) if t == "ADJ")
        if r.type == "shuffle all but nouns and adjectives":
            assert all(x == y for x, y, t in zip(a, b, tags) if t != "OTHER")
        if r.type == "shuffle within trigrams":
            assert all(Counter(a[i : i + 3]) == Counter(b[i : i + 3]) for i in range(0, len(a), 3))
    # deterministic in the seed
    assert order_perturbations(CAPS, seed=3).equals(df)
    assert perturb_order("two dogs", "shuffle all but nouns and adjectives") == ("two dogs", False)


# ---------------------------------------------------------------------------------------------- the metric
_WEIGHTS: dict[str, float] = {}


class BagOfWords:
    """Scores a pair by a fixed weight per word, summed: blind to order by construction."""

    kind = None
    head = "bag of words"

    def score_pairs(self, manifest, image_ids, texts):
        return [sum(_WEIGHTS.setdefault(w, float(len(_WEIGHTS) % 7)) for w in _bag(t)) for t in texts]


class Oracle:
    """Scores 1 when the caption is true of the scene, else 0 (the probe's ground truth)."""

    kind = None
    head = "oracle"

    def score_pairs(self, manifest, image_ids, texts):
        from vlnb.data.negatives import world_scenes

        sc = {s.image_id: s for s in world_scenes(manifest)}
        return [float(caption_holds(t, sc[i].objects, sc[i].background)) for i, t in zip(image_ids, texts)]


@pytest.fixture(scope="module")
def world_test():
    df, _ = build_world_manifest(n_train=0, n_test=60, seed=0)
    return df


def test_probe_gives_the_known_answers_for_rule_scorers(world_test):
    table, report, pairs = world_probe({"bow": BagOfWords(), "oracle": Oracle()}, world_test, n_boot=200,
                                  progress=False)
    t = table.set_index(["model", "type"])
    for kind in ("attribute swap", "relation swap"):  # pure swaps: all ties -> exactly one half
        assert t.loc[("bow", kind), "accuracy"] == 0.5
        assert t.loc[("bow", kind), "n_ties"] == t.loc[("bow", kind), "n_pairs"] > 0
        assert t.loc[("bow", kind), "ci_lo"] == t.loc[("bow", kind), "ci_hi"] == 0.5
    for kind in NEGATIVE_TYPES:
        assert t.loc[("oracle", kind), "accuracy"] == 1.0
        assert t.loc[("oracle", kind), "n_images"] == report.set_index("type").loc[kind, "images"]
    assert set(pairs.columns) >= {"s_true", "s_neg", "win", "negative"}
    wide = probe_pivot(table)
    assert wide.loc[("oracle", "oracle"), "count change"].startswith("100.0 [100.0, 100.0]")  # percent, as the book
    bow = next(i for i in wide.index if i[0] == "bow")
    assert wide.loc[bow, "attribute swap"] == "50.0 [50.0, 50.0]"
    row = table.set_index(["model", "type"]).loc[("bow", "attribute swap")]
    assert say(row) == "50.0 % [50.0, 50.0], indistinguishable from chance"
    assert say(table.set_index(["model", "type"]).loc[("oracle", "count change")]).endswith("above chance")


def test_win_and_grouped_accuracy_by_hand():
    assert win([2, 1, 1, np.nan], [1, 1, 2, 0]).tolist()[:3] == [1.0, 0.5, 0.0]
    # image a: wins 1, 0 ; image b: tie -> (1 + 0 + 0.5) / 3
    r = grouped_accuracy([1, 0, 0.5], ["a", "a", "b"], n_boot=500, seed=0)
    assert r["accuracy"] == pytest.approx(0.5) and r["n_images"] == 2 and r["n_pairs"] == 3
    assert 0 <= r["ci_lo"] <= 0.5 <= r["ci_hi"] <= 1


def test_order_probe_bag_of_words_sits_at_chance(world_test):
    import pandas as pd

    m = pd.DataFrame({"image_id": ["x", "y"], "image": [b"", b""], "captions": [CAPS[:2], CAPS[2:]]})
    table, cases = order_probe({"bow": BagOfWords()}, m, n_boot=100, progress=False)
    t = table.set_index("type")
    # every option of a case holds the same words: 5-way ties everywhere, credit 1/5
    assert t.loc["ARO 5-way", "accuracy"] == pytest.approx(0.2) and t.loc["ARO 5-way", "chance"] == 0.2
    for kind in ORDER_PERTURBATIONS:
        assert t.loc[kind, "accuracy"] == 0.5
    assert len(cases) == 4 * len(CAPS)


def test_score_pairs_dual_matches_the_model(world_test):
    from vlnb.models.scratch import ScratchDualEncoder

    caps = [c for cs in world_test["captions"] for c in cs]
    m = ScratchDualEncoder.create("tiny", captions=caps, seed=0, image_size=64, patch_size=16, width=32, layers=1,
                                  heads=2, text_width=32, text_layers=1, text_heads=2, embed_dim=16).eval()
    ids = list(world_test["image_id"][:3]) * 2
    texts = [world_test["captions"][i][0] for i in range(3)] + [world_test["captions"][i][1] for i in (1, 2, 0)]
    s = score_pairs(m, world_test, ids, texts)
    from vlnb.data.images import open_rgb

    with torch.no_grad():
        img = m.encode_image(m.preprocess([open_rgb(world_test["image"][i]) for i in (0, 1, 2, 0, 1, 2)]))
        txt = m.encode_text(**m.tokenize(texts))
    assert np.allclose(s, (img * txt).sum(-1).numpy(), atol=1e-5)
    assert not math.isnan(s.sum())


# ---------------------------------------------------------------------------------------------- NegCLIP
def test_negclip_loss_with_extra_negatives_by_hand():
    from vlnb.train.loss import clip_loss

    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    neg = torch.tensor([[0.6, 0.8]])
    e = math.exp
    i2t = (-math.log(e(1) / (e(1) + e(0) + e(0.6))) - math.log(e(1) / (e(0) + e(1) + e(0.8)))) / 2
    t2i = -math.log(e(1) / (e(1) + e(0)))
    got = clip_loss(img, txt, 0.0, neg_text_emb=neg)
    assert got.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    # no (or zero) extra negatives is the plain loss; a foil identical to the caption raises the loss
    assert clip_loss(img, txt, 0.0, neg_text_emb=neg[:0]).item() == pytest.approx(clip_loss(img, txt, 0.0).item())
    assert clip_loss(img, txt, 0.0, neg_text_emb=txt[:1]).item() > clip_loss(img, txt, 0.0).item()


def test_world_foil_pairs_yield_checked_foils():
    from vlnb.data.negatives import swap_foils
    from vlnb.train.negclip import WorldFoilPairs
    from vlnb.train.trainer import _collate_pairs

    df, _ = build_world_manifest(n_train=40, n_test=0, seed=0)
    ds = WorldFoilPairs(df, lambda ims: torch.zeros(len(ims), 3, 4, 4), seed=0)
    ds.set_epoch(1)
    items = [ds[i] for i in range(len(ds))]
    with_foil = [(cap, f[0], ds.scenes[i]) for i, (_, cap, f) in enumerate(items) if f]
    assert 0 < len(with_foil) < len(ds)
    for cap, foil, sc in with_foil:
        assert foil in swap_foils(cap) and Counter(_bag(foil)) == Counter(_bag(cap))
        assert caption_holds(cap, sc.objects, sc.background) and not caption_holds(foil, sc.objects, sc.background)
    assert [ds[i][2] for i in range(len(ds))] == [f for _, _, f in items]  # reproducible within an epoch
    px, caps, foils = _collate_pairs(items[:8])
    assert px.shape == (8, 3, 4, 4) and len(caps) == 8 and foils == [f for it in items[:8] for f in it[2]]
    assert len(_collate_pairs([(torch.zeros(3, 4, 4), "a")])) == 2  # plain pairs stay pairs


def test_negclip_trains_a_step_with_foils():
    """One training epoch through train_contrastive with foils runs and records a finite loss."""
    from vlnb.models.scratch import ScratchDualEncoder
    from vlnb.train import TrainConfig, train_contrastive
    from vlnb.train.negclip import WorldFoilPairs

    df, _ = build_world_manifest(n_train=32, n_test=0, seed=0, image_size=32)
    caps = [c for cs in df["captions"] for c in cs]
    m = ScratchDualEncoder.create("tiny", captions=caps, seed=0, image_size=32, patch_size=16, width=16, layers=1,
                                  heads=2, text_width=16, text_layers=1, text_heads=2, embed_dim=8)
    import copy

    from vlnb.train.trainer import PairDataset

    cfg = TrainConfig(epochs=1, batch_size=16, warmup_steps=0, device="cpu")
    plain = train_contrastive(copy.deepcopy(m), PairDataset(df, m.preprocess, seed=0), config=cfg, progress=False)
    h = train_contrastive(m, WorldFoilPairs(df, m.preprocess, seed=0), config=cfg, progress=False)
    assert len(h.steps) == 2 and all(math.isfinite(s["loss"]) for s in h.steps)
    # same weights, same batch: the foils are extra negatives, so the first step's loss is higher
    assert h.steps[0]["loss"] > plain.steps[0]["loss"]


# ---------------------------------------------------------------------------------------------- full profile
def test_probes_run_on_every_hub_model_family(tiny_hub_models):
    """CLIP (ITC), BLIP and BLIP-2 (ITC and ITM rows), ViLT (ITM): the full profile's probe path, on tiny
    checkpoints (random weights: the values are meaningless, the plumbing is what is checked)."""
    from vlnb.models import load_model

    models = {name: load_model(path) for name, path in tiny_hub_models.items()}
    df, _ = build_world_manifest(n_train=0, n_test=6, seed=0)
    table, _, pairs = world_probe(models, df, types=["attribute swap", "object replacement"], n_boot=50,
                                  progress=False)
    heads_of = table.groupby("model")["head"].agg(lambda h: sorted(set(h))).to_dict()
    names = list(tiny_hub_models)
    assert heads_of[names[0]] == ["ITC"] and heads_of[names[3]] == ["ITM"]
    assert heads_of[names[1]] == heads_of[names[2]] == ["ITC", "ITM"]
    assert pairs["s_true"].notna().all() and pairs["s_neg"].notna().all()
    coco = df.iloc[:2].copy()  # real-language captions on two images
    coco["captions"] = [CAPS[:2], CAPS[2:]]
    order, _ = order_probe(models, coco, n_boot=50, progress=False, dataset="coco")
    assert len(order) == 6 * (1 + len(ORDER_PERTURBATIONS)) and order["accuracy"].between(0, 1).all()


def test_negclip_recipes_differ_from_their_control_only_by_the_foils():
    from dataclasses import asdict

    from vlnb.zoo import RECIPES

    neg, ctl, base = RECIPES["negclip-world"], RECIPES["scratch-world-ft"], RECIPES["scratch-world"]
    assert neg.negatives == "world-swaps" and not ctl.negatives
    other = ("name", "negatives", "description", "cost")  # cost: the measured seconds that order side-by-side training
    assert {k: v for k, v in asdict(neg).items() if k not in other} == \
        {k: v for k, v in asdict(ctl).items() if k not in other}
    assert neg.init_from == ctl.init_from == "scratch-world" and neg.data_kwargs == base.data_kwargs
    assert neg.key()["init_from"] == {"name": "scratch-world", **base.key()}  # a changed parent retrains both
    assert "negatives" not in base.key() and "init_from" not in base.key()  # older recipes keep their keys


def test_published_order_numbers_join_on_the_checkpoint():
    from types import SimpleNamespace

    import pandas as pd

    from vlnb.eval.compositionality import PUBLISHED_ORDER, with_published_order

    assert PUBLISHED_ORDER["accuracy"].between(0, 1).all() and PUBLISHED_ORDER["source"].str.len().gt(0).all()
    t = pd.DataFrame({"model": ["CLIP", "CLIP", "mine"], "head": ["ITC"] * 3, "dataset": ["coco"] * 3,
                      "type": ["ARO 5-way", "shuffle trigrams", "ARO 5-way"]})
    out = with_published_order(t, {"CLIP": SimpleNamespace(name="openai/clip-vit-base-patch32"),
                                   "mine": SimpleNamespace(name="/tmp/local-copy")})
    assert out["published"].tolist()[0] == 0.46 and out["published"].isna().tolist()[1:] == [True, True]


def test_probe_and_cost_take_the_fusion_models(world_test):
    """The book's own fusion models (ViLT-like cross encoder; BLIP-like and Q-Former ITC + ITM) go through the
    probe and the cost table by the shared interface alone (tiny, untrained: the plumbing is checked)."""
    from PIL import Image

    from vlnb.eval.cost import measure_cost
    from vlnb.models.fusion import FusionConfig, create_fusion, qformer_config
    from vlnb.models.scratch import ScratchDualEncoder

    caps = [c for cs in world_test["captions"] for c in cs]
    tiny = {"width": 16, "layers": 1, "text_layers": 1, "heads": 2, "embed_dim": 8, "image_size": 16,
            "patch_size": 8, "context_length": 24}
    dual = ScratchDualEncoder.create("tiny", captions=caps, seed=0, image_size=16, patch_size=8, width=16, layers=1,
                                     heads=2, embed_dim=8, text_width=16, text_layers=1, text_heads=2,
                                     context_length=24)
    models = {"vilt": create_fusion(FusionConfig(arch="vilt", **tiny), tokenizer=dual.tokenizer, seed=0).eval(),
              "blip": create_fusion(FusionConfig(arch="blip", **tiny), tokenizer=dual.tokenizer, seed=0).eval(),
              "qformer": create_fusion(qformer_config(dual.config, width=16, layers=1, heads=2, embed_dim=8,
                                                      n_queries=2), tokenizer=dual.tokenizer, seed=0,
                                       backbone=dual.visual).eval()}
    table, _, pairs = world_probe(models, world_test.iloc[:8], types=["attribute swap", "count change"], n_boot=50,
                                  progress=False)
    assert sorted(set(zip(table["model"], table["head"]))) == [
        ("blip", "ITC"), ("blip", "ITM"), ("qformer", "ITC"), ("qformer", "ITM"), ("vilt", "ITM")]
    assert pairs["s_true"].notna().all()
    imgs = [Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(3)]
    costs, queries = measure_cost(models, imgs, caps[:6], gallery_sizes=(10, 200), n_images=4, n_texts=4,
                                  n_pairs=10, rerank_k=4, batch_size=4, repeats=1, progress=False)
    assert dict(zip(costs["model"], costs["kind"])) == {"vilt": "ITM", "blip": "ITC+ITM", "qformer": "ITC+ITM"}
    q = queries.set_index(["model", "protocol", "n_gallery"])["basis"]
    assert q[("vilt", "ITM on every image", 10)] == "measured"
    assert q[("vilt", "ITM on every image", 200)].startswith("extrapolated")


def test_retrieval_diff_page_one_row_per_model_in_percent_and_points():
    import pandas as pd

    from vlnb.eval.compositionality import retrieval_diff_page

    t = pd.DataFrame({"model": ["base", "base", "neg", "neg"], "direction": ["i2t", "t2i"] * 2, "k": [1, 1, 1, 1],
                      "recall": [29.8, 13.0, 26.2, 11.3], "ci_lo": 0.0, "ci_hi": 0.0, "diff": [0, 0, -3.6, -1.6],
                      "diff_lo": [0, 0, -7.8, -3.0], "diff_hi": [0, 0, 0.4, -0.2]})
    page = retrieval_diff_page(t)
    assert list(page.index) == ["base", "neg"] and list(page.columns) == ["I→T R@1", "T→I R@1"]
    assert page.loc["base", "I→T R@1"] == "29.8"  # the baseline: its recall alone
    assert page.loc["neg", "T→I R@1"] == "11.3 (-1.6 [-3.0, -0.2])"


def test_published_order_page_is_in_percent():
    from vlnb.eval.compositionality import PUBLISHED_ORDER, published_order_page

    page = published_order_page()
    assert "accuracy" not in page.columns and (page["accuracy (%)"] == (100 * PUBLISHED_ORDER["accuracy"]).round(1)).all()
    assert page.loc[page["hub_id"] == "openai/clip-vit-base-patch32", "accuracy (%)"].tolist() == [46.0, 59.0]
