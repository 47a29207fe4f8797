"""Paired bootstrap intervals of chapter 5's comparisons, from the sweep's per-image hits.

:func:`~vlnb.robustness.sweep.run_sweep` records, for every cell, each image's hits (``hit``) and weight
(``n``: 1 for a zero-shot image with a label or an image->text query, the number of captions for text->image),
so every metric of the tidy table is ``100 * sum(hit) / sum(n)`` over the images of its data set. A drop
``clean - corrupted`` is then a difference of two such ratios *on the same images*, and the bootstrap redraws
images (with replacement, :func:`vlnb.eval.bootstrap.bootstrap_weights`) and recomputes both sides of the
difference on each draw: a **paired** interval, much narrower than two separate intervals would suggest when the
two sides move together. Draws are seeded per data set (the same ``seed`` and images give the same draws), so two
models on the same images are compared on the same resamples too. As with
:func:`vlnb.eval.bootstrap.bootstrap_recall`, the ranks are those of the full test set (the bootstrap is
conditional on the gallery).

- :func:`drop_intervals` -- each clean-vs-worst-severity drop of a
  :func:`~vlnb.robustness.sweep.degradation_table` with its interval;
- :func:`reference_comparison` -- every model's drop (averaged over the corruptions, at the worst severity) beside
  a reference model's on the same images and metric, and the paired interval of the difference (chapter 5: the
  fusion models against the dual encoder whose ITC they are compared with);
- :func:`mce_intervals` -- the mCE / relative mCE of :func:`~vlnb.robustness.sweep.summarize` with intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..eval.bootstrap import bootstrap_weights, percentile_interval
from .sweep import HITS_COLUMNS, RERANK_TASK

KEYS = ["model", "dataset", "task", "metric"]


def _cell(corruption: str, severity: int) -> str:
    return "clean" if int(severity) == 0 else f"{corruption}@{int(severity)}"


class HitTable:
    """Per-image hits of a sweep, arranged for resampling: for each ``(model, dataset, task, metric)`` the
    weights ``n`` and the hits of every cell (``"clean"``, ``"<corruption>@<severity>"``) as vectors over the data
    set's images (one order per data set; an image a model did not evaluate has weight and hits 0)."""

    def __init__(self, hits: pd.DataFrame):
        missing = set(HITS_COLUMNS) - set(hits.columns)
        if missing:
            raise KeyError(f"hits lack column(s) {sorted(missing)}; pass pd.concat of run_sweep(..., hits=[])")
        if hits.empty:
            raise ValueError("no per-image hits given")
        df = hits.assign(cell=[_cell(c, s) for c, s in zip(hits["corruption"], hits["severity"])])
        if df.duplicated([*KEYS, "cell", "image_id"]).any():
            raise ValueError("the hits hold an image twice in one cell; drop duplicated sweep runs first")
        self.images: dict[str, list] = {ds: list(pd.unique(g["image_id"])) for ds, g in df.groupby("dataset", sort=False)}
        self._data: dict[tuple, dict[str, np.ndarray]] = {}
        for key, g in df.groupby(KEYS, sort=False):
            order = {iid: i for i, iid in enumerate(self.images[key[1]])}
            pos = g["image_id"].map(order).to_numpy()
            vecs: dict[str, np.ndarray] = {"evaluated": np.zeros(len(order), dtype=bool)}
            vecs["evaluated"][pos] = True
            for cell, gc in g.groupby("cell", sort=False):
                p = pos[(g["cell"] == cell).to_numpy()]
                h = np.zeros(len(order))
                h[p] = gc["hit"].to_numpy(dtype=np.float64)
                vecs[cell] = h
                if "n" not in vecs or cell == "clean":
                    n = np.zeros(len(order))
                    n[p] = gc["n"].to_numpy(dtype=np.float64)
                    vecs["n"] = n
            self._data[key] = vecs

    def __contains__(self, key) -> bool:
        return tuple(key) in self._data

    def __iter__(self):
        """Every ``(model, dataset, task, metric)`` with hits."""
        return iter(list(self._data))

    def cells(self, key: Sequence) -> list[str]:
        """The cells with hits for ``key``: ``"clean"`` and ``"<corruption>@<severity>"`` (not the weights)."""
        return [c for c in self._data[tuple(key)] if c not in ("n", "evaluated")]

    def vector(self, key: Sequence, cell: str) -> np.ndarray:
        """Hits of ``key`` = (model, dataset, task, metric) in ``cell`` (or its weights, ``cell="n"``)."""
        try:
            return self._data[tuple(key)][cell]
        except KeyError:
            raise KeyError(f"no per-image hits for {tuple(key)} in cell {cell!r}") from None

    def value(self, key: Sequence, cell: str) -> float:
        """The metric (percent) of ``key`` in ``cell``: ``100 * sum(hit) / sum(n)``."""
        return float(100.0 * self.vector(key, cell).sum() / self.vector(key, "n").sum())


class _Draws:
    """Bootstrap weights per data set, one seeded draw set each (paired across models on the same images)."""

    def __init__(self, table: HitTable, n_boot: int, seed: int):
        self.table, self.n_boot, self.seed, self._w = table, int(n_boot), int(seed), {}

    def weights(self, dataset: str) -> np.ndarray:
        if dataset not in self._w:
            self._w[dataset] = bootstrap_weights(len(self.table.images[dataset]), self.n_boot, self.seed)
        return self._w[dataset]

    def ratio(self, dataset: str, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        """``100 * (w @ num) / (w @ den)`` for every draw ``w`` (NaN where a draw has no weight)."""
        w = self.weights(dataset)
        d = w @ den
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, 100.0 * (w @ num) / np.where(d > 0, d, 1.0), np.nan)


def _drop(table: HitTable, key: tuple, cells: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Numerator and denominator of the clean -> ``cells`` drop, averaged over ``cells`` (points)."""
    worst = np.mean([table.vector(key, c) for c in cells], axis=0)
    return table.vector(key, "clean") - worst, table.vector(key, "n")


def drop_intervals(hits: pd.DataFrame | HitTable, top: pd.DataFrame, n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0) -> pd.DataFrame:
    """``top`` (a :func:`~vlnb.robustness.sweep.degradation_table`: clean vs the worst swept severity per model,
    metric and corruption) with the paired bootstrap interval of each ``drop`` over the images (``drop_lo``,
    ``drop_hi``, ``level``). The point estimate recomputed from the hits must equal ``drop`` (else the hits are
    not those of this table: ValueError)."""
    table = hits if isinstance(hits, HitTable) else HitTable(hits)
    draws = _Draws(table, n_boot, seed)
    lo, hi = [], []
    for r in top.itertuples(index=False):
        key = (r.model, r.dataset, r.task, r.metric)
        num, den = _drop(table, key, [_cell(r.corruption, r.severity)])
        est = 100.0 * num.sum() / den.sum()
        if not np.isclose(est, r.drop, atol=1e-6):
            raise ValueError(f"{key}, {r.corruption}: the hits give a drop of {est:.4f}, the table {r.drop:.4f}")
        a, b = percentile_interval(draws.ratio(r.dataset, num, den), level)
        lo.append(float(a))
        hi.append(float(b))
    return top.assign(drop_lo=lo, drop_hi=hi, level=level)


def _reference_key(key: tuple, reference: str, table: HitTable) -> tuple | None:
    """The reference model's row on the same data set and metric: the same task, or ITC retrieval for a re-rank."""
    for task in (key[2], "retrieval") if key[2] == RERANK_TASK else (key[2],):
        ref = (reference, key[1], task, key[3])
        if ref in table:
            return ref
    return None


def verdict(lo: float, hi: float) -> str:
    """How a difference (model - reference) with interval ``[lo, hi]`` reads: ``"more"`` (the interval is above 0),
    ``"less"`` (below 0) or ``"same"`` (it holds 0: the two cannot be told apart)."""
    return "more" if lo > 0 else "less" if hi < 0 else "same"


def reference_comparison(hits: pd.DataFrame | HitTable, top: pd.DataFrame, reference: str, n_boot: int = 1000,
                         level: float = 0.95, seed: int = 0, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Every other model's robustness against ``reference``'s, on the same images and metric (rows whose images
    differ from the reference's are left out).

    ``top``: a :func:`~vlnb.robustness.sweep.degradation_table` with chance (its rows pick the metrics, the
    corruptions and the worst severity; ``informative``: clean at least twice chance). One row per (model, data
    set, task, metric) that ``reference`` also has on that data set (a re-ranked row is set against the
    reference's ITC retrieval) and per corruption, plus ``corruption="mean"`` (the drops averaged over the
    corruptions): the clean values, both drops (points, clean - worst severity) with intervals, ``diff`` = model
    drop - reference drop with its paired interval (the same image draws for both models and every corruption),
    the same for the *relative* drops (``rel_*``: percent of the clean value lost, which does not favour a model
    that starts low and has less to lose; ``rel_verdict``),
    ``chance`` (the model's chance level), ``informative`` / ``reference_informative`` (clean at least twice
    chance), ``compared`` (both are) and ``verdict`` (:func:`verdict`; "at chance" when not compared).
    ``models``: compare only these (default: every model but the reference)."""
    table = hits if isinstance(hits, HitTable) else HitTable(hits)
    draws = _Draws(table, n_boot, seed)
    inf = {tuple(k): bool(v) for k, v in zip(top[KEYS].itertuples(index=False), top["informative"])} \
        if "informative" in top else {}
    rows = []
    for key, g in top.groupby(KEYS, sort=False):
        if key[0] == reference or (models is not None and key[0] not in models):
            continue
        ref = _reference_key(key, reference, table)
        if ref is None or not np.array_equal(table.vector(key, "evaluated"), table.vector(ref, "evaluated")):
            continue  # no reference row, or not on the same images (e.g. a cross encoder's smaller subset)
        ref_rows = top[(top[KEYS] == list(ref)).all(axis=1)].set_index("corruption")
        g = g[g["corruption"].isin(ref_rows.index)]
        if g.empty:
            continue
        mine, theirs = inf.get(key, True), inf.get(ref, True)
        compared = mine and theirs
        chance = float(g["chance"].iloc[0]) if "chance" in g else np.nan
        parts = [(r.corruption, [_cell(r.corruption, r.severity)],
                  [_cell(r.corruption, ref_rows.loc[r.corruption, "severity"])]) for r in g.itertuples(index=False)]
        parts.append(("mean", [c for _, cs, _ in parts for c in cs], [c for _, _, cs in parts for c in cs]))
        for corruption, cells, ref_cells in parts:
            num, den = _drop(table, key, cells)
            rnum, rden = _drop(table, ref, ref_cells)
            clean, rclean = table.vector(key, "clean"), table.vector(ref, "clean")
            d, rd = draws.ratio(key[1], num, den), draws.ratio(key[1], rnum, rden)
            # relative: the share of the clean hits lost, 100 * sum(clean - worst) / sum(clean)
            q, rq = draws.ratio(key[1], num, clean), draws.ratio(key[1], rnum, rclean)
            est, rest = 100.0 * num.sum() / den.sum(), 100.0 * rnum.sum() / rden.sum()
            rel = 100.0 * num.sum() / clean.sum() if clean.sum() > 0 else np.nan
            rrel = 100.0 * rnum.sum() / rclean.sum() if rclean.sum() > 0 else np.nan
            (lo, hi), (rlo, rhi), (dlo, dhi), (qlo, qhi), (rqlo, rqhi), (qdlo, qdhi) = (
                (float(a), float(b)) for a, b in (percentile_interval(x, level) for x in (d, rd, d - rd, q, rq, q - rq)))
            rows.append({"model": key[0], "dataset": key[1], "task": key[2], "metric": key[3], "reference": ref[0],
                         "reference_task": ref[2], "corruption": corruption,
                         "clean": table.value(key, "clean"), "reference_clean": table.value(ref, "clean"),
                         "drop": est, "drop_lo": lo, "drop_hi": hi,
                         "reference_drop": rest, "reference_drop_lo": rlo, "reference_drop_hi": rhi,
                         "diff": est - rest, "diff_lo": dlo, "diff_hi": dhi,
                         "rel_drop": rel, "rel_drop_lo": qlo, "rel_drop_hi": qhi,
                         "reference_rel_drop": rrel, "reference_rel_drop_lo": rqlo, "reference_rel_drop_hi": rqhi,
                         "rel_diff": rel - rrel, "rel_diff_lo": qdlo, "rel_diff_hi": qdhi,
                         "n_images": int((den > 0).sum()), "chance": chance, "informative": mine,
                         "reference_informative": theirs, "compared": compared,
                         "verdict": verdict(dlo, dhi) if compared else "at chance",
                         "rel_verdict": verdict(qdlo, qdhi) if compared else "at chance", "level": level})
    cols = ["model", "dataset", "task", "metric", "reference", "reference_task", "corruption", "clean",
            "reference_clean", "drop", "drop_lo", "drop_hi", "reference_drop", "reference_drop_lo", "reference_drop_hi",
            "diff", "diff_lo", "diff_hi", "rel_drop", "rel_drop_lo", "rel_drop_hi", "reference_rel_drop",
            "reference_rel_drop_lo", "reference_rel_drop_hi", "rel_diff", "rel_diff_lo", "rel_diff_hi", "n_images",
            "chance", "informative", "reference_informative", "compared", "verdict", "rel_verdict", "level"]
    return pd.DataFrame(rows, columns=cols)


def mce_intervals(hits: pd.DataFrame | HitTable, summary: pd.DataFrame, baseline: str, n_boot: int = 1000,
                  level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """:func:`~vlnb.robustness.sweep.summarize`'s table with bootstrap intervals of ``mCE`` and ``relative_mCE``
    (``mCE_lo``, ``mCE_hi``, ``relative_mCE_lo``, ``relative_mCE_hi``): on each draw of the images every corruption
    error ``sum_s E(f, c, s) / sum_s E(base, c, s)`` is recomputed for the model and the baseline alike, then
    averaged over the corruptions. Rows without an mCE (no baseline on that data and metric) get NaN; a draw whose
    baseline lost nothing leaves its ratio undefined and is dropped from the interval."""
    table = hits if isinstance(hits, HitTable) else HitTable(hits)
    draws = _Draws(table, n_boot, seed)
    cells_of: dict[tuple, dict[str, list[str]]] = {}
    for key in table:
        per: dict[str, list[str]] = {}
        for cell in table.cells(key):
            if "@" in cell:
                per.setdefault(cell.split("@")[0], []).append(cell)
        cells_of[key] = per
    out = {c: [] for c in ("mCE_lo", "mCE_hi", "relative_mCE_lo", "relative_mCE_hi")}
    for r in summary.itertuples(index=False):
        key, base = (r.model, r.dataset, r.task, r.metric), (baseline, r.dataset, r.task, r.metric)
        vals = {c: np.nan for c in out}
        if pd.notna(r.mCE) and key in table and base in table:
            w = draws.weights(r.dataset)
            mine, theirs = cells_of[key], cells_of[base]
            common = [c for c in mine if c in theirs and len(mine[c]) == len(theirs[c])]
            ce, rce = [], []
            for c in common:
                def err(k, cells):  # sum over severities of (n - hit): errors, image by image
                    return sum(table.vector(k, "n") - table.vector(k, x) for x in cells)

                def deg(k, cells):  # sum over severities of (clean hit - hit): degradations
                    return sum(table.vector(k, "clean") - table.vector(k, x) for x in cells)

                for acc, f in ((ce, err), (rce, deg)):
                    num, den = w @ f(key, mine[c]), w @ f(base, theirs[c])
                    with np.errstate(invalid="ignore", divide="ignore"):
                        acc.append(np.where(den > 1e-9, num / np.where(den > 1e-9, den, 1.0), np.nan))
            if common:
                for name, acc, est in (("mCE", ce, r.mCE), ("relative_mCE", rce, r.relative_mCE)):
                    if pd.notna(est):
                        vals[f"{name}_lo"], vals[f"{name}_hi"] = (float(x) for x in
                                                                   percentile_interval(np.mean(acc, axis=0), level))
        for c, column in out.items():
            column.append(vals[c])
    return summary.assign(**out)


__all__ = ["KEYS", "HitTable", "drop_intervals", "mce_intervals", "reference_comparison", "verdict"]
