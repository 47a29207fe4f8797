"""Bootstrap intervals for the Recall@K of retrieval runs (chapter 4's comparison table).

Every comparison a sentence makes needs its uncertainty: :func:`retrieval_intervals` resamples *test images*
(an image brings its image→text query and the text→image queries of all its captions,
:func:`vlnb.eval.bootstrap.bootstrap_recall`) for every run's own ranking.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from .bootstrap import bootstrap_recall


def retrieval_intervals(runs: Iterable, ks: Sequence[int] = (1, 5, 10), n_boot: int = 1000, level: float = 0.95,
                        seed: int = 0) -> pd.DataFrame:
    """One row per (model, dataset, direction, k): the dual encoder's Recall@K (%) with its percentile bootstrap
    interval over test images. ``runs``: objects with ``model``, ``dataset``, ``ranks()``, ``text_to_image`` and
    ``image_ids`` (e.g. :class:`vlnb.eval.compare.RetrievalRun`)."""
    parts = []
    for r in runs:
        df = bootstrap_recall(r.ranks(), r.text_to_image, ks=ks, n_boot=n_boot, level=level, seed=seed,
                              n_images=len(r.image_ids))
        parts.append(df.assign(model=r.model, dataset=r.dataset, n_images=len(r.image_ids)))
    if not parts:
        return pd.DataFrame(columns=["model", "dataset", "direction", "k", "recall", "ci_lo", "ci_hi", "level",
                                     "n_boot", "n_images"])
    out = pd.concat(parts, ignore_index=True)
    return out[["model", "dataset", "direction", "k", "recall", "ci_lo", "ci_hi", "level", "n_boot", "n_images"]]


def interval_text(intervals: pd.DataFrame, model: str, dataset: str, direction: str, k: int = 1) -> str:
    """"95 % CI 12.0–18.5" for one row of :func:`retrieval_intervals`, or a sentence saying there is none."""
    r = intervals[(intervals["model"] == model) & (intervals["dataset"] == dataset)
                  & (intervals["direction"] == direction) & (intervals["k"] == k)]
    if r.empty:
        return "no interval: not a dual encoder's own ranking"
    r = r.iloc[0]
    return f"{100 * r['level']:.0f} % CI {r['ci_lo']:.1f}–{r['ci_hi']:.1f}"


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` (e.g. one per training seed) and its Student-t interval at ``level``; the interval is
    (nan, nan) for fewer than two values."""
    from scipy import stats  # lazy: optional (scipy comes with the fairness extra)

    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - half, m + half
