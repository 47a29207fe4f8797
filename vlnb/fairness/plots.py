"""Figures of the fairness chapter: per-group bars with intervals on their metric's whole range (0-100 % for
accuracies and recalls), gap versus rarity."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter


def group_bars(table: pd.DataFrame, metrics: Sequence[str] | None = None, groupings: Sequence[str] | None = None,
               title: str | None = None, width: float = 3.2, row_height: float = 0.3, fontsize: float = 9):
    """One panel per (grouping, metric) of one model's :func:`~vlnb.fairness.group_table` rows.

    Bars are sorted best first; whiskers are the confidence intervals; flagged groups (too few images) are
    drawn hatched in grey with their size, excluded groups in light grey. Every axis spans its metric's whole
    range, so no axis exaggerates a difference: 0-100 for a table in percent (a ``unit`` column of ``"%"``, as
    the chapter's tables have), [0, 1] for proportions without one, [-1, 1] for similarities.
    """

    if table.empty:
        raise ValueError("group_bars: the table is empty")
    if table["model"].nunique() != 1:
        raise ValueError(f"group_bars draws one model at a time, got {sorted(table['model'].unique())}")
    metrics = list(metrics or table["metric"].unique())
    metrics = [m for m in metrics if m in set(table["metric"])]
    groupings = list(groupings or table["grouping"].unique())
    if not metrics or not groupings:
        raise ValueError("group_bars: none of the requested metrics / groupings is in the table")
    n_rows = [max(1, table[(table["grouping"] == g)].groupby("metric")["group"].nunique().max()) for g in groupings]
    fig, axes = plt.subplots(len(groupings), len(metrics), squeeze=False,
                             figsize=(width * len(metrics), sum(0.6 + row_height * n for n in n_rows)),
                             gridspec_kw={"height_ratios": n_rows})
    for r, grouping in enumerate(groupings):
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            d = table[(table["grouping"] == grouping) & (table["metric"] == metric)]
            if d.empty:
                ax.axis("off")
                continue
            d = d.sort_values(["ranked", "value"], ascending=[True, True])
            y = np.arange(len(d))
            colours = ["C0" if rk else ("0.75" if fl else "0.85") for rk, fl in zip(d["ranked"], d["flagged"])]
            ax.barh(y, d["value"], color=colours, hatch=None, edgecolor="none")
            for yi, (_, row) in zip(y, d.iterrows()):
                if row["flagged"]:
                    ax.barh(yi, row["value"], color="none", edgecolor="0.5", hatch="///", lw=0)
            err = np.vstack([d["value"] - d["ci_lo"], d["ci_hi"] - d["value"]]).clip(min=0)
            ax.errorbar(d["value"], y, xerr=err, fmt="none", ecolor="k", elinewidth=0.8, capsize=2)
            labels = [f"{g} (n={n})" for g, n in zip(d["group"], d["images"])]
            ax.set_yticks(y, labels, fontsize=fontsize)
            pct = "unit" in d.columns and bool((d["unit"] == "%").all())
            lo, hi = (-1.0, 1.0) if "similarity" in metric else (0.0, 100.0 if pct else 1.0)
            ax.set_xlim(lo, hi)
            ax.axvline(0, color="0.3", lw=0.6) if lo < 0 else None
            ax.set_xlabel("%" if pct else ("cosine" if lo < 0 else "proportion"), fontsize=fontsize)
            ax.tick_params(axis="x", labelsize=fontsize)
            ax.set_title(f"{metric} by {grouping}", fontsize=fontsize + 1)
            ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=fontsize + 2)
    fig.tight_layout()
    return fig


def rarity_plot(contrasts: pd.DataFrame, metric: str, training: pd.DataFrame | None = None, target: str | None = None):
    """Gap ``rest - rare`` (with intervals, one marker per seed, mean line) against the rare group's share of
    the training images (log axis; the control ``fraction = 1`` is the rightmost point), and beside it the
    rare group's and the others' value. Contrasts in percent (a ``unit`` column of ``"%"``, as
    :func:`vlnb.fairness.rarity_experiment` writes them) are drawn on -100..100 points and 0..100 %, proportions
    on [-1, 1] and [0, 1]."""

    d = contrasts[contrasts["metric"] == metric].copy()
    if d.empty:
        raise ValueError(f"rarity_plot: no rows for metric {metric!r}")
    pct = "unit" in d.columns and bool((d["unit"] == "%").all())
    top = 100.0 if pct else 1.0
    if training is not None:
        d = d.merge(training[["fraction", "seed", "train_rare_pct"]], on=["fraction", "seed"])
        d["x"] = d["train_rare_pct"].clip(lower=1e-2)  # a log axis: a share of 0 % sits at 0.01 %
        xlabel = f"% of training images showing {target or 'the rare value'}"
    else:
        d["x"] = d["fraction"]
        xlabel = "rare fraction (1 = control)"
    seeds = sorted(d["seed"].unique())
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.4))
    spread = {s: 1 + 0.06 * (i - (len(seeds) - 1) / 2) for i, s in enumerate(seeds)}  # jitter seeds apart
    for s in seeds:
        e = d[d["seed"] == s].sort_values("x")
        x = e["x"] * spread[s]
        a1.errorbar(x, e["gap"], yerr=np.vstack([e["gap"] - e["gap_lo"], e["gap_hi"] - e["gap"]]), fmt="o", ms=4,
                    capsize=2, alpha=0.8, label=f"seed {s}")
        a2.plot(e["x"], e["target_value"], "o-", color="C3", alpha=0.5, ms=3)
        a2.plot(e["x"], e["rest_value"], "s-", color="C0", alpha=0.5, ms=3)
    m = d.groupby("x")[["gap", "target_value", "rest_value"]].mean().sort_index()
    a1.plot(m.index, m["gap"], "k-", lw=1.2, label="mean over seeds")
    a1.axhline(0, color="0.4", lw=0.8, ls="--")
    a1.set_xscale("log")
    a1.set_xlabel(xlabel, fontsize=8)
    a1.set_ylabel(f"others − {target or 'rare'}{' (points)' if pct else ''}\n{metric}", fontsize=8)
    a1.set_ylim(-top, top)
    a1.legend(fontsize=7)
    a1.set_title("planted gap per seed (whiskers: bootstrap interval) and its mean", fontsize=9)
    a2.plot(m.index, m["target_value"], "o-", color="C3", lw=2, label=target or "rare group")
    a2.plot(m.index, m["rest_value"], "s-", color="C0", lw=2, label="all other groups")
    a2.set_xscale("log")
    a2.set_ylim(0, top)
    a2.set_xlabel(xlabel, fontsize=8)
    a2.set_ylabel(f"{metric}{' (%)' if pct else ''}", fontsize=8)
    a2.legend(fontsize=7)
    a2.set_title("value per group (thin: seeds, thick: mean)", fontsize=9)
    for a in (a1, a2):
        a.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))  # 0.5, 1, 10 rather than 10^0
        a.grid(alpha=0.3)
        a.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


__all__ = ["group_bars", "rarity_plot"]
