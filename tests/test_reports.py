"""The chapters' report helpers: tables and glued numbers built in the package, checked on known inputs."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from vlnb.data.manifest import make_manifest
from vlnb.eval.chance import manifest_recall_chance
from vlnb.train.report import held_out_glue, held_out_results, recall_table


def _history(r1: float):
    rows = [{"epoch": 1, "train_loss": 2.0, "logit_scale": 10.0, **{f"{d}_R@{k}": float("nan")
                                                                   for d in ("i2t", "t2i") for k in (1, 5, 10)}},
            {"epoch": 2, "train_loss": 1.5, "logit_scale": 14.25,
             **{f"{d}_R@{k}": r1 * k if d == "t2i" else r1 * k + 1 for d in ("i2t", "t2i") for k in (1, 5, 10)}}]
    return SimpleNamespace(epochs_df=pd.DataFrame(rows))


def test_held_out_results_and_glue():
    test = make_manifest([{"image_id": i, "image": f"{i}.png", "captions": ["a", "b"][: 1 + i % 2], "split": "test"}
                          for i in range(10)], name="world")
    res = held_out_results({"scratch-world": _history(4.0)}, {"scratch-world": test})
    assert len(res) == 6 and list(res.columns)[:4] == ["model", "test images", "test captions", "direction"]
    t2i1 = res[(res["direction"] == "t2i") & (res["k"] == 1)].iloc[0]
    assert (t2i1["recall"], t2i1["test images"], t2i1["test captions"], t2i1["epochs"]) == (4.0, 10, 15, 2)
    exact = manifest_recall_chance(test)
    assert res.apply(lambda r: r["chance"] == exact[f"{r['direction']}_R@{r['k']}"], axis=1).all()
    assert res["× chance"].tolist() == pytest.approx((res["recall"] / res["chance"]).tolist())
    assert recall_table(res).loc[("scratch-world", "t2i"), ("recall", 5)] == 20.0
    glue = held_out_glue(res)
    assert glue["scratch_world_t2i_r1"] == "4.0" and glue["scratch_world_i2t_r1"] == "5.0"
    assert glue["scratch_world_t2i_r1_chance"] == "10.0" and glue["scratch_world_scale"] == "14.2"
    assert glue["chance_caps_per_image"] == "1.5" and glue["chance_model"] == "scratch-world"
    assert glue["chance_ratio"] == f"{exact['i2t_R@1'] / exact['t2i_R@1']:.2f}"
    with pytest.raises(ValueError, match="no evaluation on held-out data"):
        h = _history(1.0)
        h.epochs_df = h.epochs_df.iloc[:1]
        held_out_results({"m": h}, {"m": test})


def sweep_results():
    from vlnb.robustness import RESULT_COLUMNS

    rows = []
    for model, clean, chance in (("A", 80.0, 10.0), ("B", 12.0, 10.0)):  # B sits near chance: uninformative
        for cor, drops in (("blur", (5.0, 20.0)), ("noise", (1.0, 2.0))):
            rows.append([model, "world", "retrieval", "t2i_R@1", cor, 0, clean, clean, 1.0, 50, chance])
            for sev, d in zip((1, 5), drops):
                rows.append([model, "world", "retrieval", "t2i_R@1", cor, sev, clean - d, clean, (clean - d) / clean,
                             50, chance])
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def test_robustness_report_tables_and_glue():
    from vlnb.robustness import report
    from vlnb.robustness.sweep import chance_table, degradation_table, summarize

    res = sweep_results()
    clean = report.clean_table(res)
    assert clean.loc[("A", "world"), ("retrieval", "t2i_R@1")] == 80.0 and len(clean) == 2
    head = [("retrieval", "t2i_R@1")]
    top = degradation_table(res, head, chance=chance_table(res))
    assert top.set_index(["model", "corruption"]).loc[("A", "blur"), "drop"] == 20.0
    glue = report.degradation_glue(top)
    assert glue["worst_desc"] == "A on world (retrieval t2i_R@1) under blur: 80.0 → 60.0"
    assert glue["mild_desc"] == "noise (80.0 → 78.0)" and glue["n_uninformative"] == 1
    assert glue["drops_desc"] == "A on world, retrieval t2i_R@1: 80.0 → 60.0 under blur"
    mono, g = report.monotonicity_report(res, head, top)
    assert mono["monotone"].all() and g == {"n_curves": 2, "n_monotone": 2, "mono_tolerance": "2.0"}
    shown, g = report.summary_glue(summarize(res, baseline="B"), head, "B")
    assert g["baseline"] == "B" and g["mce_desc"].startswith("A on world (retrieval t2i_R@1): mCE ")
    a = shown.set_index("model").loc["A"]
    # CE per corruption = A's summed errors / B's (severities 1, 5); mCE their mean
    assert a["mCE"] == pytest.approx(((25 + 40) / (93 + 108) + (21 + 22) / (89 + 90)) / 2)


def test_comparison_report_tables_and_glue():
    import matplotlib

    from vlnb.comparison import report

    matplotlib.use("Agg")
    rows = [{"model": m, "dataset": "world", "protocol": "ITC", "direction": d, "k": k, "recall": r + k,
             "chance": (100 * k / 50) if d == "t2i" else (100 * k / 10)}
            for m, r in (("A", 40.0), ("B", 10.0)) for d in ("i2t", "t2i") for k in (1, 5)]
    ret = pd.DataFrame(rows)
    wide = report.retrieval_wide(ret)
    assert list(wide.columns) == ["I→T R@1", "I→T R@5", "T→I R@1", "T→I R@5"]
    assert wide.loc[("world", "A", "ITC"), "T→I R@5"] == 45.0
    assert wide.loc[("world", "(random ranking)", "chance")].tolist() == [10.0, 50.0, 2.0, 10.0]
    assert wide.index[-1] == ("world", "(random ranking)", "chance")
    assert report.best_r1_glue(ret) == {"best_r1": "41.0", "best_r1_model": "A", "best_r1_dataset": "world",
                                        "best_r1_dir": "image→text", "best_r1_chance": "10.0"}
    zs = pd.DataFrame([{"model": m, "dataset": "world", "variant": v, "top1": t, "top5": 0.9,
                        "mean_per_class_recall": t, "chance_top1": 1 / 6, "n_classes": 6, "n_templates": 5, "n": 50}
                       for m, t in (("A", 0.5), ("B", 0.25)) for v in ("any object", "primary")])
    zt = report.zeroshot_table(zs)  # shown in percent, like every recall of the book, with its protocol
    assert zt.loc[("world", "B", "primary"), "chance top-1 (%)"] == round(100 / 6, 1)
    assert zt.loc[("world", "A", "primary"), "top-1 (%)"] == 50.0
    assert zt.loc[("world", "A", "primary"), ["classes", "templates", "test images"]].tolist() == [6, 5, 50]
    assert zs["top1"].tolist() == [0.5, 0.5, 0.25, 0.25]  # the tidy table (and its CSV) keeps proportions
    fig = report.zeroshot_bars(zs)
    widths = sorted(round(p.get_width(), 3) for p in fig.axes[0].patches if p.get_width() > 0)
    assert widths == [25.0, 25.0, 50.0, 50.0]
    assert "%" in fig.axes[0].get_xlabel()
    ticks = [ln.get_xdata()[0] for ln in fig.axes[0].lines if ln.get_color() == "black"]
    assert ticks == pytest.approx([100 / 6, 100 / 6])
    pub = pd.DataFrame([{"dataset": "coco", "model": "CLIP", "protocol": "ITC", "source": "paper", "direction": "t2i",
                         "k": 1, "recall": 30.4}])
    assert report.published_wide(pub).loc[("coco", "CLIP", "ITC", "paper"), "T→I R@1"] == 30.4
    bad = pd.DataFrame({"dataset": ["world"]})
    man = make_manifest([{"image_id": 0, "image": "0.png", "captions": ["a", "b"], "split": "test"}], name="world")
    assert report.datasets_table({"world": man}, bad).iloc[0].tolist() == ["world", 1, 2, 1]


def test_fairness_gender_counts_per_source():
    from vlnb.fairness.gender import counts_table, source_counts

    a = pd.DataFrame({"image_id": [1, 2, 3], "captions": [["a man rides"], ["a woman and a man"], ["a dog"]]})
    b = pd.DataFrame({"image_id": [4], "captions": [["she smiles"]]})
    counts = source_counts({"a": a, "b": b})
    assert set(counts["source"]) == {"a", "b"} and counts.groupby("source")["images"].sum().to_dict() == {"a": 3, "b": 1}
    table = counts_table(counts)
    assert list(table.columns) == ["man", "woman", "mixed", "neutral"] and list(table.index) == ["a", "b"]
    assert table.loc["a"].tolist() == [1, 0, 1, 1] and table.loc["b"].tolist() == [0, 1, 0, 0]


def test_cost_glue_fastest_slowest_and_growth():
    import pandas as pd

    from vlnb.comparison.report import cost_glue

    q = pd.DataFrame({"model": ["dual", "dual", "cross", "cross"], "protocol": ["ITC", "ITC", "ITM", "ITM"],
                      "n_gallery": [100, 1000, 100, 1000], "query_s": [0.001, 0.002, 0.01, 0.1],
                      "basis": ["measured", "measured", "measured", "extrapolated"]})
    g = cost_glue(q)
    assert g["cost_n"] == "1,000" and g["cost_nmin"] == "100" and g["cost_n_ratio"] == "10"
    assert g["cost_fastest"] == "dual (ITC): 2.0 ms"
    assert g["cost_slowest"] == "cross (ITM): 100.0 ms (extrapolated)"
    assert g["cost_growth"] == "dual (ITC) ×2.0; cross (ITM) ×10.0"


def test_chapter_pages_pivot_the_right_values():
    import pandas as pd

    from vlnb.comparison.report import r1_interval_page, t2i_page
    from vlnb.train.report import variant_costs

    iv = pd.DataFrame({"dataset": ["w", "w", "w"], "model": ["m", "m", "m"], "direction": ["t2i", "i2t", "t2i"],
                       "k": [1, 1, 5], "recall": [12.34, 30.0, 50.0], "ci_lo": [10.0, 25.0, 45.0],
                       "ci_hi": [14.0, 35.0, 55.0]})
    page = r1_interval_page(iv)
    assert page.loc[("w", "m"), ("recall", "t2i")] == 12.3 and page.loc[("w", "m"), ("ci_hi", "i2t")] == 35.0
    t2i = pd.DataFrame({"model": ["a", "a"], "protocol": ["p", "p"], "k": [1, 5], "recall": [1.0, 5.0],
                        "chance": [0.1, 0.5]})
    assert t2i_page(t2i).loc[("a", "p"), ("recall", 5)] == 5.0
    var = pd.DataFrame({"variant": ["self", "self", "cross"], "train_time_s": [1.0, 3.0, 5.0],
                        "peak_memory_mb": [10.0, 10.0, 20.0], "params": [100, 100, 200]})
    costs = variant_costs(var)
    assert list(costs.index) == ["self", "cross"] and costs.loc["self", "train_time_s"] == 2.0
    # the parameter count is a count, not a mean over seeds shown as "100.0"
    assert costs["params"].tolist() == [100, 200] and pd.api.types.is_integer_dtype(costs["params"])


def test_models_table_says_what_each_model_is():
    """Chapter 4's model table: cross encoder, dual encoder with an ITM head, or plain dual encoder (it printed the
    first base class, a private name for the fusion models)."""
    from vlnb.comparison.report import model_kind
    from vlnb.models.fusion import FusionConfig, create_fusion, qformer_config
    from vlnb.models.scratch import ScratchDualEncoder

    dual = ScratchDualEncoder.create("tiny", captions=["a red circle", "two blue squares"], seed=0, image_size=16,
                                     patch_size=8, width=16, layers=1, heads=2, embed_dim=8, text_width=16,
                                     text_layers=1, text_heads=2)
    tiny = {"width": 16, "layers": 1, "text_layers": 1, "heads": 2, "embed_dim": 8, "image_size": 16, "patch_size": 8}
    vilt = create_fusion(FusionConfig(arch="vilt", **tiny), tokenizer=dual.tokenizer, seed=0)
    blip = create_fusion(FusionConfig(arch="blip", **tiny), tokenizer=dual.tokenizer, seed=0)
    qformer = create_fusion(qformer_config(dual.config, width=16, layers=1, heads=2, embed_dim=8, n_queries=2),
                            tokenizer=dual.tokenizer, seed=0, backbone=dual.visual)
    kinds = [model_kind(m) for m in (vilt, blip, qformer, dual)]
    assert kinds == ["cross encoder", "dual encoder + ITM head", "dual encoder + ITM head", "dual encoder"]
