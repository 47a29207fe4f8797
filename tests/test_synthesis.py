"""vlnb.synthesis on synthetic run folders: headlines come from the tables (nothing typed), missing chapters say so,
and the cross-chapter consistency check sees agreement and disagreement."""

from __future__ import annotations

import math

import pandas as pd

from vlnb import synthesis


def write(runs, stem, name, df):
    p = runs / stem / "results"
    p.mkdir(parents=True, exist_ok=True)
    df.to_csv(p / f"{name}.csv", index=False)


def ch2_results(recall_i2t=29.8):
    rows = []
    for model, n in (("scratch-world", 500), ("towers-coco", 79)):
        for d, r in (("i2t", recall_i2t), ("t2i", 20.0)):
            rows.append({"model": model, "test images": n, "test captions": 5 * n, "direction": d, "k": 1,
                         "recall": r, "chance": 100 / n})
    return pd.DataFrame(rows)


def ch4_retrieval(recall_i2t=29.8):
    rows = []
    for model, ds, n in (("scratch-world", "world", 500), ("towers-coco", "coco-mini", 79)):
        for d, r in (("i2t", recall_i2t), ("t2i", 20.0)):
            rows.append({"model": model, "dataset": ds, "protocol": "ITC (dual encoder)", "direction": d, "k": 1,
                         "recall": r, "n_images": n, "chance": 100 / n})
    return pd.DataFrame(rows)


def test_headlines_read_the_tables_and_name_missing_chapters(tmp_path):
    write(tmp_path, "02_clip_training", "results", ch2_results())
    t = synthesis.headlines(tmp_path)
    row = t[t["finding"].str.startswith("scratch-world: image→text R@1")].iloc[0]
    assert row["value"] == 29.8 and row["ci_lo"] < 29.8 < row["ci_hi"] and "Wilson" in row["interval"]
    assert row["chance"] == 0.2 and row["source"] == "02_clip_training/results/results.csv"
    missing = t[t["finding"] == "(no run of this chapter in this build)"]
    assert set(missing["chapter"]) == {synthesis.CHAPTERS[s] for s in synthesis.CHAPTERS if s != "02_clip_training"}
    assert math.isnan(missing["value"].iloc[0])


def test_consistency_agrees_and_disagrees(tmp_path):
    write(tmp_path, "02_clip_training", "results", ch2_results())
    write(tmp_path, "04_compare", "retrieval", ch4_retrieval())
    c = synthesis.consistency(tmp_path)
    assert len(c) == 4 and c["agree"].all()
    write(tmp_path, "04_compare", "retrieval", ch4_retrieval(recall_i2t=31.0))
    c = synthesis.consistency(tmp_path).set_index("quantity")
    assert not c.loc["scratch-world on world: i2t R@1", "agree"] and c.loc["scratch-world on world: t2i R@1", "agree"]


def test_consistency_zeroshot_row_compares_chapter_4_with_chapter_5_in_percent(tmp_path):
    """Chapter 4's CSV keeps proportions, chapter 5's percent: the row compares both in percent."""
    zs = pd.DataFrame([{"model": "scratch-world", "dataset": "world", "variant": v, "top1": t}
                       for v, t in (("any object", 0.304), ("primary", 0.242))])
    res = pd.DataFrame([{"model": "scratch-world", "dataset": "world", "task": task, "metric": "top1",
                         "corruption": c, "severity": s, "value": v}
                        for task, v in (("zeroshot:shape", 30.4), ("zeroshot:colour", 99.0))
                        for c, s in (("gaussian_noise", 0), ("gaussian_noise", 3))])
    res.loc[res["severity"] == 3, "value"] = 20.0
    write(tmp_path, "04_compare", "zeroshot", zs)
    write(tmp_path, "05_robustness", "robustness_results", res)
    row = synthesis.consistency(tmp_path).iloc[-1]
    assert row["quantity"].startswith("scratch-world on world: zero-shot shape")
    assert (row["value A"], row["value B"]) == (30.4, 30.4) and row["agree"]
    write(tmp_path, "04_compare", "zeroshot", zs.assign(top1=[0.302, 0.242]))
    row = synthesis.consistency(tmp_path).iloc[-1]
    assert row["value A"] == 30.2 and not row["agree"]


def test_chapter_7_numbers_are_read_in_percent_as_written(tmp_path):
    """Chapter 7's tables are in percent (gaps in points): the synthesis takes them as they are — no x100 — reads
    the colour-accuracy rows (not another metric's), and prefers the Student-t interval over seeds to their range."""
    rows = [{"metric": m, "unit": u, "fraction": f, "train_rare_pct": sh, "seeds": 3, "gap_mean": g, "gap_ci_lo": g - 9,
             "gap_ci_hi": g + 9, "gap_min": g - 4, "gap_max": g + 4, "rare_value": 70.0 - g, "rest_value": 70.0,
             "detected": d, "level": 0.95}
            for m, u in (("i2t R@5", "%"), ("zero-shot colour top-1", "%"))
            for f, sh, g, d in ((1.0, 22.9, -3.5 if m.startswith("zero") else 1.0, 0), (0.03, 0.4, 36.2, 3))]
    write(tmp_path, "07_fairness", "rarity_summary", pd.DataFrame(rows))
    t = synthesis.headlines(tmp_path)
    t = t[t["chapter"] == synthesis.CHAPTERS["07_fairness"]].set_index("finding")
    control = t.loc["planted rarity, f = 1: others − rare colour accuracy"]
    rarest = t.loc["planted rarity, f = 0.03: others − rare colour accuracy"]
    assert (control["value"], control["ci_lo"], control["ci_hi"]) == (-3.5, -12.5, 5.5)
    assert (rarest["value"], rarest["unit"]) == (36.2, "points")
    assert rarest["interval"] == "Student t 95 % over 3 seeds; the permutation test flags 3 of 3"
    page = synthesis.page_table(t.reset_index())
    assert "36.2 points [27.2, 45.2]" in set(page["value [interval]"])
    # one seed: no t interval, the (degenerate) range is reported as such
    one = pd.DataFrame(rows).assign(seeds=1, gap_ci_lo=float("nan"), gap_ci_hi=float("nan"))
    write(tmp_path, "07_fairness", "rarity_summary", one)
    t = synthesis.headlines(tmp_path)
    assert t[t["finding"].str.startswith("planted rarity, f = 1:")]["interval"].iloc[0].startswith("range over 1 seeds")


def test_consistency_compares_chapter_7_with_chapter_4_in_percent(tmp_path):
    """Chapter 7's per-image evaluation, summed over the world test set (its overall table, percent), against
    chapter 4: the zero-shot shape accuracy (largest object; chapter 4's CSV keeps proportions) and the fusion
    models' ITC retrieval."""
    zs = pd.DataFrame([{"model": "scratch-world", "dataset": "world", "variant": v, "top1": t}
                       for v, t in (("any object", 0.304), ("primary", 0.242))])
    ret = pd.DataFrame([{"model": m, "dataset": "world", "protocol": p, "stage": st, "direction": "i2t", "k": 1,
                         "recall": r} for m, p, st, r in (("blip-world", "ITC", "itc", 11.0),
                                                          ("blip-world", "ITC top-16 → own ITM rerank", "itm", 8.6),
                                                          ("qformer-world", "ITC", "itc", 14.6))])
    ov = pd.DataFrame([{"model": m, "dataset": "world", "metric": k, "value": v, "unit": "%"}
                       for m, k, v in (("scratch-world", "zero-shot shape top-1", 24.2), ("blip-world", "i2t R@1", 11.0),
                                       ("qformer-world", "i2t R@1", 14.6))])
    write(tmp_path, "04_compare", "zeroshot", zs)
    write(tmp_path, "04_compare", "retrieval", ret)
    write(tmp_path, "07_fairness", "overall", ov)
    c = synthesis.consistency(tmp_path).set_index("quantity")
    rows = ["scratch-world on world: zero-shot shape top-1 (largest object)", "blip-world on world: i2t R@1 (ITC)",
            "qformer-world on world: i2t R@1 (ITC)"]
    assert c.loc[rows, "agree"].tolist() == [True, True, True] and (c.loc[rows, "chapter B"] == "7").all()
    assert c.loc[rows[0], ["value A", "value B"]].tolist() == [24.2, 24.2]
    write(tmp_path, "07_fairness", "overall", ov.assign(value=[0.242, 0.11, 0.146]))  # proportions would not agree
    c = synthesis.consistency(tmp_path).set_index("quantity")
    assert not c.loc[rows, "agree"].any()


def test_chapter_5_largest_drop_carries_its_paired_interval(tmp_path):
    rows = [{"model": "scratch-world", "dataset": "world", "task": "zeroshot", "metric": "colour", "corruption": c,
             "clean": 99.0, "worst": w, "severity": 5, "drop": 99.0 - w, "chance": 12.5, "informative": inf,
             "drop_lo": 99.0 - w - 4, "drop_hi": 99.0 - w + 4, "level": 0.95}
            for c, w, inf in (("contrast", 38.8, True), ("pixelate", 90.0, True), ("fog", 1.0, False))]
    write(tmp_path, "05_robustness", "clean_vs_worst_severity", pd.DataFrame(rows))
    r = synthesis.headlines(tmp_path)
    r = r[r["chapter"] == synthesis.CHAPTERS["05_robustness"]].iloc[0]
    assert "contrast" in r["finding"] and r["value"] == 99.0 - 38.8  # the largest informative drop, not "fog"
    assert (r["ci_lo"], r["ci_hi"]) == (99.0 - 38.8 - 4, 99.0 - 38.8 + 4) and "paired bootstrap 95%" in r["interval"]
    old = pd.DataFrame(rows).drop(columns=["drop_lo", "drop_hi", "level"])  # a run from before per-image hits
    write(tmp_path, "05_robustness", "clean_vs_worst_severity", old)
    r = synthesis.headlines(tmp_path)
    r = r[r["chapter"] == synthesis.CHAPTERS["05_robustness"]].iloc[0]
    assert math.isnan(r["ci_lo"]) and r["interval"] == "one evaluation, no interval"
