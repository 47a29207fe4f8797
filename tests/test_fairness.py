"""vlnb.fairness: caption-derived gender, binomial intervals, group tables / gaps / contrasts, the rarity
experiment, the chapter's parameters, and the chapter end to end (slow)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from vlnb import fairness as F
from vlnb.fairness.metrics import _pessimistic_top1
from vlnb.paths import REPO_ROOT, shared_data_dir

torch.set_num_threads(1)
NB = REPO_ROOT / "notebooks" / "07_fairness.ipynb"
VAL_CAPTIONS = shared_data_dir() / "coco-captions-val2017" / "captions_val2017.json"


# ---------------------------------------------------------------------------------------------- gender
@pytest.mark.parametrize("caption, expected", [
    ("A man riding a wave on a surfboard.", (True, False)),
    ("A woman holding an umbrella", (False, True)),
    ("Two WOMEN talking on a bench", (False, True)),
    ("three men playing frisbee", (True, False)),
    ("boys playing soccer", (True, False)),
    ("a group of girls", (False, True)),
    ("A woman's handbag on a table", (False, True)),   # possessive
    ("the man's hat", (True, False)),
    ("He is skiing down the hill", (True, False)),      # pronouns count
    ("a dog and her puppies", (False, True)),
    ("A man and a woman sitting at a table", (True, True)),
    ("A snowman in the yard", (False, False)),          # word boundaries: no "man" inside other words
    ("a human figure next to the Manhattan skyline", (False, False)),
    ("a man-made lake with ducks", (False, False)),     # hyphenated compounds stay whole
    ("womanly shapes on a mannequin", (False, False)),
    ("People standing on a platform", (False, False)),
    ("a queen size bed", (False, False)),               # deliberately not in the lists
])
def test_caption_mentions_whole_words(caption, expected):
    from vlnb.fairness.gender import caption_mentions

    assert caption_mentions(caption) == expected


def test_woman_is_not_man_and_lists_are_disjoint():
    assert "woman" not in F.MAN_WORDS and "man" not in F.WOMAN_WORDS
    assert not (F.MAN_WORDS & F.WOMAN_WORDS)
    for plural in ("men", "boys", "guys", "women", "girls", "ladies"):
        assert plural in F.MAN_WORDS | F.WOMAN_WORDS


@pytest.mark.parametrize("captions, label, reason", [
    (["A man surfing", "a person on a surfboard", "someone riding a wave"], "man", "man"),
    (["A woman cooking", "a lady in a kitchen", "a person at a stove"], "woman", "woman"),
    (["A man surfing", "A woman surfing"], "unlabelled", "mixed"),      # annotators disagree
    (["A man and a woman on a bench"], "unlabelled", "mixed"),          # both in one caption
    (["a dog on a couch", "people at a bus stop"], "unlabelled", "neutral"),
    ([], "unlabelled", "neutral"),
])
def test_label_captions(captions, label, reason):
    got = F.label_captions(captions)
    assert got[:2] == (label, reason)


def test_min_captions_and_bad_input():
    caps = ["A man surfing", "a surfer", "someone on a wave"]
    assert F.label_captions(caps, min_captions=1)[:2] == ("man", "man")
    assert F.label_captions(caps, min_captions=2)[:2] == ("unlabelled", "neutral")
    with pytest.raises(TypeError, match="list of an image's captions"):
        F.label_captions("A man surfing")
    with pytest.raises(ValueError, match="min_captions"):
        F.label_captions(caps, min_captions=0)
    with pytest.raises(ValueError, match="image_id and captions"):
        F.gender_labels(pd.DataFrame({"image_id": [1]}))


def test_gender_labels_and_counts():
    data = {1: ["A man surfing"], 2: ["a woman reading", "a girl with a book"], 3: ["a man and his wife"],
            4: ["a red bus"], 5: ["two men", "three guys"]}
    lab = F.gender_labels(data)
    assert list(lab["gender"]) == ["man", "woman", "unlabelled", "unlabelled", "man"]
    assert list(lab["reason"]) == ["man", "woman", "mixed", "neutral", "man"]
    assert list(lab["n_woman_captions"]) == [0, 2, 1, 0, 0]
    counts = F.gender_counts(lab, "toy")
    assert list(counts["reason"]) == ["man", "woman", "mixed", "neutral"]
    assert list(counts["images"]) == [2, 1, 1, 1] and counts["share"].sum() == pytest.approx(1.0)
    assert (counts["source"] == "toy").all()
    empty = F.gender_counts(F.gender_labels({1: ["a man"]}))
    assert int(empty.set_index("reason").loc["woman", "images"]) == 0  # every label listed, even at 0


def test_gender_examples_show_the_deciding_words():
    data = pd.DataFrame({"image_id": [1, 2, 3, 4],
                         "captions": [["a dog", "A man surfing"], ["a woman reading", "a girl"],
                                      ["A man on a bench", "A woman on a bench"], ["a red bus"]]})
    ex = F.gender_examples(data).set_index(["reason", "caption"])
    assert ex.loc[("man", "A man surfing"), "man_words"] == "man"
    assert ex.loc[("woman", "a woman reading"), "woman_words"] == "woman"
    assert {c for r, c in ex.index if r == "mixed"} == {"A man on a bench", "A woman on a bench"}
    assert ex.loc[("neutral", "a red bus"), "man_words"] == ""


def test_read_coco_captions(tmp_path):
    f = tmp_path / "captions_x.json"
    f.write_text(json.dumps({"images": [{"id": 1}, {"id": 2}, {"id": 3}],
                             "annotations": [{"image_id": 1, "caption": "A man."}, {"image_id": 1, "caption": "A guy "},
                                             {"image_id": 2, "caption": "A woman."}]}))
    df = F.read_coco_captions(f)
    assert list(df["image_id"]) == [1, 2, 3] and df["captions"].iloc[0] == ["A man.", "A guy"]
    assert df["captions"].iloc[2] == []  # an image without captions is kept (and will be "neutral")
    (tmp_path / "bad.json").write_text(json.dumps({"annotations": [{"id": 1}]}))
    with pytest.raises(ValueError, match="not a COCO captions file"):
        F.read_coco_captions(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        F.read_coco_captions(tmp_path / "missing.json")


@pytest.mark.skipif(not VAL_CAPTIONS.is_file(), reason="shared val2017 captions not available")
def test_val2017_counts_show_the_known_imbalance():
    lab = F.gender_labels(F.read_coco_captions(VAL_CAPTIONS))
    c = F.gender_counts(lab).set_index("reason")["images"]
    assert c.sum() == 5000
    # Zhao et al. 2017: COCO describes about twice as many images as showing men as women
    assert 1.5 < c["man"] / c["woman"] < 4 and c["neutral"] > c["man"] > c["woman"] > c["mixed"] > 0


# ---------------------------------------------------------------------------------------------- intervals
def test_binomial_intervals_known_values():
    # reference values: Wilson (1927) score interval / Clopper-Pearson exact interval at 95%
    assert F.wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert F.wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert F.wilson_interval(1, 10) == pytest.approx((0.01788, 0.40415), abs=1e-5)
    assert F.clopper_pearson_interval(0, 10) == pytest.approx((0.0, 0.30850), abs=1e-5)
    assert F.clopper_pearson_interval(5, 10) == pytest.approx((0.18709, 0.81291), abs=1e-5)
    assert F.clopper_pearson_interval(1, 10) == pytest.approx((0.00253, 0.44502), abs=1e-5)
    assert F.clopper_pearson_interval(10, 10) == pytest.approx((0.69150, 1.0), abs=1e-5)


@pytest.mark.parametrize("n", [10, 40, 200])
def test_interval_coverage_is_exact_for_a_known_binomial(n):
    """Exact coverage (sum of binomial probabilities of the k whose interval holds p): Clopper-Pearson never
    below the level; Wilson close to it on average over p."""
    from scipy import stats

    k = np.arange(n + 1)
    cp, wi = F.clopper_pearson_interval(k, np.full(n + 1, n)), F.wilson_interval(k, np.full(n + 1, n))
    cov_w = []
    for p in np.linspace(0.02, 0.98, 49):
        pmf = stats.binom.pmf(k, n, p)
        assert pmf[(cp[0] <= p) & (p <= cp[1])].sum() >= 0.95 - 1e-9
        cov_w.append(pmf[(wi[0] <= p) & (p <= wi[1])].sum())
    assert 0.93 < np.mean(cov_w) < 0.97


def test_intervals_bad_input():
    assert all(np.isnan(F.wilson_interval(0, 0)))
    with pytest.raises(ValueError, match="0 <= k <= n"):
        F.wilson_interval(11, 10)
    with pytest.raises(ValueError, match="level"):
        F.clopper_pearson_interval(1, 10, level=95)
    with pytest.raises(ValueError, match="unknown binomial interval"):
        F.binomial_interval(1, 10, method="wald")


# ---------------------------------------------------------------------------------------------- group metrics
def synthetic_outcomes(acc: dict[str, float], n: int, seed: int, n_classes: int = 10):
    """Zero-shot scores of a synthetic classifier whose true-class margin differs per group: per image a row
    of noisy class scores, the true class raised so that the group's expected top-1 is ``acc[group]``."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(list(acc), n)
    y = rng.integers(0, n_classes, len(groups))
    scores = rng.normal(0, 1, (len(groups), n_classes))
    good = rng.random(len(groups)) < np.array([acc[g] for g in groups])
    scores[np.arange(len(groups)), y] = np.where(good, scores.max(1) + 0.5, scores.min(1) - 0.5)
    targets = np.zeros_like(scores, dtype=bool)
    targets[np.arange(len(groups)), y] = True
    hits = _pessimistic_top1(scores, targets)
    return F.Outcomes.from_values({"zero-shot top-1": hits}), groups


def test_planted_gap_detected_control_not():
    planted, g = synthetic_outcomes({"a": 0.85, "b": 0.6}, 300, seed=1)
    gap = F.gap_table(planted, g, n_boot=500, n_perm=500).iloc[0]
    assert gap["gap_detected"] and gap["p_value"] < 0.01
    assert gap["best_group"] == "a" and gap["worst_group"] == "b"
    assert gap["gap_lo"] < 0.25 < gap["gap_hi"]                     # the planted 0.25 lies in the interval
    assert gap["ratio_lo"] < 0.6 / 0.85 < gap["ratio_hi"]
    control, g = synthetic_outcomes({"a": 0.75, "b": 0.75}, 300, seed=1)
    assert not F.gap_table(control, g, n_boot=500, n_perm=500).iloc[0]["gap_detected"]


def test_detection_rates_over_many_synthetic_runs():
    """Over 20 runs each: a planted gap is found nearly always, the control only at about the 5% level."""
    kw = {"n_boot": 50, "n_perm": 300}
    found = [F.gap_table(*synthetic_outcomes({"a": .8, "b": .65, "c": .8}, 250, seed=s), **kw).iloc[0]["gap_detected"]
             for s in range(20)]
    false = [F.gap_table(*synthetic_outcomes({"a": .7, "b": .7, "c": .7}, 250, seed=s), **kw).iloc[0]["gap_detected"]
             for s in range(20)]
    assert sum(found) >= 18 and sum(false) <= 3


def test_group_table_values_and_intervals_match_direct_computation():
    o, g = synthetic_outcomes({"a": 0.8, "b": 0.5}, 60, seed=3)
    t = F.group_table(o, g, "toy", level=0.9).set_index("group")
    hits = o.num["zero-shot top-1"]
    for name in ("a", "b"):
        k, n = hits[g == name].sum(), (g == name).sum()
        assert t.loc[name, "value"] == pytest.approx(k / n)
        assert (t.loc[name, "ci_lo"], t.loc[name, "ci_hi"]) == pytest.approx(F.wilson_interval(k, n, 0.9))
        assert t.loc[name, "ci_method"] == "wilson" and 0 <= t.loc[name, "value"] <= 1
    assert t["rank"].tolist() == [1, 2] and (t["grouping"] == "toy").all()
    # a gap computed by fairlearn's MetricFrame equals the plain difference of the group values
    row = F.gap_table(o, g, n_boot=50, n_perm=50).iloc[0]
    assert row["gap"] == pytest.approx(t["value"].max() - t["value"].min())
    assert row["ratio"] == pytest.approx(t["value"].min() / t["value"].max())


def test_clustered_metric_uses_bootstrap_over_images():
    rng = np.random.default_rng(0)
    n = 80
    g = np.array(["x", "y"] * (n // 2))
    o = F.Outcomes("m", "d", list(range(n)))
    o.add("t2i R@5", rng.integers(0, 6, n), np.full(n, 5))  # 5 captions per image
    o.add("mean similarity", rng.normal(0.3, 0.1, n))
    t = F.group_table(o, g, n_boot=300)
    assert (t["ci_method"] == "bootstrap (images, by group)").all()
    assert ((t["ci_lo"] <= t["value"]) & (t["value"] <= t["ci_hi"])).all()
    assert set(t[t["metric"] == "t2i R@5"]["queries"]) == {n // 2 * 5}


def test_min_size_flags_and_excluded_groups_are_not_ranked():
    big, g_big = synthetic_outcomes({"a": 0.8, "b": 0.7}, 50, seed=0)
    hits = np.concatenate([big.num["zero-shot top-1"], np.zeros(5), np.ones(30)])
    g = np.concatenate([g_big, ["tiny"] * 5, ["unlabelled"] * 30])
    o = F.Outcomes.from_values({"zero-shot top-1": hits})
    t = F.group_table(o, g, min_size=10, exclude=["unlabelled"]).set_index("group")
    assert t.loc["tiny", "flagged"] and not t.loc["tiny", "ranked"] and pd.isna(t.loc["tiny", "rank"])
    assert not t.loc["unlabelled", "flagged"] and not t.loc["unlabelled", "ranked"]
    assert sorted(t["rank"].dropna().tolist()) == [1, 2]
    gap = F.gap_table(o, g, min_size=10, exclude=["unlabelled"], n_boot=50, n_perm=50).iloc[0]
    assert gap["n_groups"] == 2 and gap["flagged_groups"] == "tiny"
    assert gap["worst_group"] != "tiny" and gap["best_group"] != "unlabelled"  # 0.0 and 1.0 groups take no part
    none_big = F.gap_table(o, g, min_size=60, exclude=["unlabelled"], n_boot=50, n_perm=50).iloc[0]
    assert none_big["n_groups"] == 0 and np.isnan(none_big["gap"]) and not none_big["gap_detected"]
    only_one = F.gap_table(o, g, min_size=10, exclude=["unlabelled", "b"], n_boot=50, n_perm=50).iloc[0]
    assert only_one["n_groups"] == 1 and np.isnan(only_one["gap"])


def test_group_contrast_sign_and_groups_by_image_id():
    o, g = synthetic_outcomes({"common": 0.8, "rare": 0.4}, 200, seed=2)
    ids = [f"img{i}" for i in range(len(g))]
    o.image_ids = ids
    mapping = pd.Series(g, index=ids)[::-1]  # a mapping aligns by image id, whatever its order
    c = F.group_contrast(o, mapping, "rare", n_boot=300, n_perm=300).iloc[0]
    assert c["gap"] > 0.25 and c["gap_lo"] > 0 and c["p_value"] < 0.01
    assert c["target_images"] == 200 and c["rest_images"] == 200
    with pytest.raises(ValueError, match="no image"):
        F.group_contrast(o, mapping, "absent")
    with pytest.raises(ValueError, match="group labels for"):
        F.group_table(o, g[:10])


# ---------------------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def small_world():
    from vlnb.data.world import build_world_manifest

    df, _ = build_world_manifest(n_train=64, n_test=48, image_size=32, seed=0, rare_attribute=("colour", "purple"),
                                 rare_fraction=0.2)
    te = df[df["split"] == "test"].reset_index(drop=True)
    te.attrs = dict(df.attrs)
    return df, te


def test_evaluate_outcomes_agrees_with_the_eval_module(small_world, tmp_path):
    from vlnb.eval.compare import captions_table
    from vlnb.eval.features import image_features, text_features
    from vlnb.eval.retrieval import recall_at_k
    from vlnb.eval.zeroshot import classification_metrics, zeroshot_classifier, zeroshot_scores
    from vlnb.models.scratch import ScratchDualEncoder

    df, te = small_world
    model = ScratchDualEncoder.create("tiny", captions=[c for cs in df["captions"] for c in cs], seed=0,
                                      image_size=32, width=32, layers=1, text_width=32, text_layers=1, embed_dim=16).eval()
    tasks = F.zeroshot_tasks("world", te)
    o = F.evaluate_outcomes(model, te, "world", zeroshot=tasks, ks=(1, 5), cache_dir=tmp_path, progress=False)
    assert set(o.metrics) == {"zero-shot shape top-1", "zero-shot colour top-1", "i2t R@1", "i2t R@5", "t2i R@1",
                              "t2i R@5", "mean similarity"}
    feats = image_features(model, te, cache_dir=tmp_path, progress=False)
    texts, owner = captions_table(te, feats.image_ids)
    sim = model.similarity(feats.embeddings, text_features(model, texts, cache_dir=tmp_path, progress=False))
    ref = recall_at_k(sim, owner, (1, 5))
    for key in ("i2t R@1", "i2t R@5", "t2i R@1", "t2i R@5"):
        assert 100 * o.value(key) == pytest.approx(ref[key.replace(" ", "_")])
    task, variant = tasks["zero-shot colour"]
    scores = zeroshot_scores(model, feats.embeddings, zeroshot_classifier(model, task.class_names, task.templates))
    assert o.value("zero-shot colour top-1") == pytest.approx(classification_metrics(scores, task.targets[variant], (1,))["top1"])
    assert -1 <= o.value("mean similarity") <= 1
    # the per-group analysis runs on world groups
    g = F.world_groups(te)
    assert list(g.columns) == ["colour", "shape", "size", "background", "rare group"]
    t = F.group_table(o, g["colour"], "colour", min_size=3)
    assert t[t["metric"] != "mean similarity"]["value"].between(0, 1).all() and set(t["group"]) <= set(te["primary_colour"])


def test_coco_groups_on_coco_mini():
    from vlnb.data import build_manifest

    df, _ = build_manifest("coco", split="val2017")
    g = F.coco_groups(df)
    assert list(g.columns) == ["category", "supercategory", "gender"] and len(g) == len(df)
    person = g[g["category"] == "person"]
    assert len(person) and (person["supercategory"] == "person").all()
    assert set(g["gender"]) <= set(F.GENDER_LABELS)
    assert g.loc[df["image_id"].iloc[0], "gender"] == F.gender_labels(df.iloc[:1])["gender"].iloc[0]
    bare = df.copy()
    bare.attrs = {}
    with pytest.raises(ValueError, match="instances"):
        F.coco_supercategories(bare)


def test_rarity_experiment_smoke():
    r = F.rarity_experiment(fractions=[1.0, 0.1], seeds=[0], n_train=128, n_test=64, train={"epochs": 1, "warmup_steps": 0},
                            n_boot=50, n_perm=50, progress=False)
    tr = r.training.set_index("fraction")
    assert tr.loc[0.1, "train_with_rare"] < tr.loc[1.0, "train_with_rare"]
    assert tr.loc[0.1, "test_rare_pct"] == tr.loc[1.0, "test_rare_pct"]  # the test split is untouched
    assert set(r.contrasts["target"]) == {"purple"} and set(r.contrasts["fraction"]) == {1.0, 0.1}
    # the book's unit: accuracies in %, computed from the same per-image outcomes as the proportions
    acc = r.groups[r.groups["metric"] != "mean similarity"]
    assert (acc["unit"] == "%").all() and acc["value"].between(0, 100).all()
    zs = r.contrasts[r.contrasts["metric"] == "zero-shot colour top-1"].set_index("fraction")
    o = r.outcomes[0.1, 0]
    assert zs.loc[0.1, "target_value"] - zs.loc[0.1, "rest_value"] == pytest.approx(-zs.loc[0.1, "gap"])
    assert 0 <= zs.loc[0.1, "rest_value"] <= 100 and o.value("zero-shot colour top-1") <= 1
    assert tr.loc[0.1, "train_rare_pct"] == pytest.approx(100 * tr.loc[0.1, "train_with_rare"] / tr.loc[0.1, "train_images"])
    s = r.summary("zero-shot colour top-1")
    assert list(s["fraction"]) == [1.0, 0.1] and (s["seeds"] == 1).all() and s["gap_ci_lo"].isna().all()
    h = r.headline("zero-shot colour top-1")
    assert h["rare_n_seeds"] == "1" and h["rare_detected_control"].endswith("of 1")
    assert h["rare_value_rarest"].endswith(" %") and h["rare_gap_rarest"].endswith(" points")
    assert h["rare_share_rarest"] == f"{tr.loc[0.1, 'train_rare_pct']:.1f} %"
    with pytest.raises(ValueError, match="colour or a shape"):
        F.rarity_experiment(rare=("background", "grass"))
    with pytest.raises(ValueError, match="fractions"):
        F.rarity_experiment(fractions=[0.0])


# ---------------------------------------------------------------------------------------------- params
def test_params_registered_and_validated():
    from vlnb.config import ParameterError, resolve

    cfg = resolve("07_fairness")
    # the fusion models with an ITC head beside the dual encoders; the ViLT-like cross encoder is not evaluated
    assert cfg.datasets == {"scratch-world": ["world"], "towers-coco": ["coco-mini"], "blip-world": ["world"],
                            "qformer-world": ["world"]}
    from vlnb import zoo

    assert set(zoo.PROFILE_RECIPES["offline"]) - set(cfg.datasets) == {"vilt-world"}
    assert zoo.is_cross_recipe("vilt-world") and not any(zoo.is_cross_recipe(m) for m in cfg.datasets)
    # with the default n_perm, Holm over the offline family of tests can reach p < 0.05 (about 20 tests per
    # world model, 12 on coco-mini): the smallest permutation p-value times the number of tests
    assert (3 * 21 + 12) / (cfg.n_perm + 1) < 1 - cfg.level
    assert cfg.rare_fractions[0] == 1.0  # the control comes first
    full = resolve("07_fairness", profile="full")
    assert full.datasets == ["coco"] and full.min_group_size > cfg.min_group_size
    with pytest.raises(ParameterError, match="rare_value"):
        resolve("07_fairness", rare_value="teal")
    with pytest.raises(ParameterError, match="rare_fractions"):
        resolve("07_fairness", rare_fractions=[1.0, 0.0])
    with pytest.raises(ParameterError, match="min_size|min_group_size"):
        resolve("07_fairness", min_group_size=0)


# ---------------------------------------------------------------------------------------------- chapter
#: The full-profile test's small rarity experiment and bootstrap (the offline test reads the book's run).
SMALL = {"rare_fractions": [1.0, 0.05], "rare_seeds": [0], "rare_n_train": 256, "rare_n_test": 96, "rare_epochs": 3,
         "n_boot": 100, "n_perm": 100, "max_images": 60, "min_group_size": 5}


@pytest.mark.slow
def test_chapter_offline_small(offline_book):
    """Chapter 7 as the session's offline book ran it (tests/conftest.py::offline_book), on the offline defaults."""
    stem = NB.stem
    cfg = offline_book.config(stem)
    gender = offline_book.results(stem, "gender_counts")
    assert gender.groupby("source")["share"].sum().round(6).eq(1).all() and len(gender["source"].unique()) == 2
    groups = offline_book.results(stem, "groups")
    assert set(groups["model"]) == set(cfg.datasets) and {"scratch-world", "towers-coco"} <= set(cfg.datasets)
    prop = groups[groups["metric"] != "mean similarity"]
    # proportions (with their intervals) within [0, 1], or [0, 100] in a row whose unit is "%" (issue 15)
    top = (prop["unit"] == "%").map({True: 100.0, False: 1.0}) if "unit" in prop else 1.0
    for c in ("value", "ci_lo", "ci_hi"):
        assert ((prop[c] >= 0) & (prop[c] <= top)).all(), prop[~((prop[c] >= 0) & (prop[c] <= top))]
    assert {"colour", "shape", "background", "supercategory", "gender"} <= set(groups["grouping"])
    gaps = offline_book.results(stem, "gaps")
    assert gaps["gap"].dropna().ge(0).all()
    # the controlled rarity experiment: every fraction, trained once per seed
    con = offline_book.results(stem, "rarity_contrasts")
    assert set(con["fraction"]) == set(cfg.rare_fractions) and set(con["seed"]) == set(cfg.rare_seeds)
    for f in ("rarity_gap", *(f"groups_{m}" for m in cfg.datasets)):
        assert offline_book.figure(stem, f).is_file(), f


@pytest.mark.slow
def test_chapter_full_profile_with_tiny_checkpoints(tmp_path, monkeypatch, tiny_hub_models):
    from vlnb.runs import run_notebook

    monkeypatch.setenv("VLNB_CACHE", str(tmp_path / "cache"))
    models = tiny_hub_models
    params = {**SMALL, "models": models, "datasets": ["coco"], "max_images": 30, "device": "cpu", "batch_size": 8,
              "coco_root": str(shared_data_dir() / "coco-mini"), "coco_karpathy_split": "",  # "": val2017
              "gender_caption_files": [str(shared_data_dir() / "coco-mini" / "annotations" / "captions_val2017.json")],
              "templates": "simple"}
    run_notebook(NB, params, profile="full", out_dir=tmp_path / "run", progress=False)
    groups = pd.read_csv(tmp_path / "run" / "results" / "groups.csv")
    assert set(groups["model"]) == {"CLIP ViT-B/32", "BLIP ITM (COCO)", "BLIP-2 ITM (ViT-g, COCO)"}  # no cross encoder
    assert set(groups["dataset"]) == {"coco"} and {"supercategory", "gender"} == set(groups["grouping"])
    gender = pd.read_csv(tmp_path / "run" / "results" / "gender_counts.csv")
    assert set(gender["source"]) == {"captions_val2017 (all images)"}


def test_holm_adjustment_controls_the_family_of_gap_tests():
    """Holm's step-down p-values (checked by hand) and their use for gap_detected over the whole gaps table."""
    import numpy as np
    import pandas as pd

    from vlnb.fairness.analysis import adjust_gap_tests
    from vlnb.fairness.stats import holm_adjust

    adj = holm_adjust([0.01, 0.04, np.nan, 0.03, 0.5])
    assert np.allclose(adj[[0, 1, 3, 4]], [0.04, 0.09, 0.09, 0.5]) and np.isnan(adj[2])
    assert np.isnan(holm_adjust([np.nan])).all()
    gaps = pd.DataFrame({"p_value": [0.01, 0.03, 0.04, np.nan], "gap_detected": [True, True, True, False]})
    out = adjust_gap_tests(gaps, level=0.95)
    # unadjusted, three tests pass p < 0.05; Holm over the family of three keeps only the first
    assert out["gap_detected"].tolist() == [True, False, False, False]
    assert np.allclose(out["p_holm"][:3], [0.03, 0.06, 0.06]) and out["p_value"].tolist()[:3] == [0.01, 0.03, 0.04]


def test_rarity_shape_sentence_says_whether_a_reversal_is_within_seed_noise():
    import pandas as pd

    from vlnb.fairness.controlled import rarity_shape_sentence

    s = pd.DataFrame({"fraction": [1.0, 0.3, 0.1], "seeds": [2, 2, 2], "gap_mean": [1.0, -2.0, 30.0],
                      "gap_min": [-2.0, -5.0, 20.0], "gap_max": [4.0, 1.0, 40.0]})  # percentage points
    text = rarity_shape_sentence(s)
    assert "f = 0.3: -2.0 (2 seeds, -5.0 to +1.0)" in text and "ranges overlap" in text
    assert "(percentage points)" in text
    s.loc[1, ["gap_min", "gap_max"]] = [-20.0, -10.0]
    assert "do not overlap" in rarity_shape_sentence(s)
    s.loc[1, ["gap_mean", "gap_min", "gap_max"]] = [10.0, 5.0, 15.0]
    assert "grows at every step" in rarity_shape_sentence(s)
    s.loc[0, ["gap_mean", "gap_min", "gap_max"]] = [-0.04, -0.3, 0.2]
    assert rarity_shape_sentence(s).startswith("f = 1: +0.0 (2 seeds, -0.3 to +0.2)")  # never "-0.0"
    one = pd.DataFrame({"fraction": [1.0, 0.1], "seeds": [1, 1], "gap_mean": [25.2, 24.6], "gap_min": [25.2, 24.6],
                        "gap_max": [25.2, 24.6]})
    assert rarity_shape_sentence(one).endswith("but with one seed there is no seed range to tell the two fractions apart")


def test_gaps_of_a_classifier_at_chance_are_flagged_and_not_the_headline():
    import numpy as np
    import pandas as pd

    from vlnb.fairness.analysis import flag_at_chance, gap_headline
    from vlnb.fairness.metrics import Outcomes

    n = 40
    good = Outcomes("good", "w", list(range(n)), num={"zero-shot shape top-1": np.r_[np.ones(30), np.zeros(10)]},
                    den={"zero-shot shape top-1": np.ones(n)})
    bad = Outcomes("bad", "w", list(range(n)), num={"zero-shot shape top-1": np.r_[np.ones(6), np.zeros(34)]},
                   den={"zero-shot shape top-1": np.ones(n)})
    base = {"dataset": "w", "grouping": "colour", "metric": "zero-shot shape top-1", "n_groups": 3, "best_group": "a",
            "best": 0.9, "worst_group": "b", "worst": 0.5, "gap_lo": 0.1, "gap_hi": 0.5, "p_value": 0.01,
            "p_holm": 0.02, "gap_detected": True}
    gaps = pd.DataFrame([{**base, "model": "good", "gap": 0.2}, {**base, "model": "bad", "gap": 0.4}])
    chance = {("good", "w"): {"zero-shot shape top-1": 0.125}, ("bad", "w"): {"zero-shot shape top-1": 0.125}}
    out = flag_at_chance(gaps, {("good", "w"): good, ("bad", "w"): bad}, chance).set_index("model")
    assert out.loc["good", "overall"] == 0.75 and bool(out.loc["good", "informative"])
    assert out.loc["bad", "overall"] == 0.15 and not bool(out.loc["bad", "informative"])  # 0.15 < 2 x 0.125
    h = gap_headline(out.reset_index())
    assert h["top_gap"].startswith("0.20") and "good" in h["top_gap"] and h["n_gap_at_chance"] == "1"


# ---------------------------------------------------------------------------------------------- units (issue 15)
def test_in_percent_scales_values_and_gaps_not_ratios_p_values_or_similarity():
    from vlnb.fairness.metrics import in_percent

    o, g = synthetic_outcomes({"a": 0.8, "b": 0.5}, 60, seed=3)
    o.add("mean similarity", np.linspace(0.2, 0.4, len(g)))
    gaps = F.gap_table(o, g, n_boot=50, n_perm=50)
    pct = in_percent(gaps).set_index("metric")
    raw = gaps.set_index("metric")
    zs = "zero-shot top-1"
    for c in ("best", "worst", "gap", "gap_lo", "gap_hi"):
        assert pct.loc[zs, c] == pytest.approx(100 * raw.loc[zs, c])
        assert pct.loc["mean similarity", c] == pytest.approx(raw.loc["mean similarity", c])  # a cosine stays one
    for c in ("ratio", "ratio_lo", "ratio_hi", "p_value"):
        assert pct.loc[zs, c] == pytest.approx(raw.loc[zs, c])
    assert pct.loc[zs, "unit"] == "%" and pct.loc["mean similarity", "unit"] == "cosine"
    assert in_percent(in_percent(gaps)).equals(in_percent(gaps))  # converting twice changes nothing
    groups = in_percent(F.group_table(o, g)).set_index(["metric", "group"])
    k, n = o.num[zs][g == "a"].sum(), (g == "a").sum()
    lo, hi = F.wilson_interval(k, n)
    assert (groups.loc[(zs, "a"), "value"], groups.loc[(zs, "a"), "ci_lo"], groups.loc[(zs, "a"), "ci_hi"]) == \
        pytest.approx((100 * k / n, 100 * lo, 100 * hi))


def test_glued_gap_sentence_is_in_percent_and_points():
    from vlnb.fairness.analysis import gap_headline

    base = {"dataset": "w", "grouping": "colour", "metric": "zero-shot shape top-1", "n_groups": 3, "best_group": "red",
            "best": 90.0, "worst_group": "blue", "worst": 50.25, "gap": 39.75, "gap_lo": 21.04, "gap_hi": 55.5,
            "p_value": 0.0002, "p_holm": 0.004, "gap_detected": True, "informative": True, "unit": "%"}
    h = gap_headline(pd.DataFrame([{**base, "model": "m"}]), n_perm=4999, level=0.95)
    assert h["top_gap"] == ("39.8 points (interval 21.0 to 55.5, permutation p = 0.0002, Holm-adjusted 0.004): m, "
                            "zero-shot shape top-1 by colour, red 90.0 % versus blue 50.2 %")
    assert "1/5,000" in h["holm_floor"] and "over 1 tests" in h["holm_floor"] and "can be detected" in h["holm_floor"]
    many = pd.DataFrame([{**base, "model": f"m{i}"} for i in range(60)])
    assert "no gap could be detected" in gap_headline(many, n_perm=999)["holm_floor"]  # 60 / 1000 >= 0.05


def test_subgroup_analysis_tables_and_figures_are_in_percent(small_world, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from vlnb.fairness import plots as FP
    from vlnb.models.scratch import ScratchDualEncoder

    df, te = small_world
    model = ScratchDualEncoder.create("tiny", captions=[c for cs in df["captions"] for c in cs], seed=0, image_size=32,
                                      width=32, layers=1, text_width=32, text_layers=1, embed_dim=16).eval()
    res = F.subgroup_analysis({"m": model}, {"world": te}, min_size=3, n_boot=50, n_perm=50, cache_dir=tmp_path,
                              progress=False)
    o = res.outcomes["m", "world"]
    acc = res.groups[res.groups["metric"] != "mean similarity"]
    assert (acc["unit"] == "%").all() and acc["ci_hi"].between(0, 100).all()
    overall = res.overall().set_index("metric")
    assert overall.loc["i2t R@1", "value"] == pytest.approx(100 * o.value("i2t R@1"))
    assert overall.loc["mean similarity", "value"] == pytest.approx(o.value("mean similarity"))
    assert overall.loc["zero-shot shape top-1", "chance"] == pytest.approx(100 / 6, rel=0.2)  # ~ 1 in 6 shapes
    page = res.overall_page()
    assert page.loc[0, "i2t R@1 (%)"] == round(100 * o.value("i2t R@1"), 1) and page.loc[0, "images"] == len(te)
    assert not page.isna().any().any()
    side = res.overall_page_by_metric()  # the same values, one column per model and data set
    col = f"{page.loc[0, 'model']} · {page.loc[0, 'dataset']}"
    assert side.loc["i2t R@1 (%)", col] == page.loc[0, "i2t R@1 (%)"] and side.loc["images", col] == len(te)
    gaps = res.gaps[res.gaps["metric"] == "zero-shot colour top-1"]
    assert np.allclose(gaps["overall"], 100 * o.value("zero-shot colour top-1"))
    assert np.allclose(gaps["chance"], 12.5)  # 8 colours, in % like the overall value it is compared with
    fig = FP.group_bars(res.groups, metrics=["zero-shot colour top-1", "mean similarity"], groupings=["colour"])
    assert fig.axes[0].get_xlim() == (0.0, 100.0) and fig.axes[1].get_xlim() == (-1.0, 1.0)
    want = acc[(acc["metric"] == "zero-shot colour top-1") & (acc["grouping"] == "colour")]["value"]
    widths = [p.get_width() for p in fig.axes[0].patches[:len(want)]]  # the bars, in %, before any hatching
    assert sorted(widths) == pytest.approx(sorted(want)) and max(want) > 1


def test_rarity_plot_draws_points_and_percent():
    import matplotlib

    matplotlib.use("Agg")
    from vlnb.fairness.plots import rarity_plot

    con = pd.DataFrame({"metric": "zs", "unit": "%", "fraction": [1.0, 0.1], "seed": 0, "gap": [2.0, 30.0],
                        "gap_lo": [-5.0, 20.0], "gap_hi": [9.0, 40.0], "target_value": [70.0, 45.0],
                        "rest_value": [72.0, 75.0]})
    tr = pd.DataFrame({"fraction": [1.0, 0.1], "seed": 0, "train_rare_pct": [22.9, 2.0]})
    fig = rarity_plot(con, "zs", tr, target="purple")
    a1, a2 = fig.axes
    assert a1.get_ylim() == (-100.0, 100.0) and a2.get_ylim() == (0.0, 100.0) and "points" in a1.get_ylabel()
    assert a1.get_xlabel() == "% of training images showing purple"
    mean = next(ln for ln in a1.get_lines() if ln.get_label() == "mean over seeds")
    assert list(mean.get_xdata()) == [2.0, 22.9] and list(mean.get_ydata()) == [30.0, 2.0]


# ---------------------------------------------------------------------------------------------- fusion models (issue 16)
def test_fusion_models_take_part_through_their_itc_embeddings(small_world, tmp_path):
    """The BLIP-like model and the Q-Former (tiny, untrained: the plumbing is checked) go through the per-group
    evaluation by their ITC embeddings: zero-shot and retrieval equal what the eval module computes from the same
    embeddings (the Q-Former's image-text similarity the max over its queries), and their gaps are tested in the
    same Holm family as the dual encoder's."""
    from vlnb.eval.compare import captions_table
    from vlnb.eval.features import image_features, text_features
    from vlnb.eval.retrieval import recall_at_k
    from vlnb.eval.zeroshot import classification_metrics, zeroshot_classifier, zeroshot_scores
    from vlnb.fairness.analysis import itm_zeroshot_pairs
    from vlnb.models.fusion import FusionConfig, create_fusion, qformer_config
    from vlnb.models.scratch import ScratchDualEncoder

    df, te = small_world
    caps = [c for cs in df["captions"] for c in cs]
    dual = ScratchDualEncoder.create("tiny", captions=caps, seed=0, image_size=32, patch_size=8, width=16, layers=1,
                                     heads=2, embed_dim=8, text_width=16, text_layers=1, text_heads=2).eval()
    blip = create_fusion(FusionConfig(arch="blip", image_size=32, patch_size=8, width=16, layers=1, text_layers=1,
                                      heads=2, embed_dim=8), tokenizer=dual.tokenizer, seed=0, name="blip").eval()
    qformer = create_fusion(qformer_config(dual.config, width=16, layers=1, heads=2, embed_dim=8, n_queries=3),
                            tokenizer=dual.tokenizer, seed=0, backbone=dual.visual, name="qformer").eval()
    models = {"dual": dual, "blip": blip, "qformer": qformer}
    res = F.subgroup_analysis(models, {"world": te}, min_size=3, n_boot=50, n_perm=200, cache_dir=tmp_path,
                              progress=False)
    assert set(res.groups["model"]) == set(res.gaps["model"]) == set(models)
    tasks = F.zeroshot_tasks("world", te)
    for name, model in (("blip", blip), ("qformer", qformer)):
        o = res.outcomes[name, "world"]
        feats = image_features(model, te, cache_dir=tmp_path, progress=False)
        assert feats.embeddings.ndim == (3 if name == "qformer" else 2)  # one embedding per query
        texts, owner = captions_table(te, feats.image_ids)
        sim = model.similarity(feats.embeddings, text_features(model, texts, cache_dir=tmp_path, progress=False))
        ref = recall_at_k(sim, owner, (1, 5))
        assert 100 * o.value("t2i R@5") == pytest.approx(ref["t2i_R@5"])
        task, variant = tasks["zero-shot shape"]
        scores = zeroshot_scores(model, feats.embeddings, zeroshot_classifier(model, task.class_names, task.templates))
        top1 = classification_metrics(scores, task.targets[variant], (1,))["top1"]
        assert o.value("zero-shot shape top-1") == pytest.approx(top1)
    # one family: Holm's adjustment counts every model's tests together
    from vlnb.fairness.stats import holm_adjust

    tested = res.gaps["p_value"].notna()
    assert np.allclose(res.gaps.loc[tested, "p_holm"], holm_adjust(res.gaps.loc[tested, "p_value"].to_numpy()))
    # a model under twice chance on a zero-shot task is flagged uninformative, whatever its architecture
    zs = res.gaps[res.gaps["metric"].str.startswith("zero-shot")]
    assert (zs["informative"] == ~(zs["overall"] < 2 * zs["chance"])).all()
    # what a pure cross encoder would need instead: one ITM pass per image, class and prompt
    n_prompts = sum(len(t.class_names) * len(t.templates) for t, _ in tasks.values())
    assert itm_zeroshot_pairs({"world": te}) == f"{len(te) * n_prompts:,} on world ({len(te)} images × {n_prompts} class prompts)"


# ---------------------------------------------------------------------------------------------- seeds (issue 15)
def _rarity_tables(gaps: dict[float, list[float]], half_width: float = 10.0, p: float = 0.01):
    """Contrast and training tables of a rarity experiment with the given gaps (points) per fraction and seed."""
    con = pd.DataFrame([{"metric": "zs", "unit": "%", "fraction": f, "seed": s, "gap": g, "gap_lo": g - half_width,
                         "gap_hi": g + half_width, "p_value": p, "target_value": 70.0 - g, "rest_value": 70.0}
                        for f, gs in gaps.items() for s, g in enumerate(gs)])
    tr = pd.DataFrame([{"fraction": f, "seed": s, "train_rare_pct": 20.0 * f} for f, gs in gaps.items()
                       for s in range(len(gs))])
    return con, tr


def test_rarity_summary_shift_is_paired_by_seed_with_a_student_t_interval():
    from scipy import stats

    from vlnb.fairness.controlled import RarityResult

    gaps = {1.0: [-10.0, 0.0, -20.0], 0.1: [30.0, 45.0, 20.0]}  # shifts per seed: 40, 45, 40
    con, tr = _rarity_tables(gaps)
    s = RarityResult(pd.DataFrame(), con, pd.DataFrame(), tr).summary("zs").set_index("fraction")
    t = stats.t.ppf(0.975, 2)
    assert s.loc[0.1, "gap_mean"] == pytest.approx(95 / 3) and s.loc[0.1, "shift_mean"] == pytest.approx(125 / 3)
    shifts = np.array([40.0, 45.0, 40.0])
    half = t * shifts.std(ddof=1) / np.sqrt(3)
    assert (s.loc[0.1, "shift_ci_lo"], s.loc[0.1, "shift_ci_hi"]) == pytest.approx((125 / 3 - half, 125 / 3 + half))
    # pairing matters: the gaps' own interval is far wider than the paired shift's
    assert s.loc[0.1, "gap_ci_hi"] - s.loc[0.1, "gap_ci_lo"] > 3 * (s.loc[0.1, "shift_ci_hi"] - s.loc[0.1, "shift_ci_lo"])
    assert s.loc[1.0, "shift_mean"] == 0 and (s.loc[1.0, "gap_min"], s.loc[1.0, "gap_max"]) == (-20.0, 0.0)
    assert (s["unit"] == "%").all() and (s["level"] == 0.95).all()
    h = RarityResult(pd.DataFrame(), con, pd.DataFrame(), tr).headline("zs")
    assert h["rare_shift_rarest"].startswith("+41.7 points (95 % Student-t interval over 3 paired seeds: ")
    assert h["rare_control_reading"].endswith("cannot tell the colour apart from the others")  # -10 +- 24.8
    con2, tr2 = _rarity_tables({1.0: [-10.0, -12.0, -11.0], 0.1: [30.0, 31.0, 29.0]})
    h2 = RarityResult(pd.DataFrame(), con2, pd.DataFrame(), tr2).headline("zs")
    assert "excludes 0: even without any rarity the colour is easier" in h2["rare_control_reading"]
    con1, tr1 = _rarity_tables({1.0: [1.0], 0.1: [30.0]})
    one = RarityResult(pd.DataFrame(), con1, pd.DataFrame(), tr1)
    assert one.headline("zs")["rare_shift_rarest"] == "+29.0 points (one seed: no interval)"


def test_rarity_spread_sentence_compares_seed_spread_with_one_models_interval():
    from vlnb.fairness.controlled import rarity_spread_sentence

    con, _ = _rarity_tables({1.0: [-10.0, 0.0, -20.0], 0.1: [30.0, 45.0, 20.0]}, half_width=10.0)
    text = rarity_spread_sentence(con, "zs")
    assert text.startswith("the seeds of one fraction lie up to 25.0 points apart (at f = 0.1), wider than the 20.0-point")
    con, _ = _rarity_tables({1.0: [-10.0, -9.0], 0.1: [30.0, 31.0]}, half_width=10.0)
    assert "well inside" in rarity_spread_sentence(con, "zs")
    con, _ = _rarity_tables({1.0: [-10.0], 0.1: [30.0]})
    assert rarity_spread_sentence(con, "zs").startswith("with one seed per fraction there is no spread")


def test_torch_threads_restores_the_setting():
    from vlnb.device import torch_threads

    outer = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), torch_threads(1):
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
        with torch_threads(None):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(outer)


def test_pages_show_a_dash_not_nan():
    from vlnb.fairness.analysis import SubgroupResult, gap_page

    a = F.Outcomes.from_values({"zero-shot shape top-1": [1, 0, 1, 1]}, model="a", dataset="world")
    b = F.Outcomes.from_values({"zero-shot category top-1": [0, 1], "mean similarity": [0.2, 0.4]}, model="b",
                               dataset="coco")
    res = SubgroupResult(pd.DataFrame(), pd.DataFrame(), {("a", "world"): a, ("b", "coco"): b})
    page = res.overall_page().set_index("model")
    assert page.loc["a", "zero-shot shape top-1 (%)"] == 75.0 and page.loc["a", "zero-shot category top-1 (%)"] == "—"
    assert page.loc["b", "mean similarity"] == pytest.approx(0.3) and page.loc["a", "mean similarity"] == "—"
    o, g = synthetic_outcomes({"a": 0.8, "b": 0.5}, 40, seed=0)
    gaps = F.metrics.in_percent(F.gap_table(o, np.where(g == "a", "a", "only"), min_size=50, n_boot=20, n_perm=20))
    shown = gap_page(gaps.assign(model="m"), "m")
    assert shown.loc[0, "gap"] == "—" and shown.loc[0, "unit"] == "%" and not shown.isna().any().any()
