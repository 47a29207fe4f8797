"""Figures of the interpretability chapter. Each function returns the matplotlib Figure."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from .pointing import Example, energy_share


def _show(ax, image: np.ndarray):
    ax.imshow(image, interpolation="nearest" if max(image.shape[:2]) <= 96 else "antialiased")
    ax.set_xticks([])
    ax.set_yticks([])


def _contours(ax, target: np.ndarray, distractor: np.ndarray | None = None):
    if target.any():
        ax.contour(target.astype(float), levels=[0.5], colors="lime", linewidths=1.2)
    if distractor is not None and distractor.any():
        ax.contour(distractor.astype(float), levels=[0.5], colors="white", linewidths=1.0, linestyles="dashed")


def overlay_figure(examples: Mapping[str, Sequence[Example]], n: int | None = None, methods: Sequence[str] | None = None,
                   cmap: str = "jet", alpha: float = 0.5, title: str | None = None):
    """Side by side: per row one pair (image with the target mask in green and the distractor dashed white),
    then for each model and method its map over the image the model saw, titled with the target's energy
    share. ``examples``: ``{model name: [Example, ...]}`` for the same pairs (matched by ``pair_index``);
    ``methods``: the methods to show (None: all)."""
    if not examples:
        raise ValueError("overlay_figure: no examples")
    first = next(iter(examples.values()))
    idx = [e.pair_index for e in first][: n or len(first)]
    by_model = {name: {e.pair_index: e for e in exs} for name, exs in examples.items()}
    cols = [(name, m) for name, exs in examples.items() if exs for m in exs[0].maps if methods is None or m in methods]
    if not cols:
        raise ValueError(f"overlay_figure: none of the methods {methods} was computed")
    fig, axes = plt.subplots(len(idx), 1 + len(cols), figsize=(2.1 * (1 + len(cols)), 2.35 * len(idx)), squeeze=False)
    for r, pi in enumerate(idx):
        ex0 = by_model[next(iter(examples))][pi]
        ax = axes[r, 0]
        _show(ax, ex0.image)
        _contours(ax, ex0.target_mask, ex0.distractor_mask)
        ax.set_title("\n".join(textwrap.wrap(f'"{ex0.pair.text}"', 28)[:3]), fontsize=7)
        for c, (name, method) in enumerate(cols, start=1):
            ax = axes[r, c]
            ex = by_model[name].get(pi)
            if ex is None:
                ax.axis("off")
                continue
            _show(ax, ex.image)
            ax.imshow(ex.maps[method], cmap=cmap, alpha=alpha, vmin=0, vmax=1)
            _contours(ax, ex.target_mask)
            e = energy_share(ex.maps[method], ex.target_mask)[0] if ex.target_mask.any() else float("nan")
            ax.set_title(f"{name}\n{method}  E={e:.2f}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def entropy_figure(table: pd.DataFrame, rows: str = "all"):
    """Normalised attention entropy ``H / log(n)`` per layer (heads as dots, mean as line), one panel per
    model and block; 1 = uniform attention over all tokens, 0 = a single token."""
    t = table[table["rows"] == rows]
    if t.empty:
        raise ValueError(f"entropy_figure: no rows with rows={rows!r}")
    panels = list(t.groupby(["model", "block"], sort=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False, sharey=True)
    for ax, ((model, block), g) in zip(axes[0], panels):
        ax.scatter(g["layer"], g["normalised"], s=10, alpha=0.6, label="heads")
        mean = g.groupby("layer")["normalised"].mean()
        ax.plot(mean.index, mean.values, color="black", lw=1.2, label="mean over heads")
        ax.set_title(f"{model}\n{block} ({int(g['n_tokens'].iloc[0])} tokens)", fontsize=8)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1.05)
    axes[0, 0].set_ylabel("entropy / log(n tokens)")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def pointing_figure(summary: pd.DataFrame):
    """Mean energy share on the target vs the distractor (bars) with the target's bootstrap interval, and the
    uniform-map baseline (the target's mean area share) as a tick, per model, data set and method."""
    s = summary.dropna(subset=["energy_target"]).reset_index(drop=True)
    if s.empty:
        raise ValueError("pointing_figure: nothing to plot")
    labels = [f"{r.model} · {r.dataset}\n{r.method}" for r in s.itertuples()]
    y = np.arange(len(s))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(s) + 1.2))
    ax.barh(y - 0.2, s["energy_target"], height=0.4, color="tab:green", label="target (named object)",
            xerr=[s["energy_target"] - s["energy_target_lo"], s["energy_target_hi"] - s["energy_target"]],
            error_kw={"lw": 0.8})
    ax.barh(y + 0.2, s["energy_distractor"], height=0.4, color="tab:gray", label="distractor")
    ax.scatter(s["area_target"], y - 0.2, marker="|", s=200, color="black", label="uniform map (target area)")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("share of map energy inside the mask")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


__all__ = ["entropy_figure", "overlay_figure", "pointing_figure"]
