"""Figures of the robustness chapter: example corruptions, metric-vs-severity curves, relative heatmap, and the
drops of several models against a reference with their intervals."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from .perturbations import corruption


def corruption_examples(pixels: torch.Tensor, corruptions: Sequence[str], severities: Sequence[int] = (0, 1, 3, 5),
                        ids: Sequence | None = None, seed: int = 0, masks=None, reference_size: int | None = 224,
                        fill: float = 0.5, size: float = 1.4):
    """A grid: one row per corruption, one column per severity, of the first image of ``pixels``
    (``(B, 3, H, W)`` in [0, 1]; the whole batch is perturbed so per-image seeding is exercised)."""
    if pixels.ndim != 4 or len(pixels) == 0:
        raise ValueError(f"pixels must be a non-empty (B, 3, H, W) batch, got {tuple(pixels.shape)}")
    fig, axes = plt.subplots(len(corruptions), len(severities), squeeze=False,
                             figsize=(size * len(severities) + 1.2, size * len(corruptions)))
    for r, c in enumerate(corruptions):
        for k, s in enumerate(severities):
            p = corruption(c, s, seed=seed, reference_size=reference_size,
                           masks=masks if c == "occlusion_object" else None, fill=fill)
            img = p(pixels, ids=ids)[0].permute(1, 2, 0).cpu().numpy()
            ax = axes[r, k]
            ax.imshow(img, interpolation="nearest" if img.shape[0] <= 96 else "antialiased")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"severity {s}", fontsize=8)
            if k == 0:
                ax.set_ylabel(c.replace("_", "\n"), fontsize=7)
    fig.tight_layout()
    return fig


def _label(row) -> str:
    return f"{row['model']} · {row['dataset']}"


def _select(df: pd.DataFrame, metrics: Sequence[tuple[str, str]] | None) -> pd.DataFrame:
    """Rows of ``df`` whose ``(task, metric)`` is one of ``metrics`` (all rows when None)."""
    if metrics is None:
        return df
    return df[pd.Series(list(zip(df["task"], df["metric"])), index=df.index).isin(set(map(tuple, metrics)))]


def _curves(fig, df: pd.DataFrame, relative: bool, ncols: int, legend_loc: dict):
    """Draw one panel per corruption of ``df`` into ``fig`` (a figure or a subfigure)."""
    cors = list(dict.fromkeys(df["corruption"]))
    nrows = int(np.ceil(len(cors) / ncols))
    axes = fig.subplots(nrows, min(ncols, len(cors)), squeeze=False, sharey=True)
    col = "relative" if relative else "value"
    styles = {}
    for ax, c in zip(axes.ravel(), cors):
        for (m, d, t, met), g in df[df["corruption"] == c].groupby(["model", "dataset", "task", "metric"], sort=False):
            g = g.sort_values("severity")
            key = (m, d, t, met)
            if key not in styles:
                styles[key] = {"color": f"C{len(styles) % 10}", "marker": "osd^v<>ph*"[len(styles) % 10]}
            ax.plot(g["severity"], g[col], label=f"{m} · {d} · {t} {met}", lw=1.4, ms=3.5, **styles[key])
        ax.set_title(c, fontsize=9)
        ax.set_xticks(range(6))
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(cors):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("relative to clean" if relative else "value (%)")
    for ax in axes[-1]:
        ax.set_xlabel("severity")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, **{"fontsize": 7, **legend_loc})
    return axes


def severity_curves(results: pd.DataFrame, metrics: Sequence[tuple[str, str]] | None = None, relative: bool = False,
                    ncols: int = 4, size: float = 2.6, by_dataset: bool = False):
    """Metric vs severity (0 = clean), one panel per corruption, one line per (model, data set, metric).

    ``metrics``: ``(task, metric)`` pairs to draw (default: every pair in ``results``); ``relative``
    draws ``value / clean`` instead of the value (percent); ``by_dataset``: one block of panels per data set,
    titled with it, so that each panel holds only the lines of one data set."""
    if results.empty:
        raise ValueError("severity_curves: the results table is empty")
    df = _select(results, metrics)
    if metrics is not None and df.empty:
        raise ValueError(f"none of the metrics {list(metrics)} is in the results")
    cors = list(dict.fromkeys(df["corruption"]))
    nrows = int(np.ceil(len(cors) / ncols))
    width = size * min(ncols, len(cors)) + 2.5
    if not by_dataset:
        fig = plt.figure(figsize=(width, size * nrows))
        _curves(fig, df, relative, ncols, {"loc": "center left", "bbox_to_anchor": (1.0, 0.5)})
        fig.tight_layout()
        return fig
    datasets = list(dict.fromkeys(df["dataset"]))
    # each block's legend goes under its panels, two columns at a readable size: the figure stays as wide as its
    # panels, so the page does not shrink it to make room for a legend at the side
    n_lines = [df[df["dataset"] == ds].groupby(["model", "task", "metric"]).ngroups for ds in datasets]
    heights = [size * nrows + 0.7 + 0.24 * np.ceil(n / 2) for n in n_lines]
    fig = plt.figure(figsize=(width - 1.5, sum(heights)), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(datasets), 1, height_ratios=heights))
    for sub, ds in zip(subs, datasets):
        _curves(sub, df[df["dataset"] == ds], relative, ncols, {"loc": "outside lower center", "ncol": 2, "fontsize": 9})
        sub.suptitle(ds, fontsize=11, fontweight="bold")
    return fig


def _severity_label(severities) -> str:
    s = sorted(int(x) for x in set(severities))
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}–{s[-1]}"
    return ", ".join(map(str, s[:-1])) + f" and {s[-1]}" if len(s) > 1 else str(s[0])


def relative_heatmap(results: pd.DataFrame, metrics: Sequence[tuple[str, str]] | None = None, severity: int | None = None,
                     size: float = 0.75, informative: pd.DataFrame | None = None):
    """Rows: (model, data set, task metric); columns: corruptions; cells: mean ``value / clean`` over the
    severities that were run (or at ``severity``), annotated; the title names those severities.

    ``informative``: a table with ``model, dataset, task, metric, informative`` (e.g.
    :func:`vlnb.robustness.sweep.degradation_table`): rows whose clean value is under twice chance are greyed
    out and labelled "at chance" instead of coloured — a model at chance has nothing to lose, which a ratio
    near 1 would otherwise paint as "robust"."""
    df = results[results["severity"] > 0] if severity is None else results[results["severity"] == severity]
    df = _select(df, metrics)
    if df.empty:
        raise ValueError("relative_heatmap: nothing to draw for that selection")
    df = df.assign(row=df["model"] + " · " + df["dataset"] + " · " + df["task"] + " " + df["metric"])
    table = df.pivot_table(index="row", columns="corruption", values="relative", aggfunc="mean", sort=False)
    at_chance = pd.Series(False, index=table.index)
    if informative is not None and len(informative):
        inf = informative.drop_duplicates(["model", "dataset", "task", "metric"])
        flags = dict(zip(inf["model"] + " · " + inf["dataset"] + " · " + inf["task"] + " " + inf["metric"],
                         ~inf["informative"].astype(bool)))
        at_chance = pd.Series([bool(flags.get(r, False)) for r in table.index], index=table.index)
    fig, ax = plt.subplots(figsize=(size * table.shape[1] + 3.5, 0.45 * table.shape[0] + 1.6))
    mask = np.zeros(table.shape, dtype=bool)
    mask[at_chance.to_numpy()] = True
    sns.heatmap(table, annot=True, fmt=".2f", cmap="RdYlGn", vmin=0, vmax=1, ax=ax, mask=mask,
                cbar_kws={"label": "corrupted / clean"}, annot_kws={"fontsize": 7})
    for i, flag in enumerate(at_chance):
        if flag:
            ax.add_patch(plt.Rectangle((0, i), table.shape[1], 1, color="0.85", zorder=0))
            ax.text(table.shape[1] / 2, i + 0.5, "at chance: not informative", ha="center", va="center", fontsize=7,
                    color="0.35")
    ax.set_xlabel("")
    ax.set_ylabel("")
    sev = _severity_label(df["severity"]) if severity is None else str(severity)
    ax.set_title("relative robustness" + (f" (mean over severities {sev})" if severity is None else f" at severity {sev}"),
                 fontsize=9)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def comparison_forest(comparison: pd.DataFrame, corruption: str = "mean", size: float = 0.42):
    """The drops of :func:`vlnb.robustness.intervals.reference_comparison` with their intervals: one row per model,
    data set and measure (``corruption``: ``"mean"`` over the corruptions, or one corruption), the model's drop
    (colour) above the reference's drop on the same images (grey); left in points (clean - worst severity), right
    relative to the clean value (percent of it lost) when the table has it. Each label ends with the verdict of
    the paired difference. Rows whose clean value is under twice chance are drawn faint and labelled "at chance"."""
    df = comparison[comparison["corruption"] == corruption].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"comparison_forest: no row for corruption {corruption!r}")
    views = [("", "verdict", "drop, points")]
    if "rel_drop" in df and df["rel_drop"].notna().any():
        views.append(("rel_", "rel_verdict", "drop, % of the clean value"))
    fig, axes = plt.subplots(1, len(views), sharey=True, squeeze=False,
                             figsize=(4.2 * len(views) + 2.8, size * 2 * len(df) + 1.4))
    words = {"more": "loses more", "less": "loses less", "same": "not told apart"}
    for ax, (pre, vcol, xlabel) in zip(axes[0], views):
        for i, r in df.iterrows():
            y, alpha = -2.0 * i, (1.0 if r["compared"] else 0.3)
            for what, dy, fmt, color, label in (("", 0.3, "o", "C0", "model"),
                                                 ("reference_", -0.3, "s", "0.45",
                                                  f"reference ({r['reference']}, same images)")):
                v, lo, hi = (r[f"{what}{pre}drop{x}"] for x in ("", "_lo", "_hi"))
                if pd.isna(v):
                    continue
                ax.errorbar(v, y + dy, xerr=[[v - lo], [hi - v]], fmt=fmt, color=color, alpha=alpha, ms=5 if fmt == "o"
                            else 4, capsize=3, label=label if i == 0 else None)
        ax.axvline(0, color="black", lw=0.8)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel(f"{xlabel}\n({'mean over corruptions' if corruption == 'mean' else corruption}, "
                      f"{100 * df['level'].iloc[0]:.0f} % bootstrap CI over images)", fontsize=8)
    labels = []
    for _, r in df.iterrows():
        task = {"retrieval": "ITC", "itm-rerank": "ITM re-rank"}.get(r["task"], r["task"].replace("zeroshot:", "zero-shot "))
        verdict = ", ".join(f"{words.get(r[v], 'at chance')} ({'relative' if pre else 'points'})"
                            for pre, v, _ in views) if r["compared"] else "at chance"
        labels.append(f"{r['model']} · {r['dataset']}\n{task} {r['metric']} — {verdict}")
    axes[0, 0].set_yticks([-2.0 * i for i in range(len(df))])
    axes[0, 0].set_yticklabels(labels, fontsize=7)
    axes[0, -1].legend(fontsize=7, loc="lower right", frameon=False)
    fig.tight_layout()
    return fig
