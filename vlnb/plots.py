"""Figures shared by the chapters (matplotlib + seaborn). Each function returns the Figure."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Mapping

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


def published_markers(part: pd.DataFrame, published: pd.DataFrame | None, entries: list, ks: list,
                      width: float) -> list[tuple[float, float]]:
    """``(x, recall)`` of the published numbers drawn beside the bars of one panel (one data set, one direction).

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
        hub = rows["hub_id"].iloc[0]
        stage = rows["stage"].iloc[0] if "stage" in rows else protocol_stage(rows["protocol"].iloc[0])
        if not isinstance(hub, str) or not hub:
            continue
        for _, r in pub[(pub["hub_id"] == hub) & (pub_stage == stage)].iterrows():
            if r["k"] in ks:
                out.append((entries.index(e) - 0.4 + width * (ks.index(r["k"]) + 0.5), float(r["recall"])))
    return out


def recall_bars(df: pd.DataFrame, published: pd.DataFrame | None = None, title: str | None = None):
    """Grouped bars of Recall@K: one panel per (dataset, direction), bars per model/protocol, hue = k.

    ``df``: a tidy retrieval table (``model, dataset, protocol, direction, k, recall`` [+ ``chance``]);
    chance levels are drawn as short black ticks; ``published`` rows (:func:`vlnb.eval.published_retrieval`) as
    hollow markers beside the bars of the same checkpoint and stage (:func:`published_markers`).
    """
    if df.empty:
        raise ValueError("recall_bars: empty table")
    df = df.assign(entry=df["model"] + "\n" + df["protocol"].str.wrap(28))
    panels = df[["dataset", "direction"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 2.2 * df["entry"].nunique()) * len(panels) / 1.6, 4.2),
                             squeeze=False, sharey=True)
    n_published = 0
    for ax, (ds, d) in zip(axes[0], panels):
        part = df[(df["dataset"] == ds) & (df["direction"] == d)]
        sns.barplot(data=part, x="entry", y="recall", hue="k", ax=ax, palette="crest")
        entries = list(dict.fromkeys(part["entry"]))
        ks = sorted(part["k"].unique())
        width = 0.8 / len(ks)
        if "chance" in part:
            for _, r in part.iterrows():
                x = entries.index(r["entry"]) - 0.4 + width * (ks.index(r["k"]) + 0.5)
                ax.plot([x - width / 2, x + width / 2], [r["chance"]] * 2, color="black", lw=1.5)
        for x, y in published_markers(part, published, entries, ks, width):
            ax.plot(x, y, marker="D", mfc="none", mec="crimson", ms=7)
            n_published += 1
        ax.set_title(f"{ds} · {'image→text' if d == 'i2t' else 'text→image'}")
        ax.set_xlabel("")
        ax.set_ylabel("Recall@K (%)")
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", labelsize=8)
    # the legend names only what is drawn: the published marker appears when at least one was joined
    legend = "black ticks: chance" + ("; red diamonds: published (same checkpoint and stage)" if n_published else "")
    fig.suptitle(f"{title} ({legend})" if title else legend)
    fig.n_published = n_published  # how many published markers were drawn (for the prose)
    fig.tight_layout()
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
        ax.errorbar(x, d["accuracy"], yerr=[(d["accuracy"] - d["ci_lo"]).clip(lower=0),
                                            (d["ci_hi"] - d["accuracy"]).clip(lower=0)],
                    fmt="o", capsize=3, label=name)
    for i, t in enumerate(types):
        ax.hlines(float(table.loc[table["type"] == t, "chance"].iloc[0]), i - 0.45, i + 0.45, colors="grey",
                  linestyles="--", linewidth=1)
    ax.set_xticks(range(len(types)), ["\n".join(textwrap.wrap(t, 14)) for t in types], fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("true caption preferred")
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
