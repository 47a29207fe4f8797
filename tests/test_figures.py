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
