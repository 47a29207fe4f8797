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
