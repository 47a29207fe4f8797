"""Figures shared by the chapters (matplotlib + seaborn). Each function returns the Figure."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Collection, Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .data.images import try_open_rgb
from .eval.published import protocol_stage


def image_grid(df: pd.DataFrame, n: int = 12, ncols: int = 4, seed: int = 0, width: int = 34, title: str | None = None):
    """A grid of ``n`` random images of a manifest, each with its first caption (or its labels)."""
    if len(df) == 0:
        raise ValueError("image_grid: the manifest is empty")
    rows = df.sample(n=min(n, len(df)), random_state=seed)
    nrows = int(np.ceil(len(rows) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (_, r) in zip(axes.ravel(), rows.iterrows()):
        im, reason = try_open_rgb(r["image"])
        if im is None:
            ax.text(0.5, 0.5, f"unreadable:\n{reason}", ha="center", va="center", fontsize=8)
            continue
        ax.imshow(im, interpolation="nearest" if max(im.size) <= 96 else "antialiased")
        text = r["captions"][0] if len(r["captions"]) else ", ".join(r["labels"])
        ax.set_title("\n".join(textwrap.wrap(text, width)[:3]), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def caption_lengths(dfs: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Tidy table: one row per caption with its data set and length in words."""
    rows = [
        (name, split, len(c.split()))
        for name, df in dfs.items()
        for split, caps in zip(df["split"], df["captions"])
        for c in caps
    ]
    return pd.DataFrame(rows, columns=["dataset", "split", "words"])


def caption_length_plot(dfs: Mapping[str, pd.DataFrame]):
    """Distribution of caption lengths (words) per data set."""
    lengths = caption_lengths(dfs)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.histplot(lengths, x="words", hue="dataset", stat="probability", common_norm=False, discrete=True,
                 element="step", ax=ax)
    ax.set_xlabel("caption length (words)")
    ax.set_ylabel("share of captions")
    fig.tight_layout()
    return fig


def label_counts(df: pd.DataFrame, column: str = "labels") -> pd.DataFrame:
    """How many images carry each label (list column) or value (scalar column)."""
    vals = df[column]
    c = Counter(x for v in vals for x in v) if len(vals) and isinstance(vals.iloc[0], (list, tuple, np.ndarray)) else Counter(vals)
    out = pd.DataFrame(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])), columns=[column, "images"])
    out["share"] = out["images"] / max(len(df), 1)
    return out


def label_frequency_plot(df: pd.DataFrame, column: str = "labels", top: int = 20, title: str | None = None):
    """Horizontal bars: the ``top`` most frequent labels and the share of images carrying each."""
    counts = label_counts(df, column).head(top)
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(counts) + 1.0))
    sns.barplot(counts, y=column, x="share", color="tab:blue", ax=ax)
    ax.set_xlabel("share of images")
    ax.set_ylabel("")
    ax.set_xlim(0, 1)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def published_markers(part: pd.DataFrame, published: pd.DataFrame | None, entries: list,
                      ks: list) -> list[tuple[str, int, float]]:
    """``(entry, k, recall)`` of the published numbers drawn beside the bars of one panel (one data set, one
    direction).

    A published row is joined to a measured bar on the **checkpoint** (``hub_id``: the hub id the model was
    loaded from, never its display name) and the **stage** (``"itc"`` or ``"itm"``: an ITC row is not drawn
    beside an ITM re-ranked bar), plus data set, direction and k. Bars of models without a ``hub_id`` (local
    folders, the book's own models) get none.
    """
    if published is None or not len(published) or "hub_id" not in part or part.empty:
        return []

    pub = published[(published["dataset"] == part["dataset"].iloc[0])
                    & (published["direction"] == part["direction"].iloc[0])]
    pub_stage = pub["stage"] if "stage" in pub else pub["protocol"].map(protocol_stage)
    out = []
    for e in entries:
        rows = part[part["entry"] == e]
        if rows.empty:
            continue
        hub = rows["hub_id"].iloc[0]
        stage = rows["stage"].iloc[0] if "stage" in rows else protocol_stage(rows["protocol"].iloc[0])
        if not isinstance(hub, str) or not hub:
            continue
        for _, r in pub[(pub["hub_id"] == hub) & (pub_stage == stage)].iterrows():
            if r["k"] in ks:
                out.append((e, int(r["k"]), float(r["recall"])))
    return out


DIRECTIONS = {"t2i": "text → image", "i2t": "image → text"}


def recall_bars(df: pd.DataFrame, per_seed: pd.DataFrame | None = None, published: pd.DataFrame | None = None,
                title: str | None = None, entry: str | None = None, order: list | None = None,
                hatched: Collection[str] = ()):
    """Recall@K bars, the one figure of every chapter's retrieval table: a row of panels per data set, one panel
    per direction (text → image, then image → text), R@K on the x axis and one bar per entry.

    ``df``: a tidy retrieval table (``dataset, direction, k, recall`` + ``chance``, and ``ci_lo, ci_hi`` when
    the recall is a mean with an interval). An entry is the ``entry`` column's value (chapter 3: ``"method"``),
    by default ``model · protocol``; bars follow ``order`` (default: the table's order), those in ``hatched``
    are hatched. Drawn with the bars: chance as a black tick on each bar; the interval as an error bar; each
    seed's value as a dot (``per_seed``: the same table with a ``seed`` column, one row per seed); ``published``
    rows (:func:`vlnb.eval.published_retrieval`) as hollow red diamonds beside the bars of the same checkpoint
    and stage (:func:`published_markers`). ``fig.n_published`` counts the diamonds drawn (for the prose).
    """
    if df.empty:
        raise ValueError("recall_bars: empty table")

    def with_entry(t: pd.DataFrame) -> pd.DataFrame:
        return t.assign(entry=t[entry] if entry else t["model"] + " · " + t["protocol"])

    df = with_entry(df)
    per_seed = with_entry(per_seed) if per_seed is not None else None
    entries = list(dict.fromkeys(order if order is not None else df["entry"]))
    datasets = list(dict.fromkeys(df["dataset"]))
    directions = [d for d in DIRECTIONS if d in set(df["direction"])]
    ks = sorted(df["k"].unique())
    width = 0.8 / len(entries)
    fig, axes = plt.subplots(len(datasets), len(directions), figsize=(5.5 * len(directions), 3.2 * len(datasets)),
                             squeeze=False, sharey=True)
    n_published = n_seeds = 0
    for r, ds in enumerate(datasets):
        for c, d in enumerate(directions):
            ax = axes[r, c]
            part = df[(df["dataset"] == ds) & (df["direction"] == d)]

            def x_of(e_i: int) -> np.ndarray:
                return np.arange(len(ks)) + (e_i - (len(entries) - 1) / 2) * width

            for e_i, e in enumerate(entries):
                rows = part[part["entry"] == e]
                row = rows.groupby("k")[["recall", "chance"] if "chance" in rows else ["recall"]].mean().reindex(ks)
                x = x_of(e_i)
                err = None
                if {"ci_lo", "ci_hi"} <= set(rows.columns):
                    ci = rows.groupby("k")[["ci_lo", "ci_hi"]].mean().reindex(ks)
                    err = np.vstack([row["recall"] - ci["ci_lo"], ci["ci_hi"] - row["recall"]])
                hatch = e in hatched
                ax.bar(x, row["recall"], width * 0.9, yerr=err, capsize=3, color=f"C{e_i % 10}", label=e,
                       hatch="//" if hatch else None, edgecolor="k" if hatch else "white")
                if "chance" in row:
                    ax.hlines(row["chance"], x - width * 0.45, x + width * 0.45, colors="black", lw=1.5)
                if per_seed is not None:
                    ps = per_seed[(per_seed["dataset"] == ds) & (per_seed["direction"] == d) & (per_seed["entry"] == e)]
                    if ps["seed"].notna().any():
                        for k_i, k in enumerate(ks):
                            v = ps[ps["k"] == k]["recall"]
                            ax.plot(np.full(len(v), x[k_i]), v, "k.", ms=4, zorder=3)
                            n_seeds += len(v)
            for e, k, y in published_markers(part, published, entries, ks):
                ax.plot(x_of(entries.index(e))[ks.index(k)], y, marker="D", mfc="none", mec="crimson", ms=7)
                n_published += 1
            ax.set_xticks(np.arange(len(ks)), [f"R@{k}" for k in ks])
            ax.set_ylim(0, 100)
            ax.set_ylabel("Recall@K (%)")
            ax.set_title(f"{ds}: {DIRECTIONS[d]}", fontsize=10)
    # the legend names only what is drawn: seeds and published markers appear when at least one was drawn
    legend = "black ticks: chance"
    if n_seeds:
        legend += "; dots: one per seed"
    if n_published:
        legend += "; red diamonds: published (same checkpoint and stage)"
    handles, labels = axes[0, 0].get_legend_handles_labels()
    height = fig.get_figheight()
    ncol = min(len(labels), 4)
    legend_h = 0.25 * int(np.ceil(len(labels) / max(ncol, 1))) + 0.2
    fig.tight_layout(rect=(0, 0, 1, 1 - (legend_h + 0.3) / height))  # room above the panels for legend and title
    fig.legend(handles, labels, loc="upper center", ncol=ncol, fontsize=8, bbox_to_anchor=(0.5, 1 - 0.3 / height))
    fig.suptitle(f"{title} ({legend})" if title else legend, y=1.0, fontsize=10)
    fig.n_published = n_published  # how many published markers were drawn (for the prose)
    return fig


def retrieval_gallery(run, manifest: pd.DataFrame, n_queries: int = 4, k: int = 5, seed: int = 0,
                      title: str | None = None):
    """Text→image examples of a :class:`vlnb.eval.compare.RetrievalRun`: each row is a caption and its
    top-``k`` images, the correct image framed in green (wrong ones in grey)."""
    rng = np.random.default_rng(seed)
    queries = rng.choice(len(run.texts), size=min(n_queries, len(run.texts)), replace=False)
    src = dict(zip(manifest["image_id"], manifest["image"]))
    fig, axes = plt.subplots(len(queries), k, figsize=(2.0 * k, 2.35 * len(queries)), squeeze=False)
    for row, q in zip(axes, queries):
        top = run.top_images(int(q), k)
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(top):
                ax.axis("off")
                continue
            im, _ = try_open_rgb(src[run.image_ids[top[j]]])
            if im is not None:
                ax.imshow(im, interpolation="nearest" if max(im.size) <= 96 else "antialiased")
            ok = top[j] == int(run.text_to_image[q])
            for s in ax.spines.values():
                s.set_edgecolor("tab:green" if ok else "0.75")
                s.set_linewidth(4 if ok else 1)
        row[0].set_ylabel("\n".join(textwrap.wrap(run.texts[q], 22)[:4]), fontsize=8, rotation=0, ha="right",
                          va="center")
    fig.suptitle(title or f"{run.model} on {run.dataset}: top-{k} images per caption (green = correct)")
    fig.tight_layout()
    return fig


def probe_plot(table: pd.DataFrame, ax=None, title: str | None = None):
    """Compositionality probe (:mod:`vlnb.eval.compositionality`): accuracy with its bootstrap CI per negative
    type (x) and model/head (colour); each type's chance level as a dashed line."""
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.8))
    types = list(dict.fromkeys(table["type"]))
    lab = [f"{m} ({h})" for m, h in zip(table["model"], table["head"])]
    labels = list(dict.fromkeys(lab))
    width = 0.8 / max(1, len(labels))
    for j, name in enumerate(labels):
        d = table[[x == name for x in lab]].set_index("type")
        x = np.array([types.index(t) for t in d.index]) - 0.4 + width * (j + 0.5)
        acc, lo, hi = 100 * d["accuracy"], 100 * d["ci_lo"], 100 * d["ci_hi"]  # percent, like the book's tables
        ax.errorbar(x, acc, yerr=[(acc - lo).clip(lower=0), (hi - acc).clip(lower=0)], fmt="o", capsize=3, label=name)
    for i, t in enumerate(types):
        ax.hlines(100 * float(table.loc[table["type"] == t, "chance"].iloc[0]), i - 0.45, i + 0.45, colors="grey",
                  linestyles="--", linewidth=1)
    ax.set_xticks(range(len(types)), ["\n".join(textwrap.wrap(t, 14)) for t in types], fontsize=8)
    ax.set_ylim(0, 102)
    ax.set_ylabel("true caption preferred (%)")
    ax.set_title(title or "Compositionality probe (95% bootstrap CI over images; dashed: chance)")
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    return ax


def query_time_plot(queries: pd.DataFrame, ax=None, title: str | None = None):
    """Time to answer one text query vs gallery size N (:func:`vlnb.eval.cost.measure_cost`), log-log: one
    line per (model, protocol); measured points filled, extrapolated ones hollow on a dashed line."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    for i, ((m, p), d) in enumerate(queries.groupby(["model", "protocol"], sort=False)):
        d = d.sort_values("n_gallery")
        c = f"C{i % 10}"
        meas = d["basis"] == "measured"
        ax.plot(d["n_gallery"], d["query_s"] * 1e3, color=c, linestyle="-" if meas.all() else "--",
                label=f"{m}: {p}")
        ax.scatter(d.loc[meas, "n_gallery"], d.loc[meas, "query_s"] * 1e3, color=c, zorder=3)
        ax.scatter(d.loc[~meas, "n_gallery"], d.loc[~meas, "query_s"] * 1e3, facecolors="none", edgecolors=c,
                   zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gallery size N (images)")
    ax.set_ylabel("time per text query (ms)")
    ax.set_title(title or "Query cost vs gallery size (hollow: extrapolated from the per-pair time)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return ax
