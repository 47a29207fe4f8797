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
