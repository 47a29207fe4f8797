"""Chapter 4's report: the tables it shows, the numbers its prose quotes and its zero-shot figure.

Inputs are the tidy tables of :func:`vlnb.comparison.run_comparison` (retrieval: ``model, dataset, protocol,
direction, k, recall, chance``; zero-shot: one row per model, data set and target variant) and of
:func:`vlnb.eval.published.published_retrieval`.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

from ..device import precision_name
from ..eval.compositionality import heads

ZEROSHOT_COLUMNS = ["top1", "top5", "mean_per_class_recall", "chance_top1", "n_classes", "n_templates", "n"]
#: the accuracy-type columns of the zero-shot table: proportions in the experiment's tidy table (and its CSV,
#: ``zeroshot.csv``), shown in percent like every recall and accuracy of the book
ZEROSHOT_PCT = {"top1": "top-1 (%)", "top5": "top-5 (%)", "mean_per_class_recall": "mean per-class recall (%)",
                "chance_top1": "chance top-1 (%)"}


def model_kind(model) -> str:
    """What a model is, for a table, from the heads it offers (:func:`vlnb.eval.compositionality.heads`, the rule
    the cost table's ``ITC+ITM`` also reads): "cross encoder" (ITM only: it scores pairs), "dual encoder + ITM
    head" (its own embeddings, and an ITM head that re-ranks them: BLIP, BLIP-2) or "dual encoder"."""
    hs = heads(model)
    if "ITC" not in hs:
        return "cross encoder"
    return "dual encoder + ITM head" if "ITM" in hs else "dual encoder"


def models_table(models: Mapping[str, object]) -> pd.DataFrame:
    """One row per evaluated model: checkpoint, family, dual or cross encoder, device, precision, fingerprint."""
    return pd.DataFrame([{"model": n, "checkpoint": m.name, "family": m.family, "kind": model_kind(m),
                          "device": str(m.device), "precision": precision_name(m.device) if m.dtype == torch.float32
                          else str(m.dtype), "fingerprint": m.fingerprint()[:12]} for n, m in models.items()])


def datasets_table(manifests: Mapping[str, pd.DataFrame], bad: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation data set: images, captions and images skipped as undecodable (``bad``: the bad-image
    reports with a ``dataset`` column)."""
    return pd.DataFrame([{"dataset": n, "images": len(df), "captions": int(df["captions"].map(len).sum()),
                          "skipped (bad images)": int((bad["dataset"] == n).sum())} for n, df in manifests.items()])


def _metric(df: pd.DataFrame) -> pd.Series:
    return df["direction"].map({"i2t": "I→T", "t2i": "T→I"}) + " R@" + df["k"].astype(str)


def retrieval_wide(retrieval: pd.DataFrame) -> pd.DataFrame:
    """Recall@K (percent, one decimal) per (data set, model, protocol) x metric, and under each data set its
    chance level as a ``(random ranking, chance)`` row."""
    wide = retrieval.assign(metric=_metric(retrieval))
    table = wide.pivot_table(index=["dataset", "model", "protocol"], columns="metric", values="recall",
                             sort=False).round(1)
    chance = wide.pivot_table(index=["dataset"], columns="metric", values="chance", aggfunc="first").round(1)
    chance.index = pd.MultiIndex.from_tuples([(d, "(random ranking)", "chance") for d in chance.index],
                                             names=table.index.names)
    return pd.concat([table, chance]).sort_index(level=0, sort_remaining=False)


def best_r1_glue(retrieval: pd.DataFrame) -> dict[str, str]:
    """The best Recall@1 of the run (any model, data set, direction) with its chance level, for the prose."""
    best = retrieval[retrieval["k"] == 1].sort_values("recall", ascending=False).iloc[0]
    return {"best_r1": f"{best['recall']:.1f}", "best_r1_model": str(best["model"]),
            "best_r1_dataset": str(best["dataset"]),
            "best_r1_dir": "image→text" if best["direction"] == "i2t" else "text→image",
            "best_r1_chance": f"{best['chance']:.1f}"}


def published_wide(published: pd.DataFrame) -> pd.DataFrame:
    """Published Recall@K per (data set, model, protocol, source) x metric."""
    pub = published.assign(metric=_metric(published))
    return pub.pivot_table(index=["dataset", "model", "protocol", "source"], columns="metric", values="recall",
                           sort=False)


def zeroshot_table(zeroshot: pd.DataFrame) -> pd.DataFrame:
    """Zero-shot accuracy in percent (one decimal; the tidy table's proportions x 100) with its chance level and
    protocol (classes, prompt templates, test images) per (data set, model, variant)."""
    t = zeroshot.set_index(["dataset", "model", "variant"])[ZEROSHOT_COLUMNS].copy()
    for c in ZEROSHOT_PCT:
        t[c] = (100.0 * t[c].astype(float)).round(1)
    return t.rename(columns={**ZEROSHOT_PCT, "n_classes": "classes", "n_templates": "templates", "n": "test images"})


def zeroshot_bars(zeroshot: pd.DataFrame):
    """Zero-shot top-1 accuracy per (data set, target variant), one bar per model, chance as a black tick."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    part = zeroshot.assign(entry=zeroshot["dataset"] + " · " + zeroshot["variant"])
    part = part.assign(top1_pct=100.0 * part["top1"], chance_pct=100.0 * part["chance_top1"])
    sns.barplot(data=part, y="entry", x="top1_pct", hue="model", ax=ax)
    for i, (_, r) in enumerate(part.drop_duplicates("entry").iterrows()):
        ax.plot([r["chance_pct"]] * 2, [i - 0.4, i + 0.4], color="black", lw=1.5)
    ax.set_xlim(0, 100)
    ax.set_xlabel("zero-shot top-1 accuracy (%; black: chance)")
    ax.set_ylabel("")
    return fig


__all__ = ["ZEROSHOT_COLUMNS", "ZEROSHOT_PCT", "best_r1_glue", "datasets_table", "model_kind", "models_table",
           "published_wide", "retrieval_wide", "zeroshot_bars", "zeroshot_table"]


def r1_interval_page(intervals: pd.DataFrame) -> pd.DataFrame:
    """Recall@1 with its bootstrap interval, one row per (data set, model), directions side by side (%)."""
    return intervals[intervals["k"] == 1].pivot_table(index=["dataset", "model"], columns="direction",
                                                      values=["recall", "ci_lo", "ci_hi"], sort=False).round(1)


def t2i_page(t2i: pd.DataFrame) -> pd.DataFrame:
    """The text→image experiment: recall and chance per (model, protocol), K across (%)."""
    return t2i.pivot_table(index=["model", "protocol"], columns="k", values=["recall", "chance"]).round(1)


def cost_glue(queries: pd.DataFrame) -> dict[str, str]:
    """The prose numbers of the cost section: fastest and slowest query at the largest gallery, and how
    much each model's query time grows from the smallest to the largest gallery."""
    nmax, nmin = int(queries["n_gallery"].max()), int(queries["n_gallery"].min())
    qmax = queries[queries["n_gallery"] == nmax].sort_values("query_s")
    fast, slow = qmax.iloc[0], qmax.iloc[-1]
    growth = (queries.pivot_table(index=["model", "protocol"], columns="n_gallery", values="query_s", sort=False)
              .pipe(lambda w: w[nmax] / w[nmin]))
    return {
        "cost_n": f"{nmax:,}",
        "cost_fastest": f"{fast['model']} ({fast['protocol']}): {fast['query_s'] * 1e3:,.1f} ms",
        "cost_slowest": f"{slow['model']} ({slow['protocol']}): {slow['query_s'] * 1e3:,.1f} ms"
                        f"{' (extrapolated)' if slow['basis'] != 'measured' else ''}",
        "cost_growth": "; ".join(f"{m} ({p}) ×{g:,.1f}" for (m, p), g in growth.items()),
        "cost_nmin": f"{nmin:,}",
        "cost_n_ratio": f"{nmax / nmin:,.0f}",
    }
