"""Chapter 2's report: the held-out results of each trained reference model and the numbers its prose quotes.

The notebook calls :func:`held_out_results` once and glues :func:`held_out_glue`; nothing is computed in a
cell. Chance levels are :mod:`vlnb.eval.chance`'s, on each model's own test manifest.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ..eval.chance import manifest_recall_chance

RESULT_COLUMNS = ["model", "test images", "test captions", "direction", "k", "recall", "chance", "epochs",
                  "final loss", "final 1/τ", "× chance"]


def held_out_results(histories: Mapping[str, object], tests: Mapping[str, pd.DataFrame],
                     ks=(1, 5, 10)) -> pd.DataFrame:
    """One row per (model, direction, k): the *last* evaluation of each training run (``histories[name]``, a
    :class:`vlnb.train.History` whose ``epochs_df`` has ``{i2t|t2i}_R@k``), beside the exact chance level of
    a random ranking on that model's test manifest ``tests[name]`` and the ratio to it."""
    rows = []
    for name, h in histories.items():
        evaluated = h.epochs_df.dropna(subset=[f"t2i_R@{ks[0]}"])
        if evaluated.empty:
            raise ValueError(f"{name}: the training history has no evaluation on held-out data")
        last, test = evaluated.iloc[-1], tests[name]
        chance = manifest_recall_chance(test, ks)
        for d in ("i2t", "t2i"):
            for k in ks:
                rows.append({"model": name, "test images": len(test), "test captions": int(test["captions"].map(len).sum()),
                             "direction": d, "k": k, "recall": last[f"{d}_R@{k}"], "chance": chance[f"{d}_R@{k}"],
                             "epochs": int(last["epoch"]), "final loss": last["train_loss"],
                             "final 1/τ": last["logit_scale"]})
    out = pd.DataFrame(rows, columns=RESULT_COLUMNS[:-1])
    out["× chance"] = out["recall"] / out["chance"]
    return out


def recall_table(results: pd.DataFrame) -> pd.DataFrame:
    """The table the chapter shows: recall and chance per (model, direction) x k, one decimal."""
    return results.pivot_table(index=["model", "direction"], columns="k", values=["recall", "chance"]).round(1)


def held_out_glue(results: pd.DataFrame) -> dict[str, str]:
    """The prose's numbers, keyed as the notebook glues them: per model (``-`` -> ``_``) R@1 both ways with
    their chance levels, test size and final inverse temperature; and, for the first model, captions per image
    and the ratio of the image->text to the text->image chance."""
    def row(name, d, k=1):
        return results[(results["model"] == name) & (results["direction"] == d) & (results["k"] == k)].iloc[0]

    out: dict[str, str] = {}
    models = list(dict.fromkeys(results["model"]))
    for name in models:
        tag, t2i, i2t = name.replace("-", "_"), row(name, "t2i"), row(name, "i2t")
        out.update({f"{tag}_t2i_r1": f"{t2i['recall']:.1f}", f"{tag}_t2i_r1_chance": f"{t2i['chance']:.1f}",
                    f"{tag}_i2t_r1": f"{i2t['recall']:.1f}", f"{tag}_i2t_r1_chance": f"{i2t['chance']:.1f}",
                    f"{tag}_n_test": f"{int(t2i['test images'])}", f"{tag}_scale": f"{t2i['final 1/τ']:.1f}"})
    first = row(models[0], "t2i")
    out["chance_model"] = models[0]
    out["chance_caps_per_image"] = f"{first['test captions'] / first['test images']:.1f}"
    out["chance_ratio"] = f"{row(models[0], 'i2t')['chance'] / first['chance']:.2f}"
    return out


__all__ = ["RESULT_COLUMNS", "held_out_glue", "held_out_results", "recall_table"]


def fusion_page(fusion: pd.DataFrame) -> pd.DataFrame:
    """Chapter 2's fusion table: R@1 and chance per model, protocol and direction (%)."""
    return fusion[fusion["k"] == 1].pivot_table(index=["model", "first stage", "train time (s)"],
                                                columns=["protocol", "direction"],
                                                values=["recall", "chance"]).round(1)


def variant_costs(variants: pd.DataFrame) -> pd.DataFrame:
    """Mean train time and peak memory of each attention variant over its seeds, and its parameter count (the same
    for every seed: shown as an integer, not as a mean)."""
    g = variants.groupby("variant", sort=False)
    return g[["train_time_s", "peak_memory_mb"]].mean().round(1).join(g["params"].first().astype(int))
