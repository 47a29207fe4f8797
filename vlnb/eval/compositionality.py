"""The compositionality probe: does a model score an image's true caption above a minimally changed foil?

Model-agnostic over :mod:`vlnb.models.base`: every model is scored through its *heads* (:func:`heads`) --
a dual encoder by the cosine of its embeddings ("ITC"; multi-query image embeddings by the max over
queries, as :meth:`~vlnb.models.base.DualEncoder.similarity`), a cross encoder by its pair score ("ITM"),
and a model with both (BLIP-like: a dual encoder with ``.cross_encoder()``) gets one row per head.

- :func:`world_probe` -- the offline world's grammar-checked foils (:func:`vlnb.data.negatives.world_negatives`):
  per negative type, the share of (true, foil) pairs where the true caption scores higher. Chance is 0.5;
  an exact tie counts one half, so a model that cannot tell the two apart (a bag-of-words model on a pure
  swap gives *identical* scores) sits at exactly 0.5.
- :func:`order_probe` -- ARO's COCO-Order (Yuksekgonul et al., 2023) on any captioned manifest: each
  caption against its four word-order shuffles (:func:`vlnb.data.negatives.order_perturbations`). Two
  metrics: ARO's own -- the share of cases where the original is the best of the 5 options (chance 0.2;
  ties share the credit, where ARO's ``argmax`` would hand a tie to the original) -- and the pairwise win
  rate per perturbation type (chance 0.5).
- Intervals: percentile bootstrap over *images* (:func:`vlnb.eval.bootstrap.bootstrap_weights`), the same
  draws for every model and type (one seed), so rows are compared on paired resamples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..data.manifest import subset
from ..data.negatives import (
    NEGATIVE_TYPES,
    ORDER_PERTURBATIONS,
    order_perturbations,
    world_negatives,
    world_scenes,
)
from ..data.pixels import pixel_loader
from ..progress import tqdm
from .bootstrap import bootstrap_recall, bootstrap_weights, percentile_interval, recall_difference
from .compare import evaluate_retrieval, unknown_word_rate
from .features import image_features, text_features
from .rerank import score_pixel_text_pairs

PROBE_COLUMNS = ["model", "head", "type", "accuracy", "ci_lo", "ci_hi", "chance", "n_pairs", "n_images", "n_ties"]


# ---------------------------------------------------------------------------------------------- scoring
def heads(model) -> dict[str, object]:
    """``{"ITC": dual encoder, "ITM": cross encoder}`` -- whichever of the two ``model`` offers."""
    out = {}
    kind = getattr(model, "kind", None)
    if kind == "dual":
        out["ITC"] = model
        if callable(getattr(model, "cross_encoder", None)):
            out["ITM"] = model.cross_encoder()
    elif kind == "cross":
        out["ITM"] = model
    elif callable(getattr(model, "score_pairs", None)):  # a hand-made scorer (tests, baselines)
        out[getattr(model, "head", "rule")] = model
    else:
        raise TypeError(f"{type(model).__name__} is neither a dual encoder, a cross encoder nor a pair scorer "
                        "(kind 'dual' / 'cross', or a score_pairs(manifest, image_ids, texts) method)")
    return out


def score_pairs(head, manifest: pd.DataFrame, image_ids: Sequence, texts: Sequence[str], batch_size: int = 64,
                cache_dir=None, progress: bool = False) -> np.ndarray:
    """One score per (``image_ids[i]``, ``texts[i]``) pair: cosine (dual), ITM score (cross) or the
    scorer's own (``head.score_pairs``). Images missing from, or undecodable in, ``manifest`` get NaN."""
    image_ids, texts = list(image_ids), [str(t) for t in texts]
    if len(image_ids) != len(texts):
        raise ValueError(f"{len(image_ids)} image ids but {len(texts)} texts")
    if not texts:
        return np.zeros(0)
    if callable(getattr(head, "score_pairs", None)) and getattr(head, "kind", None) not in ("dual", "cross"):
        return np.asarray(head.score_pairs(manifest, image_ids, texts), dtype=np.float64)
    uniq_ids = list(dict.fromkeys(image_ids))
    ids = manifest["image_id"]
    sub = subset(manifest, (ids.isin(set(uniq_ids)) & ~ids.duplicated()).to_numpy())
    uniq_txt = list(dict.fromkeys(texts))
    t_index = {t: i for i, t in enumerate(uniq_txt)}
    out = np.full(len(texts), np.nan)
    if head.kind == "dual":
        feats = image_features(head, sub, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
        row = {iid: r for r, iid in enumerate(feats.image_ids)}
        temb = text_features(head, uniq_txt, cache_dir=cache_dir, progress=progress)
        by_image: dict[int, list[int]] = {}
        for k, iid in enumerate(image_ids):
            if iid in row:
                by_image.setdefault(row[iid], []).append(k)
        with torch.inference_mode():
            for r, ks in by_image.items():
                t = temb[[t_index[texts[k]] for k in ks]]
                out[ks] = head.similarity(feats.embeddings[r : r + 1], t)[0].double().numpy()
        return out

    ok = [k for k, iid in enumerate(image_ids) if iid in set(sub["image_id"])]
    pos = {iid: r for r, iid in enumerate(sub["image_id"])}
    load = pixel_loader(head.preprocess, sub, list(sub["image_id"]))
    img_idx = torch.tensor([pos[image_ids[k]] for k in ok], dtype=torch.long)
    txt_idx = torch.tensor([t_index[texts[k]] for k in ok], dtype=torch.long)
    scores = score_pixel_text_pairs(head, load, uniq_txt, img_idx, txt_idx, batch_size, progress)
    out[ok] = scores.double().numpy()
    return out


# ---------------------------------------------------------------------------------------------- metrics
def win(true_scores, neg_scores) -> np.ndarray:
    """1 where the true caption scores higher, 0.5 on an exact tie, 0 otherwise (NaN if a score is NaN)."""
    a, b = np.asarray(true_scores, dtype=np.float64), np.asarray(neg_scores, dtype=np.float64)
    w = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    return np.where(np.isnan(a) | np.isnan(b), np.nan, w)


def grouped_accuracy(values, units, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                     unit_order: Sequence | None = None) -> dict:
    """Mean of ``values`` (NaN dropped) with a percentile bootstrap interval resampling ``units`` (images).

    ``unit_order`` fixes the unit indexing (pass the same list for every row so all rows use the same draws).
    """
    v = np.asarray(values, dtype=np.float64)
    u = np.asarray(list(units), dtype=object)
    keep = ~np.isnan(v)
    v, u = v[keep], u[keep]
    order = list(unit_order) if unit_order is not None else list(dict.fromkeys(u.tolist()))
    if not len(v):
        return {"accuracy": np.nan, "ci_lo": np.nan, "ci_hi": np.nan, "n_pairs": 0, "n_images": 0}
    index = {x: i for i, x in enumerate(order)}
    missing = {x for x in u.tolist() if x not in index}
    if missing:
        raise ValueError(f"unit(s) {sorted(map(str, missing))[:5]} are not in unit_order")
    col = np.array([index[x] for x in u.tolist()])
    n_units = len(order)
    num = np.bincount(col, weights=v, minlength=n_units)
    den = np.bincount(col, minlength=n_units).astype(np.float64)
    w = bootstrap_weights(n_units, n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = (w @ num) / (w @ den)
    lo, hi = percentile_interval(draws, level)
    return {"accuracy": float(num.sum() / den.sum()), "ci_lo": float(lo), "ci_hi": float(hi),
            "n_pairs": len(v), "n_images": int((den > 0).sum())}


# ---------------------------------------------------------------------------------------------- world probe
def _model_heads(models: Mapping) -> list[tuple[str, str, object]]:
    return [(name, h, obj) for name, m in models.items() for h, obj in heads(m).items()]


def world_probe(models: Mapping, manifest: pd.DataFrame, types: Sequence[str] = NEGATIVE_TYPES,
                max_images: int | None = None, n_boot: int = 1000, seed: int = 0, batch_size: int = 64,
                cache_dir=None, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The world compositionality probe of every model (and head) on a world test manifest.

    Returns ``(table, report, pairs)``: ``table`` -- :data:`PROBE_COLUMNS`, one row per (model, head,
    type); ``report`` -- the foils dropped per type (:func:`vlnb.data.negatives.world_negatives`);
    ``pairs`` -- every scored pair (``model, head, type, image_id, true_caption, negative, s_true, s_neg,
    win``) for inspection.
    """
    m = manifest if max_images is None else manifest.iloc[:max_images]
    items, report = world_negatives(world_scenes(m), types, seed=seed)
    order = list(m["image_id"])
    rows, pairs = [], []
    it = _model_heads(models)
    if progress:
        it = tqdm(it, desc="world probe", leave=False)
    for name, h, obj in it:
        ids = list(items["image_id"]) * 2
        texts = list(items["true_caption"]) + list(items["negative"])
        s = score_pairs(obj, m, ids, texts, batch_size=batch_size, cache_dir=cache_dir)
        st, sn = s[: len(items)], s[len(items):]
        df = items.assign(model=name, head=h, s_true=st, s_neg=sn, win=win(st, sn))
        pairs.append(df)
        for t in types:
            d = df[df["type"] == t]
            rows.append({"model": name, "head": h, "type": t, "chance": 0.5, "n_ties": int((d["win"] == 0.5).sum()),
                         **grouped_accuracy(d["win"], d["image_id"], n_boot=n_boot, seed=seed, unit_order=order)})
    table = pd.DataFrame(rows, columns=PROBE_COLUMNS)
    return table, report, (pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame())


# ---------------------------------------------------------------------------------------------- ARO order
def order_probe(models: Mapping, manifest: pd.DataFrame, max_captions: int | None = None, n_boot: int = 1000,
                seed: int = 0, batch_size: int = 64, cache_dir=None, progress: bool = True,
                dataset: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """ARO COCO-Order on ``manifest``'s captions for every model (and head).

    Returns ``(table, cases)``. ``table``: :data:`PROBE_COLUMNS` + ``dataset``; per (model, head) one row
    ``type="ARO 5-way"`` (the original is the top option of 5, chance 0.2, ties share the credit) and one
    pairwise row per perturbation type (chance 0.5; perturbations equal to the original are left out).
    ``cases``: the perturbed captions (:func:`vlnb.data.negatives.order_perturbations`).
    """
    ids, caps = [], []
    for iid, cs in zip(manifest["image_id"], manifest["captions"]):
        for c in cs:
            ids.append(iid)
            caps.append(str(c))
    if max_captions is not None:
        ids, caps = ids[:max_captions], caps[:max_captions]
    cases = order_perturbations(caps, ids, seed=seed)
    orig = cases.drop_duplicates("case")[["case", "image_id", "caption"]].reset_index(drop=True)
    order = list(dict.fromkeys(ids))
    n_k = len(ORDER_PERTURBATIONS)
    rows = []
    it = _model_heads(models)
    if progress:
        it = tqdm(it, desc="order probe", leave=False)
    for name, h, obj in it:
        s = score_pairs(obj, manifest, list(orig["image_id"]) + list(cases["image_id"]),
                        list(orig["caption"]) + list(cases["perturbed"]), batch_size=batch_size, cache_dir=cache_dir)
        s_orig, s_pert = s[: len(orig)], s[len(orig):].reshape(len(orig), n_k)
        opts = np.concatenate([s_orig[:, None], s_pert], axis=1)
        best = np.nanmax(opts, axis=1, keepdims=True) if len(opts) else opts
        at_top = opts == best
        credit = np.where(at_top[:, 0], 1.0 / at_top.sum(axis=1), 0.0)
        credit = np.where(np.isnan(opts).any(axis=1), np.nan, credit)
        rows.append({"model": name, "head": h, "type": "ARO 5-way", "chance": 1.0 / (n_k + 1),
                     "n_ties": int((at_top.sum(axis=1) > 1).sum()),
                     **grouped_accuracy(credit, orig["image_id"], n_boot=n_boot, seed=seed, unit_order=order)})
        for j, kind in enumerate(ORDER_PERTURBATIONS):
            d = cases[cases["type"] == kind].reset_index(drop=True)
            w = win(s_orig, s_pert[:, j])
            w = np.where(d["changed"].to_numpy(), w, np.nan)
            rows.append({"model": name, "head": h, "type": kind, "chance": 0.5,
                         "n_ties": int(np.nansum(w == 0.5)),
                         **grouped_accuracy(w, d["image_id"], n_boot=n_boot, seed=seed, unit_order=order)})
    table = pd.DataFrame(rows, columns=PROBE_COLUMNS)
    table.insert(2, "dataset", dataset)
    return table, cases


# ---------------------------------------------------------------------------------------------- NegCLIP's price
def retrieval_with_ci(models: Mapping, manifest: pd.DataFrame, dataset: str, baseline: str | None = None,
                      ks: Sequence[int] = (1, 5, 10), n_boot: int = 1000, seed: int = 0, batch_size: int = 64,
                      cache_dir=None, progress: bool = False) -> pd.DataFrame:
    """Plain ITC retrieval (all captions, :func:`vlnb.eval.compare.evaluate_retrieval`) of dual encoders on one
    manifest, with bootstrap CIs over images and, when ``baseline`` names one of ``models``, the paired
    interval of each model's difference to it (same draws): what a change such as NegCLIP's costs or buys.

    Columns ``model, direction, k, recall, ci_lo, ci_hi, diff, diff_lo, diff_hi`` (percent points).
    """

    rows, draws = [], {}
    for name, m in models.items():
        run = evaluate_retrieval(m, manifest, dataset, name, ks=ks, batch_size=batch_size, cache_dir=cache_dir,
                                 progress=progress)
        df, draws[name] = bootstrap_recall(run.ranks(), run.text_to_image, ks=ks, n_boot=n_boot, seed=seed,
                                           n_images=len(run.image_ids), return_samples=True)
        rows.append(df.assign(model=name))
    out = pd.concat(rows, ignore_index=True)[["model", "direction", "k", "recall", "ci_lo", "ci_hi"]]
    out["diff"] = out["diff_lo"] = out["diff_hi"] = np.nan
    if baseline is not None:
        if baseline not in draws:
            raise KeyError(f"baseline {baseline!r} is not one of the models {list(models)}")
        base = out[out["model"] == baseline].set_index(["direction", "k"])["recall"]
        for name in models:
            d = recall_difference(draws[name], draws[baseline]).set_index(["direction", "k"])
            sel = out["model"] == name
            keys = list(zip(out.loc[sel, "direction"], out.loc[sel, "k"]))
            out.loc[sel, "diff"] = out.loc[sel, "recall"].to_numpy() - base.loc[keys].to_numpy()
            out.loc[sel, "diff_lo"] = d.loc[keys, "diff_lo"].to_numpy()
            out.loc[sel, "diff_hi"] = d.loc[keys, "diff_hi"].to_numpy()
    return out


def readable(models: Mapping, texts: Sequence[str], max_unknown_words: float = 0.5) -> tuple[dict, pd.DataFrame]:
    """The models whose tokenizer knows most words of ``texts`` (as the comparison's coverage rule), and a
    ``model, evaluated, why`` table of every model."""

    keep, rows = {}, []
    for name, m in models.items():
        unk = unknown_word_rate(m, list(texts)[:2000])
        ok = unk <= max_unknown_words
        rows.append({"model": name, "evaluated": ok, "why": "" if ok else f"{unk:.0%} of the words are unknown"})
        if ok:
            keep[name] = m
    return keep, pd.DataFrame(rows, columns=["model", "evaluated", "why"])


def verdict(acc: float, lo: float, hi: float, chance: float) -> str:
    """Plain words for an accuracy and its interval against chance (for prose glued from the numbers)."""
    if lo > chance:
        return "above chance"
    if hi < chance:
        return "below chance"
    return "indistinguishable from chance"


# ---------------------------------------------------------------------------------------------- published
#: ARO's published COCO-Order / Flickr30k-Order accuracies (pick the original among 5 options, chance 0.2).
#: ``source`` says where each figure was read; literature values, never vlnb results.
PUBLISHED_ORDER = pd.DataFrame(
    [
        ("CLIP ViT-B/32", "openai/clip-vit-base-patch32", "coco", 0.46,
         "ARO paper (Yuksekgonul et al., ICLR 2023), Table 1 / App. Table 6"),
        ("CLIP ViT-B/32", "openai/clip-vit-base-patch32", "flickr30k", 0.59,
         "ARO paper (Yuksekgonul et al., ICLR 2023), Table 1 / App. Table 6"),
        ("NegCLIP (ViT-B/32, COCO fine-tuned)", "", "coco", 0.86, "ARO paper, App. Table 6"),
        ("NegCLIP (ViT-B/32, COCO fine-tuned)", "", "flickr30k", 0.91, "ARO paper, App. Table 6"),
        ("BLIP-base, COCO fine-tuned (ARO's code, re-run)", "Salesforce/blip-itm-base-coco", "coco", 0.371,
         "third-party re-run with ARO's code: mertyg/vision-language-models-are-bows issue #33"),
        ("BLIP-base, COCO fine-tuned (ARO's code, re-run)", "Salesforce/blip-itm-base-coco", "flickr30k", 0.463,
         "third-party re-run with ARO's code: mertyg/vision-language-models-are-bows issue #33"),
    ],
    columns=["model", "hub_id", "dataset", "accuracy", "source"],
)


def published_order_page() -> pd.DataFrame:
    """:data:`PUBLISHED_ORDER` for a page: the accuracy in %, like every accuracy of the book."""
    return PUBLISHED_ORDER.assign(accuracy=(100 * PUBLISHED_ORDER["accuracy"]).round(1)).rename(
        columns={"accuracy": "accuracy (%)"})


def with_published_order(table: pd.DataFrame, models: Mapping) -> pd.DataFrame:
    """``table`` (of :func:`order_probe`) with ARO's published 5-way accuracy beside each "ARO 5-way" row whose
    model was loaded from the published checkpoint (joined on hub id and data set; NaN elsewhere)."""
    pub = {(h, d): (a, s) for h, d, a, s in zip(PUBLISHED_ORDER["hub_id"], PUBLISHED_ORDER["dataset"],
                                                 PUBLISHED_ORDER["accuracy"], PUBLISHED_ORDER["source"]) if h}
    hub = {name: str(getattr(m, "name", "")) for name, m in models.items()}
    found = [pub.get((hub.get(m, ""), d)) if t == "ARO 5-way" else None
             for m, d, t in zip(table["model"], table["dataset"], table["type"])]
    return table.assign(published=[f[0] if f else np.nan for f in found],
                        published_source=[f[1] if f else "" for f in found])


# ---------------------------------------------------------------------------------------------- display
def say(row) -> str:
    """One probe row in words for the prose, in percent like every accuracy of the book: "44.0 % [38.2, 49.9],
    indistinguishable from chance" (the table keeps proportions; :func:`verdict` compares them with chance)."""
    return (f"{100 * row['accuracy']:.1f} % [{100 * row['ci_lo']:.1f}, {100 * row['ci_hi']:.1f}], "
            f"{verdict(row['accuracy'], row['ci_lo'], row['ci_hi'], row['chance'])}")


def retrieval_diff_page(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`retrieval_with_ci`'s tidy table for a page: one row per model, one column per direction and K, each
    cell "recall (difference [lo, hi])" in % and points against the baseline (the baseline's own cells: recall)."""
    arrow = {"i2t": "I→T", "t2i": "T→I"}

    def cell(r) -> str:
        if r["diff"] == 0 and r["diff_lo"] == 0 and r["diff_hi"] == 0:
            return f"{r['recall']:.1f}"
        return f"{r['recall']:.1f} ({r['diff']:+.1f} [{r['diff_lo']:+.1f}, {r['diff_hi']:+.1f}])"

    t = table.assign(column=[f"{arrow.get(d, d)} R@{int(k)}" for d, k in zip(table["direction"], table["k"])],
                     cell=[cell(r) for _, r in table.iterrows()])
    wide = t.pivot_table(index="model", columns="column", values="cell", aggfunc="first", sort=False)
    wide.columns.name = None
    return wide


def probe_pivot(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """A wide display table: one row per (model, head), one "acc [lo, hi]" column per type, in percent (the
    tidy table and its CSV keep proportions in ``accuracy``/``ci_lo``/``ci_hi``)."""
    t = table.assign(cell=[f"{100 * a:.{digits}f} [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]" if pd.notna(a)
                           else "–" for a, lo, hi in zip(table["accuracy"], table["ci_lo"], table["ci_hi"])])
    keys = [k for k in ("model", "head", "dataset") if k in t.columns and (k != "dataset" or t[k].astype(bool).any())]
    wide = t.pivot_table(index=keys, columns="type", values="cell", aggfunc="first", sort=False)
    cols = [c for c in ("ARO 5-way", *NEGATIVE_TYPES, *ORDER_PERTURBATIONS) if c in wide.columns]
    return wide[cols]


__all__ = [
    "PROBE_COLUMNS",
    "PUBLISHED_ORDER",
    "grouped_accuracy",
    "heads",
    "order_probe",
    "probe_pivot",
    "published_order_page",
    "readable",
    "retrieval_diff_page",
    "retrieval_with_ci",
    "say",
    "score_pairs",
    "verdict",
    "win",
    "with_published_order",
    "world_probe",
]
