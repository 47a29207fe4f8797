"""The chapter's steps as functions: data for the pointing game, which model sees which data, the patch grid
table, entropies, and the pointing game over every model (what ``notebooks/06_interpretability`` calls)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..data import build_manifest
from ..data.profiles import repo_path
from ..device import resolve_device
from ..zoo import RECIPES, reference_data
from .explain import cnn_grid, entropy_table, explain, supported_methods
from .pointing import PointingPair, coco_pairs, score_pairs, size_batches, world_pairs
from .trace import trace_attention

POINTING_DATASETS = ("world", "coco")
_RECIPE_DATA = {"world": "world", "coco-mini": "coco"}


def load_pairs(datasets: Sequence[str], n_images: int, coco_root: str | None = None, coco_split: str = "val2017",
               min_area: float = 0.01) -> dict[str, list[PointingPair]]:
    """``{dataset: pairs}``. ``world``: test images of the offline world the reference ViT was trained on
    (its recipe's config); ``coco``: ``coco_root`` / ``coco_split`` (None: the shared coco-mini val2017, the
    towers' test set; a relative root is relative to the repository, as in every chapter: a run's working
    folder is its run folder)."""

    bad = [d for d in datasets if d not in POINTING_DATASETS]
    if bad:
        raise ValueError(f"unknown pointing-game data set(s) {bad}; choose from {POINTING_DATASETS}")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    out = {}
    for d in datasets:
        if d == "world":  # test images are drawn per index, so a small test split gives the same first images
            df = reference_data("scratch-world", n_train=0, n_test=3 * n_images + 20)["test"]
            out[d] = world_pairs(df, n_images)
        else:
            if coco_root is None:
                df = reference_data("towers-coco")["test"]
            else:
                df, _ = build_manifest("coco", root=repo_path(coco_root), split=coco_split)
            out[d] = coco_pairs(df, n_images, min_area=min_area)
    return out


def model_datasets(name: str, datasets: Sequence[str]) -> list[str]:
    """The data sets model ``name`` is scored on: a reference model of :data:`vlnb.zoo.RECIPES` on its own
    training data (the world ViT sees 64-px world scenes only), any other model on all of ``datasets``."""

    if name in RECIPES:
        own = _RECIPE_DATA.get(RECIPES[name].data)
        return [own] if own in datasets else []
    return list(datasets)


def grid_row(model, name: str, pair: PointingPair) -> dict:
    """The model's input size, patch grid and token count, read from a real forward pass (and asserted)."""
    pixels = model.preprocess([pair.image])
    h, w = pixels.shape[-2:]
    row = {"model": name, "family": model.family, "input": f"{h}x{w}"}
    if model.family == "towers":
        maps = explain(model, pixels, [pair.text], methods=["gradcam"])
        gh, gw = maps["gradcam"].grid.shape[-2:]
        assert (gh, gw) == cnn_grid((h, w))
        return {**row, "patch": "stride 32", "grid": f"{gh}x{gw}", "special_tokens": 0, "tokens": gh * gw}
    tr = trace_attention(model, pixels, [pair.text])
    gh, gw = tr.grid
    assert tr.n_tokens == tr.n_special + gh * gw  # also asserted inside the trace
    return {**row, "patch": f"{h // gh}", "grid": f"{gh}x{gw}", "special_tokens": tr.n_special,
            "tokens": tr.n_tokens, "layers": tr.n_layers, "heads": int(tr.attentions[0].shape[1])}


def entropy_of(model, name: str, pairs: Sequence[PointingPair], n: int = 8) -> pd.DataFrame:
    """Attention entropy per layer/head on the first ``n`` pairs' images (with their texts, which ViLT's
    joint attention depends on); empty for models without attention (the CNN towers).

    Images are traced one input size at a time (:func:`~vlnb.interpret.pointing.size_batches`); when they
    differ (ViLT keeps each image's aspect ratio) the per-size tables are averaged weighted by their images,
    ``n_tokens`` included (rounded): the mean key count of the rows."""
    if model.family not in ("scratch", "clip", "blip", "blip2", "vilt", "fusion") or not pairs:
        return pd.DataFrame()
    batch = list(pairs[:n])
    tables = []
    for idx in size_batches(model.preprocess, [p.image for p in batch], len(batch)):
        tr = trace_attention(model, model.preprocess([batch[i].image for i in idx]), [batch[i].text for i in idx])
        tables.append(entropy_table(tr).assign(images=len(idx)))
    t = tables[0].drop(columns="images") if len(tables) == 1 else _pooled(tables)
    t.insert(0, "model", name)
    return t


def _pooled(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Entropy tables of disjoint image groups as one: per (block, layer, head, rows) the mean weighted by the
    groups' ``images`` (each table's values are means over its images)."""
    t = pd.concat(tables, ignore_index=True)
    values = ["n_tokens", "entropy", "max_entropy", "normalised"]
    w = t["images"].to_numpy(dtype=float)
    weighted = t[values].mul(w, axis=0).assign(images=w)
    keys = ["block", "layer", "head", "rows"]
    sums = pd.concat([t[keys], weighted], axis=1).groupby(keys, sort=False).sum()
    out = sums[values].div(sums["images"], axis=0).reset_index()
    out["n_tokens"] = out["n_tokens"].round().astype(int)
    return out


def run_pointing(models: Mapping[str, object], pairs: Mapping[str, Sequence[PointingPair]],
                 methods: Sequence[str] | None = None, batch_size: int = 16, upsample: str = "bilinear",
                 tolerance: int = 0, start_layer: int = 0, keep: int = 4, n_entropy: int = 8,
                 progress: bool = True) -> dict:
    """The pointing game, patch grids and entropies of every model on its data sets.

    Returns ``{"records", "grids", "entropy", "timing"}`` (tidy DataFrames) and ``"examples"``:
    ``{dataset: {model: [Example]}}`` for overlays. ``methods=None``: every method each model supports;
    otherwise the listed ones that apply to the model.
    """
    records, grids, entropies, timing = [], [], [], []
    examples: dict[str, dict[str, list]] = {d: {} for d in pairs}
    for name, model in models.items():
        own = supported_methods(model)
        use = own if methods is None else [m for m in methods if m in own]
        if not use:
            continue
        for d in model_datasets(name, list(pairs)):
            if not pairs[d]:
                continue
            t0 = time.perf_counter()
            grids.append({**grid_row(model, name, pairs[d][0]), "dataset": d})
            recs, exs = score_pairs(model, name, pairs[d], use, batch_size=batch_size, upsample=upsample,
                                    tolerance=tolerance, start_layer=start_layer, keep=keep, progress=progress)
            ent = entropy_of(model, name, pairs[d], n_entropy)
            if not ent.empty:
                entropies.append(ent.assign(dataset=d))
            records.append(recs)
            examples[d][name] = exs
            timing.append({"model": name, "dataset": d, "pairs": len(pairs[d]), "methods": len(use),
                           "seconds": time.perf_counter() - t0})
    if not records:
        raise ValueError("no model was scored: check models, methods and data sets")
    return {"records": pd.concat(records, ignore_index=True), "grids": pd.DataFrame(grids),
            "entropy": pd.concat(entropies, ignore_index=True) if entropies else pd.DataFrame(),
            "timing": pd.DataFrame(timing), "examples": examples}


def entropy_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per model, block and layer: mean entropy, its maximum log(n) and the normalised mean (over heads)."""
    if table.empty:
        return table
    return (table.groupby(["model", "block", "rows", "layer"], sort=False)
            .agg(n_tokens=("n_tokens", "first"), entropy=("entropy", "mean"), max_entropy=("max_entropy", "mean"),
                 normalised=("normalised", "mean"), normalised_min_head=("normalised", "min"),
                 normalised_max_head=("normalised", "max"))
            .reset_index())


def pick_device(device: str = "auto") -> str:
    """The chapter's device (:func:`vlnb.device.resolve_device`: ``"auto"`` = CUDA when available, else CPU)."""

    return resolve_device(device)




#: maps of a dual encoder that do not depend on the text (ViLT's attention always does)
TEXT_AGNOSTIC = ("cls_attention", "rollout_mean", "rollout_max")


def _fmt(x: float, signed: bool = False) -> str:
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def headlines(summary: pd.DataFrame, families: Mapping[str, str] | None = None) -> dict[str, str]:
    """Sentences for the prose, computed from the pointing-game summary (glued into the chapter).

    ``best``: the (model, method, data set) with the largest excess over the uniform baseline;
    ``agnostic_gap``: the largest |target - distractor| gap of a text-agnostic method on the world, whose
    pairs are symmetric (so it is 0 up to float noise; ViLT, named in ``families`` {model: family}, is left
    out: its attention sees the text); ``per_row``: one line per row.
    """
    families = dict(families or {})
    s = summary.dropna(subset=["energy_target"])
    if s.empty:
        return {"best": "no pair could be scored", "agnostic_gap": "not measurable (no pair could be scored)",
                "per_row": ""}
    b = s.loc[s["excess"].idxmax()]
    best = (f"{b['model']} with {b['method']} on {b['dataset']} (energy share {_fmt(b['energy_target'])} on the "
            f"named object vs {_fmt(b['energy_distractor'])} on the distractor; excess over a uniform map "
            f"{_fmt(b['excess'], True)}, 95% interval [{_fmt(b['excess_lo'], True)}, {_fmt(b['excess_hi'], True)}], "
            f"{int(b['n_pairs'])} pairs)")
    w = s[(s["dataset"] == "world") & s["method"].isin(TEXT_AGNOSTIC) & (s["model"].map(families) != "vilt")]
    gap = "n/a (no text-agnostic method on the world)" if w.empty else f"{w['difference'].abs().max():.1e}"
    lines = [f"{r.model} / {r.dataset} / {r.method}: target {_fmt(r.energy_target)}, distractor "
             f"{_fmt(r.energy_distractor)}, excess {_fmt(r.excess, True)} [{_fmt(r.excess_lo, True)}, "
             f"{_fmt(r.excess_hi, True)}]" for r in s.itertuples()]
    return {"best": best, "agnostic_gap": gap, "per_row": "; ".join(lines)}


def entropy_headline(table: pd.DataFrame) -> str:
    """Per model: the normalised entropy of the readout row in the first and last layer of its image tower."""
    if table.empty:
        return "no attention model in this run"
    t = table[(table["rows"] == "readout") & table["block"].isin(["vision", "joint"])]
    parts = []
    for model, g in t.groupby("model", sort=False):
        by_layer = g.groupby("layer")["normalised"].mean()
        n = int(g["n_tokens"].iloc[0])
        parts.append(f"{model}: {by_layer.iloc[0]:.2f} in layer 0 and {by_layer.iloc[-1]:.2f} in layer "
                     f"{by_layer.index[-1]} (of a maximum log {n} = {np.log(n):.2f} nats)")
    return "; ".join(parts)


__all__ = ["POINTING_DATASETS", "TEXT_AGNOSTIC", "entropy_headline", "entropy_of", "entropy_summary", "grid_row",
           "headlines", "load_pairs", "model_datasets", "pick_device", "run_pointing"]
