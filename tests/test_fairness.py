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
    assert tr.loc[0.1, "test_share_rare"] == tr.loc[1.0, "test_share_rare"]  # the test split is untouched
    assert set(r.contrasts["target"]) == {"purple"} and set(r.contrasts["fraction"]) == {1.0, 0.1}
    assert r.groups[r.groups["metric"] != "mean similarity"]["value"].between(0, 1).all()
    s = r.summary("zero-shot colour top-1")
    assert list(s["fraction"]) == [1.0, 0.1] and (s["seeds"] == 1).all()
    h = r.headline("zero-shot colour top-1")
    assert h["rare_n_seeds"] == "1" and h["rare_detected_control"].endswith("of 1")
    with pytest.raises(ValueError, match="colour or a shape"):
        F.rarity_experiment(rare=("background", "grass"))
    with pytest.raises(ValueError, match="fractions"):
        F.rarity_experiment(fractions=[0.0])


# ---------------------------------------------------------------------------------------------- params
def test_params_registered_and_validated():
    from vlnb.config import ParameterError, resolve

    cfg = resolve("07_fairness")
    assert cfg.datasets == {"scratch-world": ["world"], "towers-coco": ["coco-mini"]}
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
SMALL = {"rare_fractions": [1.0, 0.05], "rare_seeds": [0], "rare_n_train": 256, "rare_n_test": 96, "rare_epochs": 3,
         "n_boot": 100, "n_perm": 100, "max_images": 60, "min_group_size": 5}


@pytest.mark.slow
def test_chapter_offline_small(tmp_path, monkeypatch):
    from vlnb.runs import run_notebook

    monkeypatch.setenv("VLNB_CACHE", str(tmp_path / "cache"))
    run_notebook(NB, SMALL, out_dir=tmp_path / "run", progress=False)
    res = tmp_path / "run" / "results"
    gender = pd.read_csv(res / "gender_counts.csv")
    assert gender.groupby("source")["share"].sum().round(6).eq(1).all() and len(gender["source"].unique()) == 2
    groups = pd.read_csv(res / "groups.csv")
    assert set(groups["model"]) == {"scratch-world", "towers-coco"}
    prop = groups[groups["metric"] != "mean similarity"]
    assert prop["value"].between(0, 1).all() and prop["ci_lo"].between(0, 1).all() and prop["ci_hi"].between(0, 1).all()
    assert {"colour", "shape", "background", "supercategory", "gender"} <= set(groups["grouping"])
    gaps = pd.read_csv(res / "gaps.csv")
    assert gaps["gap"].dropna().ge(0).all()
    con = pd.read_csv(res / "rarity_contrasts.csv")
    assert set(con["fraction"]) == {1.0, 0.05}
    for f in ("rarity_gap", "groups_scratch-world", "groups_towers-coco"):
        assert (tmp_path / "run" / "figures" / f"{f}.png").is_file()


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

    s = pd.DataFrame({"fraction": [1.0, 0.3, 0.1], "seeds": [2, 2, 2], "gap_mean": [0.01, -0.02, 0.3],
                      "gap_min": [-0.02, -0.05, 0.2], "gap_max": [0.04, 0.01, 0.4]})
    text = rarity_shape_sentence(s)
    assert "f = 0.3: -0.02 (2 seeds, -0.05 to +0.01)" in text and "ranges overlap" in text
    s.loc[1, ["gap_min", "gap_max"]] = [-0.2, -0.1]
    assert "do not overlap" in rarity_shape_sentence(s)
    s.loc[1, ["gap_mean", "gap_min", "gap_max"]] = [0.1, 0.05, 0.15]
    assert "grows at every step" in rarity_shape_sentence(s)


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
