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
