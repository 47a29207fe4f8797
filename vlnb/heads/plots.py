"""Chapter 3's figures: recall bars (drawn by :func:`vlnb.plots.recall_bars`), alignment/uniformity, PCA before/after the heads, retrieval galleries."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import plots as shared_plots
from ..data.images import try_open_rgb
from .experiment import HeadsExperiment, Method
from .geometry import paired_embeddings
from .model import HEAD_KINDS


def method_order(methods: Sequence[str]) -> list[str]:
    """Table labels in the chapter's order: :class:`Method` order (pretrained, re-ranked, linear, MLP, then the
    untrained heads); a label that is no method (e.g. "frozen features (no head)") sits with the heads."""
    order = list(Method)

    def key(label: str):
        m = Method.of(label)
        return (order.index(m) if m is not None else order.index(Method.LINEAR), label)

    return sorted(dict.fromkeys(methods), key=key)


def recall_bars(summary: pd.DataFrame, per_seed: pd.DataFrame | None = None, title: str | None = None,
                include_untrained: bool = False):
    """Chapter 3's R@K bars (:func:`vlnb.plots.recall_bars`): one bar per method in :func:`method_order`, the
    re-ranked one hatched, with the bootstrap interval of the seed-mean (error bars), each seed's value (dots,
    from ``per_seed`` = :meth:`HeadsExperiment.recall_table`) and chance (black ticks)."""
    s = summary if include_untrained else summary[summary["trained"]]
    methods = method_order(s["method"].unique())
    return shared_plots.recall_bars(s, per_seed, title=title, entry="method", order=methods,
                                    hatched=[m for m in methods if Method.of(m) is Method.RERANK])


def geometry_plot(geo: pd.DataFrame):
    """Alignment (y) against uniformity (x, mean of images and texts), one marker per run; lower-left is
    better on both (Wang & Isola 2020). One panel per data set."""
    datasets = list(dict.fromkeys(geo["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4), squeeze=False)
    methods = method_order(geo["method"].unique())
    for ax, ds in zip(axes[0], datasets):
        g = geo[geo["dataset"] == ds]
        for m_i, m in enumerate(methods):
            p = g[g["method"] == m]
            if len(p):
                u = (p["uniformity_image"] + p["uniformity_text"]) / 2
                ax.scatter(u, p["alignment"], s=40, color=f"C{m_i}", marker="o" if p["trained"].all() else "x",
                           label=m)
        ax.set(xlabel="uniformity (mean of images and texts; lower = more uniform)",
               ylabel="alignment of matched pairs (lower = closer)", title=ds)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _pca2(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def pca_plot(exp: HeadsExperiment, methods: Sequence[str] | None = None, seed: int = 0, n_lines: int = 25):
    """Joint 2-D PCA of image (blue) and text (orange) embeddings per method, with ``n_lines`` random matched
    pairs joined; the "before" panels are the heads at initialisation (and the raw frozen features when
    image and text share a space)."""
    t2i = exp.test.text_to_image
    panels = []
    if exp.test.image_dim == exp.test.text_dim:
        panels.append(("frozen features (no head)", F.normalize(exp.test.pooled, dim=-1), F.normalize(exp.test.text, dim=-1)))
    if methods is None:  # before -> after for each head kind, then the pretrained head
        methods = [m.value for h in HEAD_KINDS for m in (Method.head(h, trained=False), Method.head(h))]
        methods += [Method.UNTRAINED_QFORMER.value, Method.QFORMER.value]  # (absent unless run)
        methods.append(Method.PRETRAINED.value)
    for m in methods:
        runs = [r for r in exp.runs_of(m) if r.image_emb is not None and r.seed in (None, seed)]
        if runs:
            panels.append((m, runs[0].image_emb, runs[0].text_emb))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4), squeeze=False)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(t2i), size=min(n_lines, len(t2i)), replace=False)
    for ax, (name, img, txt) in zip(axes[0], panels):
        _, per_image = paired_embeddings(img, txt, t2i)
        z = _pca2(np.concatenate([per_image.numpy(), txt.numpy()]).astype(np.float64))
        zi, zt = z[: len(per_image)], z[len(per_image):]
        ax.scatter(zt[:, 0], zt[:, 1], s=4, alpha=0.4, color="C1", label="texts")
        ax.scatter(zi[:, 0], zi[:, 1], s=6, alpha=0.6, color="C0", label="images")
        for j in pick:
            i = t2i[j]
            ax.plot([zi[i, 0], zt[j, 0]], [zi[i, 1], zt[j, 1]], color="0.3", lw=0.5, alpha=0.6)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].legend(fontsize=7, loc="best", markerscale=2)
    fig.tight_layout()
    return fig


def gallery_plot(exp: HeadsExperiment, methods: Sequence[str] | None = None, n_queries: int = 3, k: int = 4,
                 seed: int = 0, width: int = 32):
    """Text -> image retrievals: for ``n_queries`` random test captions, each method's top ``k`` images
    (seed ``seed`` for heads); the true image is framed in green, others in grey."""
    wanted = methods or [m for m in method_order(exp.methods(trained_only=True))]
    runs = []
    for m in wanted:
        rs = [r for r in exp.runs_of(m) if r.similarity is not None and r.seed in (None, seed)]
        if rs:
            runs.append(rs[0])
    t2i = exp.test.text_to_image
    queries = np.random.default_rng(seed).choice(len(t2i), size=min(n_queries, len(t2i)), replace=False)
    k = min(k, exp.test.n_images)
    nrows = len(queries) * len(runs)
    fig, axes = plt.subplots(nrows, k + 1, figsize=(1.7 * (k + 1) + 1.2, 1.7 * nrows), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2] + [1] * k})
    sources = list(exp.test.manifest["image"])
    cache: dict[int, object] = {}
    for qi, j in enumerate(queries):
        for ri, r in enumerate(runs):
            row = axes[qi * len(runs) + ri]
            for ax in row:
                ax.set_xticks([]), ax.set_yticks([])
            text = "\n".join(textwrap.wrap(f"“{exp.test.texts[j]}”", width)[:4]) if ri == 0 else ""
            row[0].text(0.0, 0.5, f"{text}\n\n{r.method}" if text else r.method, fontsize=7, va="center")
            row[0].axis("off")
            top = torch.topk(r.similarity[:, j].float(), k).indices.tolist()
            for ax, i in zip(row[1:], top):
                if i not in cache:
                    cache[i] = try_open_rgb(sources[i])[0]
                if cache[i] is not None:
                    ax.imshow(cache[i])
                ok = i == t2i[j]
                for sp in ax.spines.values():
                    sp.set_edgecolor("tab:green" if ok else "0.7")
                    sp.set_linewidth(3 if ok else 0.5)
    fig.tight_layout()
    return fig
