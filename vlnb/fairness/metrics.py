"""Subgroup metrics, their gaps and ratios, with honest uncertainty.

The recipe of this module:

1. :func:`evaluate_outcomes` runs a model once over a test set and keeps **per-query outcomes**, aggregated
   per image as a numerator and a denominator: zero-shot top-1 hits (one query per labelled image),
   image->text hits at each ``k`` (one query per captioned image), text->image hits at each ``k`` (one query
   per caption, so an image contributes as many as it has captions) and the cosine similarity of every
   (image, own caption) pair. A group's metric is ``sum(numerator) / sum(denominator)`` over its images:
   a **proportion in [0, 1]** for the hit rates, a mean cosine for the similarity.
2. :func:`group_table` computes every group's value with fairlearn's :class:`~fairlearn.metrics.MetricFrame`
   and a confidence interval: Wilson's score interval (or Clopper-Pearson) for proportions with one query per
   image, otherwise a percentile bootstrap over images, stratified by group (an image's captions stay
   together). Groups with fewer than ``min_size`` images are **flagged and not ranked**; groups listed in
   ``exclude`` (e.g. ``"unlabelled"``) are shown but never ranked.
3. :func:`gap_table` reports, over the ranked groups, the gap ``max - min`` (MetricFrame's
   ``difference(method="between_groups")``) and the ratio ``min / max`` (``ratio(...)``), each with a
   stratified bootstrap interval, and a permutation p-value for "all groups perform alike" (group labels
   shuffled across images, the gap recomputed). The bootstrap interval of a max-minus-min is biased upwards
   (with several equal groups the sample gap is never 0), so whether a gap is *there* is decided by the
   permutation test, and the interval says how large it is.
4. :func:`group_contrast` compares one named group with the rest (signed ``rest - target``), as the
   controlled experiment does with the group it made rare.
5. :func:`in_percent` turns any of these tables into the book's unit: every recall and accuracy in percent,
   gaps between them in percentage points (ratios, p-values and the mean cosine similarity unchanged), with a
   ``unit`` column. The functions above compute in proportions; the chapter's tables
   (:func:`vlnb.fairness.subgroup_analysis`, :func:`vlnb.fairness.rarity_experiment`) are in percent.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..eval.bootstrap import bootstrap_weights
from ..eval.bootstrap import percentile_interval as _percentile_interval
from ..eval.compare import captions_table, manifest_rows, zeroshot_task
from ..eval.features import image_features, text_features
from ..eval.retrieval import retrieval_ranks
from ..eval.zeroshot import target_matrix, zeroshot_classifier, zeroshot_scores
from ..timing import timer
from .stats import binomial_interval

UNGROUPED = "(none)"


# ---------------------------------------------------------------------------------------------- outcomes
@dataclass
class Outcomes:
    """Per-image numerators / denominators of every metric of one model on one test set.

    ``num[m][i] / den[m][i]`` is image ``i``'s own value of metric ``m``; ``den == 0`` means the image has no
    query for that metric (no label, no caption) and is left out of it. ``binary[m]`` says the metric is a
    proportion of 0/1 outcomes with at most one query per image (then binomial intervals apply).
    """

    model: str
    dataset: str
    image_ids: list
    num: dict[str, np.ndarray] = field(default_factory=dict)
    den: dict[str, np.ndarray] = field(default_factory=dict)
    binary: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.image_ids)
        for m in self.num:
            self.num[m] = np.asarray(self.num[m], dtype=np.float64)
            self.den[m] = np.asarray(self.den[m], dtype=np.float64)
            if self.num[m].shape != (n,) or self.den[m].shape != (n,):
                raise ValueError(f"metric {m!r}: numerator/denominator must have one entry per image ({n})")
            self.binary.setdefault(m, False)

    @property
    def metrics(self) -> list[str]:
        return list(self.num)

    def add(self, metric: str, num, den=None, binary: bool = False) -> Outcomes:
        """Add a metric (``den`` defaults to one query per image)."""
        num = np.asarray(num, dtype=np.float64)
        self.num[metric] = num
        self.den[metric] = np.ones_like(num) if den is None else np.asarray(den, dtype=np.float64)
        self.binary[metric] = bool(binary)
        self.__post_init__()
        return self

    @classmethod
    def from_values(cls, values: Mapping[str, Sequence], image_ids=None, model: str = "model",
                    dataset: str = "data", binary: bool | None = None) -> Outcomes:
        """Outcomes from one value per image per metric (NaN = no query). 0/1 metrics are marked binary
        unless ``binary`` says otherwise."""
        values = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
        n = len(next(iter(values.values()))) if values else 0
        out = cls(model, dataset, list(range(n)) if image_ids is None else list(image_ids))
        for m, v in values.items():
            ok = ~np.isnan(v)
            is01 = bool(np.all(np.isin(v[ok], (0.0, 1.0))))
            out.add(m, np.where(ok, v, 0.0), ok.astype(np.float64), binary=is01 if binary is None else binary)
        return out

    def value(self, metric: str) -> float:
        """The metric on the whole test set."""
        return float(self.num[metric].sum() / self.den[metric].sum())


def _pessimistic_top1(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per row: 1.0 when a label class is ranked first (ties count against it), NaN when the row has no label."""
    best = np.where(targets, scores, -np.inf).max(axis=1, keepdims=True)
    rank = ((scores >= best) & ~targets).sum(axis=1)
    return np.where(targets.any(axis=1), (rank == 0).astype(np.float64), np.nan)


def evaluate_outcomes(
    model,
    manifest: pd.DataFrame,
    dataset: str,
    model_name: str | None = None,
    zeroshot: Mapping[str, tuple] | None = None,
    ks: Sequence[int] = (1, 5),
    retrieval: bool = True,
    batch_size: int = 64,
    cache_dir=None,
    progress: bool = True,
) -> Outcomes:
    """Run dual encoder ``model`` once on ``manifest`` and keep every per-query outcome (see module docstring).

    ``zeroshot``: ``{metric name: (ZeroShotTask, variant)}`` (:func:`vlnb.eval.compare.zeroshot_task`); the
    default is the data set's own task with its first target variant ("any object" shapes for the world,
    "any label" of the 80 categories for COCO). Metrics: ``<name> top-1`` per task, ``i2t R@k`` and
    ``t2i R@k`` for each ``k`` (proportions), ``mean similarity`` (cosine of image and own caption).
    Images that cannot be decoded are left out (``image_ids`` lists the evaluated ones).
    """

    name = model_name or getattr(model, "name", type(model).__name__)
    feats = image_features(model, manifest, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    if len(feats.image_ids) == 0:
        raise ValueError(f"{dataset}: no image of the manifest could be decoded ({len(feats.skipped)} skipped)")
    keep = manifest_rows(manifest, feats.image_ids)
    out = Outcomes(name, dataset, list(feats.image_ids))
    if zeroshot is None:
        task = zeroshot_task(dataset, manifest)
        zeroshot = {"zero-shot": (task, next(iter(task.targets)))}
    for metric, (task, variant) in zeroshot.items():
        if variant not in task.targets:
            raise KeyError(f"zero-shot task of {task.dataset!r} has no target variant {variant!r}; "
                           f"known: {list(task.targets)}")
        clf = zeroshot_classifier(model, task.class_names, task.templates)
        scores = zeroshot_scores(model, feats.embeddings, clf).numpy()
        targets = target_matrix(np.asarray(task.targets[variant])[keep], *scores.shape)
        hit = _pessimistic_top1(scores, targets)
        out.add(f"{metric} top-1", np.nan_to_num(hit), (~np.isnan(hit)).astype(np.float64), binary=True)
    if retrieval:
        texts, owner = captions_table(manifest, feats.image_ids)
        if texts:
            txt = text_features(model, texts, batch_size=max(batch_size, 64), cache_dir=cache_dir, progress=progress)
            with torch.inference_mode():
                sim = model.similarity(feats.embeddings, txt).float().cpu()
            n = len(feats.image_ids)
            ranks = retrieval_ranks(sim, owner)
            n_caps = np.bincount(owner, minlength=n).astype(np.float64)
            has_cap = (n_caps > 0).astype(np.float64)
            for k in ks:
                i2t = np.zeros(n)
                i2t[ranks["i2t_images"]] = (ranks["i2t"] < k).astype(np.float64)
                out.add(f"i2t R@{k}", i2t, has_cap, binary=True)
                out.add(f"t2i R@{k}", np.bincount(owner, weights=(ranks["t2i"] < k).astype(np.float64),
                                                 minlength=n), n_caps)
            own = sim[torch.as_tensor(owner), torch.arange(len(texts))].numpy().astype(np.float64)
            out.add("mean similarity", np.bincount(owner, weights=own, minlength=n), n_caps)
    return out


# ---------------------------------------------------------------------------------------------- groups
def _align_groups(outcomes: Outcomes, groups) -> np.ndarray:
    """Group label of every evaluated image (object array; None where the image has no group)."""
    if isinstance(groups, pd.Series) and not groups.index.equals(pd.RangeIndex(len(groups))):
        groups = groups.to_dict()
    if isinstance(groups, Mapping):
        g = [groups.get(i) for i in outcomes.image_ids]
    else:
        g = list(groups)
        if len(g) != len(outcomes.image_ids):
            raise ValueError(f"{len(g)} group labels for {len(outcomes.image_ids)} evaluated images; pass a "
                             "mapping image_id -> group when images were skipped")
    return np.asarray([None if (x is None or (isinstance(x, float) and np.isnan(x))) else str(x) for x in g],
                      dtype=object)


def _ratio_of_sums(y_true, y_pred) -> float:
    d = float(np.sum(y_pred))
    return float(np.sum(y_true)) / d if d > 0 else float("nan")


def _n_queries(y_true, y_pred) -> float:
    return float(np.sum(y_pred))


def _metric_frame(num, den, g):
    from fairlearn.metrics import MetricFrame, count  # lazy: optional (the fairness extra)

    return MetricFrame(metrics={"value": _ratio_of_sums, "images": count, "queries": _n_queries},
                       y_true=num, y_pred=den, sensitive_features=pd.Series(g, name="group"))


def percentile_interval(samples, level):
    """:func:`vlnb.eval.bootstrap.percentile_interval`, silent when every draw is NaN (the interval is NaN)."""

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _percentile_interval(samples, level)


def _draws(num, den, codes, n_groups, weights) -> np.ndarray:
    """``(n_boot, n_groups)`` group values on bootstrap draws given as per-image weights ``(n_boot, n)``."""
    onehot = np.zeros((len(codes), n_groups))
    onehot[np.arange(len(codes)), codes] = 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ (onehot * num[:, None])) / (weights @ (onehot * den[:, None]))


def _permuted_values(rng: np.random.Generator, codes: np.ndarray, num: np.ndarray, den: np.ndarray, n_groups: int,
                     n_perm: int, chunk: int = 500) -> np.ndarray:
    """``(n_perm, n_groups)`` group values after ``n_perm`` independent shuffles of the group ``codes`` across the
    images (group sizes kept): the permutation null distribution, drawn in chunks of ``chunk`` shuffles at a time."""
    codes = np.asarray(codes, dtype=np.int64)
    n, out = len(codes), []
    for s in range(0, n_perm, chunk):
        b = min(chunk, n_perm - s)
        perm = rng.permuted(np.broadcast_to(codes, (b, n)), axis=1)
        flat = (perm + n_groups * np.arange(b)[:, None]).ravel()
        sums = [np.bincount(flat, np.tile(w, b), n_groups * b).reshape(b, n_groups) for w in (num, den)]
        out.append(sums[0] / sums[1])
    return np.concatenate(out) if out else np.empty((0, n_groups))


def _valid(outcomes: Outcomes, metric: str, g: np.ndarray) -> np.ndarray:
    if metric not in outcomes.num:
        raise KeyError(f"unknown metric {metric!r}; this evaluation has {outcomes.metrics}")
    return (outcomes.den[metric] > 0) & np.asarray([x is not None for x in g])


@timer("metrics")
def group_table(
    outcomes: Outcomes,
    groups,
    grouping: str = "group",
    metrics: Sequence[str] | None = None,
    min_size: int = 10,
    exclude: Sequence[str] = (),
    level: float = 0.95,
    n_boot: int = 1000,
    interval: str = "wilson",
    seed: int = 0,
) -> pd.DataFrame:
    """Every group's value of every metric with its confidence interval (tidy; see module docstring).

    ``groups``: one label per evaluated image (aligned with ``outcomes.image_ids``) or a mapping / Series
    ``image_id -> label``; images without a label are left out. Columns: ``model, dataset, grouping,
    metric, group, value, ci_lo, ci_hi, ci_method, images, queries, flagged`` (fewer than ``min_size``
    images), ``ranked`` (neither flagged nor excluded) and ``rank`` (1 = best among the ranked groups).
    """
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    g_all = _align_groups(outcomes, groups)
    rows = []
    for metric in metrics or outcomes.metrics:
        ok = _valid(outcomes, metric, g_all)
        if not ok.any():
            continue
        num, den, g = outcomes.num[metric][ok], outcomes.den[metric][ok], g_all[ok]
        mf = _metric_frame(num, den, g)
        table = mf.by_group.reset_index()
        names = list(table["group"])
        if outcomes.binary[metric]:
            k = table["value"].to_numpy() * table["queries"].to_numpy()
            lo, hi = binomial_interval(np.round(k), table["queries"].to_numpy(), level, interval)
            method = interval
        else:
            codes = pd.Categorical(g, categories=names).codes
            w = bootstrap_weights(len(g), n_boot, seed, strata=g)
            lo, hi = percentile_interval(_draws(num, den, codes, len(names), w), level)
            method = "bootstrap (images, by group)"
        for j, name in enumerate(names):
            n_img = int(table["images"].iloc[j])
            flagged = n_img < min_size
            rows.append({"model": outcomes.model, "dataset": outcomes.dataset, "grouping": grouping, "metric": metric,
                         "group": name, "value": float(table["value"].iloc[j]), "ci_lo": float(lo[j]),
                         "ci_hi": float(hi[j]), "ci_method": method, "images": n_img,
                         "queries": int(table["queries"].iloc[j]), "flagged": flagged,
                         "ranked": not flagged and name not in set(exclude)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["rank"] = pd.array([pd.NA] * len(df), dtype="Int64")
    ranked = df["ranked"]
    df.loc[ranked, "rank"] = (df[ranked].groupby("metric")["value"].rank(ascending=False, method="min")
                              .astype("int64"))
    return df


@timer("metrics")
def gap_table(
    outcomes: Outcomes,
    groups,
    grouping: str = "group",
    metrics: Sequence[str] | None = None,
    min_size: int = 10,
    exclude: Sequence[str] = (),
    level: float = 0.95,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Gap (max - min) and ratio (min / max) of each metric over the ranked groups, with intervals.

    Only groups with at least ``min_size`` images and not in ``exclude`` take part. Columns: ``model,
    dataset, grouping, metric, n_groups, flagged_groups, best_group, best, worst_group, worst, gap,
    gap_lo, gap_hi, ratio, ratio_lo, ratio_hi, p_value`` (permutation test of "no gap"),
    ``gap_detected`` (``p_value < 1 - level``). With fewer than two ranked groups the gap is NaN.
    """
    g_all = _align_groups(outcomes, groups)
    rng = np.random.default_rng([int(seed), 0x6A9])
    rows = []
    for metric in metrics or outcomes.metrics:
        ok = _valid(outcomes, metric, g_all)
        if not ok.any():
            continue
        sizes = pd.Series(g_all[ok]).value_counts()
        small = sorted(sizes.index[sizes < min_size])
        ranked_names = sorted(n for n in sizes.index[sizes >= min_size] if n not in set(exclude))
        base = {"model": outcomes.model, "dataset": outcomes.dataset, "grouping": grouping, "metric": metric,
                "n_groups": len(ranked_names), "flagged_groups": ", ".join(small)}
        if len(ranked_names) < 2:
            rows.append({**base, "best_group": None, "best": np.nan, "worst_group": None, "worst": np.nan,
                         "gap": np.nan, "gap_lo": np.nan, "gap_hi": np.nan, "ratio": np.nan, "ratio_lo": np.nan,
                         "ratio_hi": np.nan, "p_value": np.nan, "gap_detected": False})
            continue
        sel = ok & np.isin(g_all.astype(str), ranked_names)
        num, den, g = outcomes.num[metric][sel], outcomes.den[metric][sel], g_all[sel]
        mf = _metric_frame(num, den, g)
        values = mf.by_group["value"]
        gap = float(mf.difference(method="between_groups")["value"])
        ratio = float(mf.ratio(method="between_groups")["value"])
        codes = pd.Categorical(g, categories=ranked_names).codes
        G = len(ranked_names)
        draws = _draws(num, den, codes, G, bootstrap_weights(len(g), n_boot, seed, strata=g))
        gap_lo, gap_hi = percentile_interval(draws.max(1) - draws.min(1), level)
        with np.errstate(invalid="ignore", divide="ignore"):
            r_lo, r_hi = percentile_interval(draws.min(1) / draws.max(1), level)
        # permutation test: shuffle group labels across images (sizes kept), recompute the gap
        with np.errstate(invalid="ignore", divide="ignore"):
            v = _permuted_values(rng, codes, num, den, G, n_perm)
        perm_gaps = v.max(1) - v.min(1)
        p = (1 + np.sum(perm_gaps >= gap - 1e-12)) / (1 + n_perm)
        rows.append({**base, "best_group": str(values.idxmax()), "best": float(values.max()),
                     "worst_group": str(values.idxmin()), "worst": float(values.min()), "gap": gap,
                     "gap_lo": float(gap_lo), "gap_hi": float(gap_hi), "ratio": ratio, "ratio_lo": float(r_lo),
                     "ratio_hi": float(r_hi), "p_value": float(p), "gap_detected": bool(p < 1 - level)})
    return pd.DataFrame(rows)


@timer("metrics")
def group_contrast(
    outcomes: Outcomes,
    groups,
    target: str,
    metrics: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    level: float = 0.95,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Group ``target`` against all other groups (pooled): ``gap = rest - target`` (signed; positive = the
    target group does worse) with a stratified bootstrap interval and a two-sided permutation p-value.

    Columns: ``model, dataset, metric, target, target_value, rest_value, gap, gap_lo, gap_hi, p_value,
    target_images, rest_images``.
    """
    g_all = _align_groups(outcomes, groups)
    rng = np.random.default_rng([int(seed), 0xC0F])
    rows = []
    for metric in metrics or outcomes.metrics:
        ok = _valid(outcomes, metric, g_all) & ~np.isin(g_all.astype(str), list(exclude))
        is_t = (g_all == str(target)) & ok
        if not is_t.any() or not (ok & ~is_t).any():
            raise ValueError(f"metric {metric!r}: group {target!r} or the rest has no image "
                             f"(groups: {sorted(set(g_all[ok].tolist()))})")
        num, den = outcomes.num[metric][ok], outcomes.den[metric][ok]
        codes = is_t[ok].astype(np.int64)  # 0 = rest, 1 = target
        v = np.bincount(codes, num, 2) / np.bincount(codes, den, 2)
        draws = _draws(num, den, codes, 2, bootstrap_weights(len(codes), n_boot, seed, strata=codes))
        lo, hi = percentile_interval(draws[:, 0] - draws[:, 1], level)
        with np.errstate(invalid="ignore", divide="ignore"):
            pv = _permuted_values(rng, codes, num, den, 2, n_perm)
        perm = pv[:, 0] - pv[:, 1]
        gap = float(v[0] - v[1])
        p = (1 + np.sum(np.abs(perm) >= abs(gap) - 1e-12)) / (1 + n_perm)
        rows.append({"model": outcomes.model, "dataset": outcomes.dataset, "metric": metric, "target": str(target),
                     "target_value": float(v[1]), "rest_value": float(v[0]), "gap": gap, "gap_lo": float(lo),
                     "gap_hi": float(hi), "p_value": float(p), "target_images": int(codes.sum()),
                     "rest_images": int(len(codes) - codes.sum())})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- units
#: Columns of group / gap / contrast tables that hold a metric's value or a difference of two values.
VALUE_COLUMNS = ("value", "ci_lo", "ci_hi", "best", "worst", "gap", "gap_lo", "gap_hi", "target_value", "rest_value",
                 "overall", "chance")


def is_proportion(metric: str) -> bool:
    """True for a hit rate (zero-shot top-1, Recall@K): every metric of :func:`evaluate_outcomes` but the mean
    cosine similarity."""
    return "similarity" not in str(metric)


def in_percent(table: pd.DataFrame) -> pd.DataFrame:
    """A :func:`group_table` / :func:`gap_table` / :func:`group_contrast` table in the book's unit: the
    :data:`VALUE_COLUMNS` of every proportion metric times 100 (values in %, gaps in percentage points), the
    mean similarity left a cosine; ratios and p-values unchanged. Adds ``unit`` (``"%"`` or ``"cosine"``). A
    table that already has a ``unit`` column is returned as it is, so converting twice is harmless."""
    if table.empty or "unit" in table.columns:
        return table
    out = table.copy()
    pct = out["metric"].map(is_proportion).to_numpy(dtype=bool)
    for c in VALUE_COLUMNS:
        if c in out.columns:
            out[c] = np.where(pct, 100.0 * out[c].astype(float), out[c].astype(float))
    out["unit"] = np.where(pct, "%", "cosine")
    return out


__all__ = ["VALUE_COLUMNS", "Outcomes", "evaluate_outcomes", "gap_table", "group_contrast", "group_table",
           "in_percent", "is_proportion"]
