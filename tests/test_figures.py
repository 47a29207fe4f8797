"""Chapter figures plot what their tables say: the drawn values, panels and axes, not only that a figure exists."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")


def test_severity_curves_draw_each_metric_against_severity():
    from test_reports import sweep_results

    from vlnb.robustness.plots import severity_curves

    res = sweep_results()
    fig = severity_curves(res, metrics=[("retrieval", "t2i_R@1")], ncols=2)
    assert [ax.get_title() for ax in fig.axes] == ["blur", "noise"]
    blur = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in fig.axes[0].get_lines()}
    assert blur["A · world · retrieval t2i_R@1"] == ([0, 1, 5], [80.0, 75.0, 60.0])
    assert blur["B · world · retrieval t2i_R@1"] == ([0, 1, 5], [12.0, 7.0, -8.0])
    rel = severity_curves(res, metrics=[("retrieval", "t2i_R@1")], relative=True)
    a = next(ln for ln in rel.axes[0].get_lines() if ln.get_label().startswith("A "))
    np.testing.assert_allclose(a.get_ydata(), [1.0, 0.9375, 0.75])
    assert rel.axes[0].get_ylabel() == "relative to clean"
    with pytest.raises(ValueError, match="none of the metrics"):
        severity_curves(res, metrics=[("zeroshot:shape", "top1")])


def test_group_bars_draw_values_intervals_and_flags():
    from vlnb.fairness.plots import group_bars

    table = pd.DataFrame({"model": "m", "grouping": "colour", "metric": "R@1", "group": ["red", "blue", "pink"],
                          "value": [0.8, 0.5, 0.3], "ci_lo": [0.7, 0.4, 0.0], "ci_hi": [0.9, 0.6, 0.7],
                          "images": [50, 40, 3], "ranked": [True, True, False], "flagged": [False, False, True]})
    fig = group_bars(table)
    ax = fig.axes[0]
    assert ax.get_title() == "R@1 by colour" and ax.get_xlim() == (0.0, 1.0)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["pink (n=3)", "blue (n=40)", "red (n=50)"]  # unranked first, then by value
    widths = [round(p.get_width(), 3) for p in ax.patches[:3]]
    assert widths == [0.3, 0.5, 0.8]
    assert sum(p.get_hatch() == "///" for p in ax.patches) == 1  # the one flagged group
    with pytest.raises(ValueError, match="one model at a time"):
        group_bars(pd.concat([table, table.assign(model="n")]))


def test_recall_bars_draw_recall_chance_intervals_seeds_and_published():
    """The one Recall@K figure (chapters 3 and 4): bars = recall per entry and K, ticks = chance, error bars =
    the interval, dots = seeds, diamonds = published numbers joined on hub id and stage."""
    from vlnb.eval.published import published_retrieval
    from vlnb.plots import recall_bars

    rows = [{"model": m, "hub_id": hub, "protocol": "ITC", "stage": "itc", "dataset": "coco", "direction": d,
             "k": k, "recall": r + k, "chance": k / 10} for m, hub, r in (("CLIP", "openai/clip-vit-base-patch32", 40),
                                                                         ("local", "/tmp/x", 20))
            for d in ("i2t", "t2i") for k in (1, 5, 10)]
    df = pd.DataFrame(rows)
    fig = recall_bars(df, published=published_retrieval(), title="R@K")
    assert [ax.get_title() for ax in fig.axes] == ["coco: text → image", "coco: image → text"]
    ax = fig.axes[1]  # image -> text
    assert [p.get_height() for p in ax.patches] == [41, 45, 50, 21, 25, 30]  # entry-major, K on the x axis
    assert [t.get_text() for t in ax.get_xticklabels()] == ["R@1", "R@5", "R@10"]
    ticks = [seg[0][1] for c in ax.collections for seg in c.get_segments()]
    assert ticks == [0.1, 0.5, 1.0] * 2
    diamonds = [ln for ln in ax.get_lines() if ln.get_marker() == "D"]
    assert len(diamonds) == 3 and fig.n_published == 6  # CLIP's i2t R@1/5/10 here, t2i's on the other panel
    clip_x = [p.get_x() + p.get_width() / 2 for p in ax.patches[:3]]
    np.testing.assert_allclose(sorted(ln.get_xdata()[0] for ln in diamonds), clip_x)
    # chapter 3's inputs: an entry column, an order, intervals and per-seed dots
    mean = df.assign(method=df["model"], ci_lo=df["recall"] - 2, ci_hi=df["recall"] + 3)
    seeds = pd.concat([mean.assign(seed=s, recall=mean["recall"] + s) for s in (-1, 1)])
    fig = recall_bars(mean, seeds, entry="method", order=["local", "CLIP"], hatched=["CLIP"])
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [21, 25, 30, 41, 45, 50]
    assert [p.get_hatch() for p in ax.patches] == [None] * 3 + ["//"] * 3
    caps = [ln for ln in ax.get_lines() if ln.get_marker() == "_"]  # error-bar caps at ci_lo and ci_hi
    assert sorted(y for ln in caps for y in ln.get_ydata()) == sorted(
        [v - 2 for v in (21, 25, 30, 41, 45, 50)] + [v + 3 for v in (21, 25, 30, 41, 45, 50)])
    dots = [y for ln in ax.get_lines() if ln.get_marker() == "." for y in ln.get_ydata()]
    assert sorted(dots) == sorted(v + s for v in (21, 25, 30, 41, 45, 50) for s in (-1, 1))
    assert "dots: one per seed" in fig._suptitle.get_text() and fig.n_published == 0
    with pytest.raises(ValueError, match="empty table"):
        recall_bars(df.iloc[:0])
