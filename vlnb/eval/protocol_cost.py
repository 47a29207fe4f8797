"""What evaluating with one caption per image costs, measured on the same similarity matrix.

The published protocol ranks *all* of an image's captions (an image→text query hits when any of them is in
the top K). Keeping only each image's first caption turns a ~5-way target into a 1-way target.
:func:`one_caption_cost` evaluates both protocols on the same (images × texts) similarities of a retrieval run
— nothing is re-encoded — and reports the difference with the chance level of each protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from .chance import recall_chance
from .retrieval import recall_at_k


def first_caption_columns(text_to_image: np.ndarray) -> np.ndarray:
    """Indices of the first text of every image (in text order)."""
    t2i = np.asarray(text_to_image)
    _, first = np.unique(t2i, return_index=True)
    return np.sort(first)


def one_caption_cost(runs: Iterable, ks: Sequence[int] = (1, 5, 10)) -> pd.DataFrame:
    """One row per (model, dataset, direction, k): Recall@K (%) with all captions and with the first caption of
    each image only, their difference (points) and the chance level of each protocol. ``runs``: objects with
    ``model``, ``dataset``, ``similarity`` (images × texts) and ``text_to_image`` (e.g.
    :class:`vlnb.eval.compare.RetrievalRun`)."""
    rows = []
    for r in runs:
        sim = r.similarity
        t2i = np.asarray(r.text_to_image)
        n_images = sim.shape[0]
        first = first_caption_columns(t2i)
        if len(first) == len(t2i):  # one caption per image already: nothing to compare
            continue
        all_caps = recall_at_k(sim, t2i, ks)
        one_cap = recall_at_k(sim[:, first], t2i[first], ks)
        ch_all, ch_one = recall_chance(t2i, n_images, ks), recall_chance(t2i[first], n_images, ks)
        for d in ("i2t", "t2i"):
            for k in ks:
                key = f"{d}_R@{k}"
                rows.append({"model": r.model, "dataset": r.dataset, "direction": d, "k": k,
                             "captions_per_image": len(t2i) / n_images, "all captions": all_caps[key],
                             "first caption only": one_cap[key], "cost": all_caps[key] - one_cap[key],
                             "chance (all)": ch_all[key], "chance (first only)": ch_one[key]})
    return pd.DataFrame(rows)


def cost_sentence(cost: pd.DataFrame, direction: str = "i2t", k: int = 5) -> str:
    """The prose's summary of :func:`one_caption_cost` at one (direction, k)."""
    part = cost[(cost["direction"] == direction) & (cost["k"] == k)] if len(cost) else cost
    if part.empty:
        return "not measurable (no data set with several captions per image)"
    return "; ".join(f"{r['model']} on {r['dataset']}: {r['all captions']:.1f} → {r['first caption only']:.1f} "
                     f"({-r['cost']:+.1f} points; chance {r['chance (all)']:.1f} → {r['chance (first only)']:.1f})"
                     for _, r in part.iterrows())
