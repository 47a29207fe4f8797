"""Chapter 5's report: the tables it shows and the numbers its prose quotes, from :func:`run_sweep`'s results.

Each function takes the tidy tables of :mod:`vlnb.robustness.sweep` (and the intervals of
:mod:`vlnb.robustness.intervals`) and returns a table and/or a dict of strings keyed as the notebook glues them,
so the chapter's cells are one call per step. A sentence that compares two numbers carries the interval of the
comparison, or says that they cannot be told apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .intervals import KEYS
from .sweep import RERANK_TASK, monotonicity, noise_tolerance


def clean_table(results: pd.DataFrame, missing: str | None = None) -> pd.DataFrame:
    """Clean (severity 0) value of every metric: rows (model, data set), columns (task, metric), one decimal;
    ``missing`` fills the cells of metrics a model does not have (for a page; None keeps NaN)."""
    clean = results[results["severity"] == 0].drop_duplicates(KEYS)
    table = clean.pivot_table(index=["model", "dataset"], columns=["task", "metric"], values="value").round(1)
    return table if missing is None else table.astype(object).where(table.notna(), missing)


def summary_page(shown: pd.DataFrame) -> pd.DataFrame:
    """What a page shows of :func:`summary_glue`'s rows: the values rounded, each mCE with its interval when
    :func:`vlnb.robustness.intervals.mce_intervals` gave one, "–" where a value is not defined (no baseline on
    that data and metric, or a baseline that lost nothing)."""

    def cell(r, name: str) -> str:
        v = r[name]
        if pd.isna(v):
            return "–"
        lo, hi = r.get(f"{name}_lo", np.nan), r.get(f"{name}_hi", np.nan)
        return f"{v:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if pd.notna(lo) else "")

    rows = [{"model": r["model"], "dataset": r["dataset"], "task": r["task"], "metric": r["metric"],
             "clean": round(float(r["clean"]), 1), "mean corrupted": round(float(r["mean_corrupted"]), 1),
             "relative robustness": "–" if pd.isna(r["relative_robustness"]) else f"{r['relative_robustness']:.2f}",
             "mCE [CI]": cell(r, "mCE"), "relative mCE [CI]": cell(r, "relative_mCE")} for _, r in shown.iterrows()]
    return pd.DataFrame(rows)


def hits_wide(hits: pd.DataFrame) -> pd.DataFrame:
    """The per-image hits of a sweep (:data:`~vlnb.robustness.sweep.HITS_COLUMNS`) one row per (model, data set,
    task, metric, image): its weight ``n`` and its hits in every cell (``clean``, ``<corruption>@<severity>``), the
    compact form of ``results/per_image_hits.csv``."""
    cell = ["clean" if s == 0 else f"{c}@{s}" for c, s in zip(hits["corruption"], hits["severity"])]
    df = hits.assign(cell=cell)
    wide = df.pivot_table(index=[*KEYS, "image_id"], columns="cell", values="hit", aggfunc="first", sort=False)
    n = df[df["cell"] == "clean"].set_index([*KEYS, "image_id"])["n"]
    cols = ["clean", *sorted(c for c in wide.columns if c != "clean")]
    out = wide[cols].join(n).reset_index()[[*KEYS, "image_id", "n", *cols]]
    counts = ["n", *cols]  # whole numbers (hits, captions): written as integers, half the file
    if np.allclose(out[counts].fillna(0) % 1, 0):
        out[counts] = out[counts].fillna(-1).astype(np.int64).replace(-1, pd.NA)
    return out


def comparison_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """What the page shows of :func:`vlnb.robustness.intervals.reference_comparison`: the rows averaged over the
    corruptions, each drop and the difference with its interval in one cell, rounded."""
    mean = comparison[comparison["corruption"] == "mean"]

    def cell(v, lo, hi) -> str:
        return f"{v:.1f} [{lo:.1f}, {hi:.1f}]"

    return pd.DataFrame({
        "model": mean["model"], "data set": mean["dataset"], "task": mean["task"], "metric": mean["metric"],
        "clean": mean["clean"].round(1), "drop [CI]": [cell(*x) for x in zip(mean["drop"], mean["drop_lo"], mean["drop_hi"])],
        "reference": mean["reference"] + " (" + mean["reference_task"] + ")",
        "reference clean": mean["reference_clean"].round(1),
        "reference drop [CI]": [cell(*x) for x in zip(mean["reference_drop"], mean["reference_drop_lo"],
                                                      mean["reference_drop_hi"])],
        "difference [CI]": [cell(*x) for x in zip(mean["diff"], mean["diff_lo"], mean["diff_hi"])],
        "verdict": mean["verdict"],
        "relative difference, % of clean [CI]": [cell(*x) for x in zip(mean["rel_diff"], mean["rel_diff_lo"],
                                                                        mean["rel_diff_hi"])],
        "relative verdict": mean["rel_verdict"], "images": mean["n_images"],
    }).reset_index(drop=True)


def informative_rows(top: pd.DataFrame) -> pd.DataFrame:
    """Rows of a :func:`~vlnb.robustness.sweep.degradation_table` (with chance) whose clean value is at least
    twice chance; all rows when none is (tiny test models sit at chance everywhere)."""
    return top[top["informative"]] if top["informative"].any() else top


def ci_text(lo: float, hi: float, level: float = 0.95) -> str:
    """``"95 % CI [12.0, 18.5]"``."""
    return f"{100 * level:.0f} % CI [{lo:.1f}, {hi:.1f}]"


def _drop_tail(r) -> str:
    """``", a drop of 20.0 points (95 % CI [15.0, 25.0])"`` when the row has an interval (else ``""``), saying so
    when the interval holds 0."""
    if "drop_lo" not in r or pd.isna(r["drop_lo"]):
        return ""
    level = r.get("level", 0.95)
    zero = r["drop_lo"] <= 0 <= r["drop_hi"]
    return (f", a drop of {r['drop']:.1f} points ({ci_text(r['drop_lo'], r['drop_hi'], level)}"
            + (": not told apart from no drop)" if zero else ")"))


def degradation_glue(top: pd.DataFrame) -> dict[str, object]:
    """``worst_desc`` (the largest clean -> worst-severity drop), ``mild_desc`` (the mildest corruption of
    that metric), ``drops_desc`` (the worst corruption of every informative metric) and ``n_uninformative``.
    With the intervals of :func:`vlnb.robustness.intervals.drop_intervals` (``drop_lo``, ``drop_hi``) every
    drop quoted carries its interval."""
    informative = informative_rows(top)
    by_drop = informative.sort_values("drop", ascending=False)
    worst = by_drop.iloc[0]
    mild = informative[(informative[KEYS] == worst[KEYS]).all(axis=1)].sort_values("drop").iloc[0]
    per_metric = by_drop.groupby(KEYS, sort=False).head(1)
    return {
        "worst_desc": f"{worst['model']} on {worst['dataset']} ({worst['task']} {worst['metric']}) under "
                      f"{worst['corruption']}: {worst['clean']:.1f} → {worst['worst']:.1f}{_drop_tail(worst)}",
        "mild_desc": f"{mild['corruption']} ({mild['clean']:.1f} → {mild['worst']:.1f}{_drop_tail(mild)})",
        "drops_desc": "; ".join(f"{r['model']} on {r['dataset']}, {r['task']} {r['metric']}: {r['clean']:.1f} → "
                                f"{r['worst']:.1f} under {r['corruption']}{_drop_tail(r)}"
                                for _, r in per_metric.iterrows()),
        "n_uninformative": int((~top.drop_duplicates(KEYS)["informative"]).sum()),
    }


def _what(task: str, metric: str) -> str:
    """A row's measure in words: "ITC text→image R@5", "zero-shot colour top-1", ..."""
    m = metric.replace("t2i_R@", "text→image R@").replace("i2t_R@", "image→text R@").replace("top1", "top-1")
    if task == "retrieval":
        return f"ITC {m}"
    if task == RERANK_TASK:
        return f"ITM re-rank {m}"
    return f"{task.replace('zeroshot:', 'zero-shot ')} {m}"


_VERDICT = {"more": "loses more than", "less": "loses less than", "same": "cannot be told apart from"}


def comparison_glue(comparison: pd.DataFrame, who: str = "the other model") -> dict[str, object]:
    """The prose of :func:`vlnb.robustness.intervals.reference_comparison` (its ``corruption="mean"`` rows):
    ``comparison_md``, a Markdown list with one line per model and metric (both drops in points and relative to
    the clean value, with their intervals, the paired differences and what they say; rows under twice chance are
    named and left out), ``comparison_desc``, a count of the verdicts (``who``: how the sentence names the
    compared models), and ``comparison_reference``, the reference model."""
    mean = comparison[comparison["corruption"] == "mean"]
    if mean.empty:
        return {"comparison_md": "*No model shares a data set and metric with the reference here.*",
                "comparison_desc": "no model shares a data set and metric with the reference",
                "comparison_reference": "none"}
    lines = []
    for _, r in mean.iterrows():
        head = (f"- **{r['model']}** on {r['dataset']}, {_what(r['task'], r['metric'])} (clean {r['clean']:.1f}; "
                f"{r['reference']}: {_what(r['reference_task'], r['metric'])}, clean {r['reference_clean']:.1f})")
        if not r["compared"]:
            who_low = [m for m, ok in ((r["model"], r.get("informative", False)),
                                       (r["reference"], r.get("reference_informative", False))) if not ok]
            lines.append(f"{head}: not compared, {' and '.join(who_low) or 'one of the two'} "
                         f"{'are' if len(who_low) > 1 else 'is'} under twice chance here.")
            continue
        level = r["level"]
        line = (f"{head}: drop {r['drop']:.1f} points ({ci_text(r['drop_lo'], r['drop_hi'], level)}) against "
                f"{r['reference_drop']:.1f} ({ci_text(r['reference_drop_lo'], r['reference_drop_hi'], level)}), "
                f"difference {r['diff']:+.1f} ({ci_text(r['diff_lo'], r['diff_hi'], level)}): it "
                f"{_VERDICT[r['verdict']]} {r['reference']} in points")
        if "rel_drop" in r and pd.notna(r["rel_drop"]) and pd.notna(r["reference_rel_drop"]):
            line += (f"; relative to the clean value {r['rel_drop']:.1f} % "
                     f"({ci_text(r['rel_drop_lo'], r['rel_drop_hi'], level)}) against {r['reference_rel_drop']:.1f} % "
                     f"({ci_text(r['reference_rel_drop_lo'], r['reference_rel_drop_hi'], level)}), difference "
                     f"{r['rel_diff']:+.1f} ({ci_text(r['rel_diff_lo'], r['rel_diff_hi'], level)}): it "
                     f"{_VERDICT[r['rel_verdict']]} {r['reference']}")
        lines.append(line + ".")
    counted = mean[mean["compared"]]

    def count(column: str) -> str:
        n = {v: int((counted[column] == v).sum()) for v in _VERDICT}
        return f"{who} loses more in {n['more']}, less in {n['less']}, and {n['same']} cannot be told apart"

    if len(counted):
        desc = f"of the {len(counted)} comparison(s) where both models are above twice chance, in points {count('verdict')}"
        if "rel_verdict" in counted:
            desc += f"; relative to the clean value {count('rel_verdict')}"
    else:
        desc = "no comparison has both models above twice chance"
    if len(mean) > len(counted):
        desc += f"; {len(mean) - len(counted)} left out (under twice chance)"
    return {"comparison_md": "\n".join(lines), "comparison_desc": desc,
            "comparison_reference": str(mean["reference"].iloc[0])}


def monotonicity_report(results: pd.DataFrame, metrics: Sequence[tuple[str, str]],
                        top: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, object]]:
    """Monotonicity of the headline ``metrics``, each curve within one image's worth of its own evaluation set
    (``100 / n_images`` points: the resolution of the metric there), with each curve's ``informative`` flag from
    ``top``; and the glue ``n_curves``, ``n_monotone``, ``mono_tolerance`` (that tolerance, or its range)."""
    sel = results[results.set_index(["task", "metric"]).index.isin(list(metrics))]
    parts, tols = [], []
    for _, g in sel.groupby("n_images", sort=True):
        tol = noise_tolerance(g)
        tols.append(tol)
        parts.append(monotonicity(g, tolerance=tol).assign(tolerance=tol))
    mono = pd.concat(parts, ignore_index=True) if parts else monotonicity(sel)
    mono = mono.merge(top[[*KEYS, "corruption", "informative"]], on=[*KEYS, "corruption"])
    tol_text = (f"{min(tols):.1f}" if len({round(t, 1) for t in tols}) <= 1 else f"{min(tols):.1f}–{max(tols):.1f}") \
        if tols else "0.0"
    return mono, {"n_curves": int(mono["informative"].sum()),
                  "n_monotone": int(mono.loc[mono["informative"], "monotone"].sum()),
                  "mono_tolerance": tol_text}


def _num(x: float, undefined: str) -> str:
    return f"{x:.2f}" if pd.notna(x) else undefined


def summary_glue(summary: pd.DataFrame, metrics: Sequence[tuple[str, str]],
                 baseline: str, informative: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """The :func:`~vlnb.robustness.sweep.summarize` rows of the headline ``metrics`` and the glue
    ``baseline`` and ``mce_desc`` (mCE, relative mCE and relative robustness of every other model).

    ``informative`` (a :func:`~vlnb.robustness.sweep.degradation_table`): metrics whose clean value is under
    twice chance — of the model or of the baseline — are left out of the sentence (a model at chance keeps
    "all" of its performance); a ratio that is not defined (the baseline lost nothing) is said in words, never
    printed as nan."""
    shown = summary.set_index(["task", "metric"]).loc[lambda d: d.index.isin(list(metrics))].reset_index()
    ok = None
    if informative is not None and len(informative):
        inf = informative.drop_duplicates(KEYS)
        ok = {tuple(r[k] for k in KEYS): bool(r["informative"]) for _, r in inf.iterrows()}

    def usable(r) -> bool:
        if ok is None:
            return True
        return ok.get((r.model, r.dataset, r.task, r.metric), True) and \
            ok.get((baseline, r.dataset, r.task, r.metric), True)

    rows = [r for r in shown.itertuples() if r.model != baseline and pd.notna(r.mCE)]

    def ci(r, name: str) -> str:  # the interval of mce_intervals, when the summary has one
        lo, hi = getattr(r, f"{name}_lo", float("nan")), getattr(r, f"{name}_hi", float("nan"))
        if pd.isna(lo) or pd.isna(getattr(r, name)):
            return ""
        one = ", which holds 1: not told apart from the baseline" if lo <= 1 <= hi else ""
        return f" (95 % CI [{lo:.2f}, {hi:.2f}]{one})"

    desc = "; ".join(f"{r.model} on {r.dataset} ({r.task} {r.metric}): mCE {r.mCE:.2f}{ci(r, 'mCE')}, relative mCE "
                     f"{_num(r.relative_mCE, 'undefined (the baseline lost nothing)')}{ci(r, 'relative_mCE')}, "
                     f"relative robustness {_num(r.relative_robustness, 'undefined')}" for r in rows if usable(r))
    left_out = sum(not usable(r) for r in rows)
    if left_out:
        desc = (desc + "; " if desc else "") + (f"{left_out} comparison(s) left out: the model or the baseline "
                                                "is under twice chance there")
    return shown, {"baseline": baseline, "mce_desc": desc or "none"}


__all__ = [
    "KEYS",
    "ci_text",
    "clean_table",
    "comparison_glue",
    "comparison_table",
    "degradation_glue",
    "hits_wide",
    "informative_rows",
    "monotonicity_report",
    "summary_glue",
    "summary_page",
]
