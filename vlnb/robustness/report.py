"""Chapter 5's report: the tables it shows and the numbers its prose quotes, from :func:`run_sweep`'s results.

Each function takes the tidy tables of :mod:`vlnb.robustness.sweep` and returns a table and/or a dict of
strings keyed as the notebook glues them, so the chapter's cells are one call per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .sweep import monotonicity, noise_tolerance

KEYS = ["model", "dataset", "task", "metric"]


def clean_table(results: pd.DataFrame) -> pd.DataFrame:
    """Clean (severity 0) value of every metric: rows (model, data set), columns (task, metric), one decimal."""
    clean = results[results["severity"] == 0].drop_duplicates(KEYS)
    return clean.pivot_table(index=["model", "dataset"], columns=["task", "metric"], values="value").round(1)


def informative_rows(top: pd.DataFrame) -> pd.DataFrame:
    """Rows of a :func:`~vlnb.robustness.sweep.degradation_table` (with chance) whose clean value is at least
    twice chance; all rows when none is (tiny test models sit at chance everywhere)."""
    return top[top["informative"]] if top["informative"].any() else top


def degradation_glue(top: pd.DataFrame) -> dict[str, object]:
    """``worst_desc`` (the largest clean -> worst-severity drop), ``mild_desc`` (the mildest corruption of
    that metric), ``drops_desc`` (the worst corruption of every informative metric) and ``n_uninformative``."""
    informative = informative_rows(top)
    by_drop = informative.sort_values("drop", ascending=False)
    worst = by_drop.iloc[0]
    mild = informative[(informative[KEYS] == worst[KEYS]).all(axis=1)].sort_values("drop").iloc[0]
    per_metric = by_drop.groupby(KEYS, sort=False).head(1)
    return {
        "worst_desc": f"{worst['model']} on {worst['dataset']} ({worst['task']} {worst['metric']}) under "
                      f"{worst['corruption']}: {worst['clean']:.1f} → {worst['worst']:.1f}",
        "mild_desc": f"{mild['corruption']} ({mild['clean']:.1f} → {mild['worst']:.1f})",
        "drops_desc": "; ".join(f"{r.model} on {r.dataset}, {r.task} {r.metric}: {r.clean:.1f} → {r.worst:.1f} "
                                f"under {r.corruption}" for r in per_metric.itertuples()),
        "n_uninformative": int((~top.drop_duplicates(KEYS)["informative"]).sum()),
    }


def monotonicity_report(results: pd.DataFrame, metrics: Sequence[tuple[str, str]],
                        top: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, object]]:
    """Monotonicity of the headline ``metrics`` within the noise tolerance (one image's worth), with each
    curve's ``informative`` flag from ``top``; and the glue ``n_curves``, ``n_monotone``, ``mono_tolerance``."""
    tol = noise_tolerance(results)
    mono = monotonicity(results[results.set_index(["task", "metric"]).index.isin(list(metrics))], tolerance=tol)
    mono = mono.merge(top[[*KEYS, "corruption", "informative"]], on=[*KEYS, "corruption"])
    return mono, {"n_curves": int(mono["informative"].sum()),
                  "n_monotone": int(mono.loc[mono["informative"], "monotone"].sum()),
                  "mono_tolerance": f"{tol:.1f}"}


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
    desc = "; ".join(f"{r.model} on {r.dataset} ({r.task} {r.metric}): mCE {r.mCE:.2f}, relative mCE "
                     f"{_num(r.relative_mCE, 'undefined (the baseline lost nothing)')}, relative robustness "
                     f"{_num(r.relative_robustness, 'undefined')}" for r in rows if usable(r))
    left_out = sum(not usable(r) for r in rows)
    if left_out:
        desc = (desc + "; " if desc else "") + (f"{left_out} comparison(s) left out: the model or the baseline "
                                                "is under twice chance there")
    return shown, {"baseline": baseline, "mce_desc": desc or "none"}


__all__ = ["KEYS", "clean_table", "degradation_glue", "informative_rows", "monotonicity_report", "summary_glue"]
