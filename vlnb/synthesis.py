"""What we measured: every chapter's headline finding, read from the result tables its run wrote.

:func:`headlines` reads ``<runs>/<chapter>/results/*.csv`` (the run folders of a book build, or any
``vlnb run`` folders laid out the same way) and returns one row per finding with its interval, its chance
level and the file it came from. Nothing is typed here: a finding whose table is missing says so.
:func:`consistency` recomputes numbers that two chapters measure independently (the same model on the same
test images) and reports both values; the book-build test requires them to agree.

Units: every recall and accuracy in these tables is a **percentage**, gaps are percentage points — as the
chapters' own tables hold them (chapter 7's included); only chapter 4's zero-shot CSV keeps proportions
(:func:`zeroshot_pct`) and chapter 6's pointing excess is a share of energy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .fairness.stats import wilson_interval

CHAPTERS = {
    "01_data_prep": "1. Data",
    "02_clip_training": "2. Training CLIP",
    "03_blip2_heads": "3. Heads on frozen features",
    "04_compare": "4. Comparing models",
    "05_robustness": "5. Robustness",
    "06_interpretability": "6. Interpretability",
    "07_fairness": "7. Fairness",
}
COLUMNS = ["chapter", "finding", "value", "ci_lo", "ci_hi", "interval", "chance", "unit", "source"]


def read(runs: str | Path, stem: str, table: str) -> pd.DataFrame | None:
    """``<runs>/<stem>/results/<table>.csv``, or None when that run or table does not exist."""
    p = Path(runs) / stem / "results" / f"{table}.csv"
    return pd.read_csv(p) if p.exists() else None


def _wilson_pct(recall_pct: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson interval (in %) of a recall measured over ``n`` independent queries (one per image)."""
    k = round(recall_pct / 100 * n)
    lo, hi = wilson_interval(k, n, level)
    return 100 * float(lo), 100 * float(hi)


def _row(chapter: str, finding: str, value: float, lo: float = math.nan, hi: float = math.nan,
         interval: str = "", chance: float = math.nan, unit: str = "%", source: str = "") -> dict:
    return {"chapter": CHAPTERS.get(chapter, chapter), "finding": finding, "value": value, "ci_lo": lo, "ci_hi": hi,
            "interval": interval, "chance": chance, "unit": unit, "source": f"{chapter}/results/{source}.csv"}


# ---------------------------------------------------------------------------------------------- one per chapter
def _ch1(runs) -> list[dict]:
    t = read(runs, "01_data_prep", "manifest_overview")
    bad = read(runs, "01_data_prep", "bad_images")
    if t is None:
        return []
    n_bad = 0 if bad is None else len(bad)
    return [_row("01_data_prep", f"images in {t['dataset'].nunique()} manifests ({n_bad} skipped as unreadable)",
                 float(t["images"].sum()), interval="a count", unit="images", source="manifest_overview")]


def _itc(df: pd.DataFrame, sel: pd.Series) -> pd.Series:
    """Rows of the dual encoder's own ranking (stage ``itc`` / an ITC protocol), not a re-ranked protocol."""
    if "stage" in df and (sel & (df["stage"] == "itc")).any():
        return df["stage"] == "itc"
    if "protocol" in df:
        itc = df["protocol"].fillna("").str.match(r"(?i)\s*(ITC|dual|cosine)") & \
            ~df["protocol"].fillna("").str.contains("→|re-?rank", case=False, regex=True)
        if (sel & itc).any():
            return itc
    return pd.Series(True, index=df.index)


def _retrieval_rows(df: pd.DataFrame, chapter: str, source: str, model: str, dataset: str | None = None,
                    direction: str = "i2t", k: int = 1, what: str = "") -> list[dict]:
    sel = (df["model"] == model) & (df["direction"] == direction) & (df["k"] == k)
    if dataset is not None and "dataset" in df:
        sel &= df["dataset"] == dataset
    sel &= _itc(df, sel)
    if not sel.any():
        return []
    r = df[sel].iloc[0]
    n = int(r["test images"]) if "test images" in r else int(r.get("n_images", 0) or 0)
    lo, hi, how = math.nan, math.nan, "no interval in the chapter's table"
    if n and direction == "i2t":  # one query per image: a binomial proportion
        lo, hi = _wilson_pct(float(r["recall"]), n)
        how = f"Wilson 95 % over {n} image queries"
    d = "image→text" if direction == "i2t" else "text→image"
    return [_row(chapter, f"{what}{model}{' on ' + dataset if dataset else ''}: {d} R@{k}", float(r["recall"]), lo, hi,
                 how, float(r.get("chance", math.nan)), source=source)]


def _ch2(runs) -> list[dict]:
    out = []
    t = read(runs, "02_clip_training", "results")
    if t is not None:
        for model in t["model"].unique():
            out += _retrieval_rows(t, "02_clip_training", "results", model)
    s = read(runs, "02_clip_training", "attention_variants_summary")
    if s is not None:
        s = s[(s["metric"] == "t2i_R@1") & s["diff_lo"].notna()] if "diff_lo" in s else s.iloc[0:0]
        for r in s.itertuples(index=False):
            base = next(c for c in s.columns if c.startswith("diff_vs_"))[8:]
            verdict = "distinguishable" if r.distinguishable else "cannot be told apart"
            out.append(_row("02_clip_training", f"text attention {r.variant} − {base}: text→image R@1 ({verdict})",
                            float(getattr(r, f"diff_vs_{base}")), float(r.diff_lo), float(r.diff_hi),
                            f"Student t 95 % over {int(r.seeds)} seeds (paired)", unit="points",
                            source="attention_variants_summary"))
    return out


def _ch3(runs) -> list[dict]:
    s = read(runs, "03_blip2_heads", "recall_summary")
    if s is None:
        return []
    out = []
    first = s["dataset"].iloc[0]
    for method in s["method"].unique():
        r = s[(s["dataset"] == first) & (s["method"] == method) & (s["direction"] == "t2i") & (s["k"] == 1)]
        if len(r) and "untrained" not in method:
            r = r.iloc[0]
            out.append(_row("03_blip2_heads", f"{method} on {first}: text→image R@1", float(r["recall"]),
                            float(r["ci_lo"]), float(r["ci_hi"]), "bootstrap 95 % over test images",
                            float(r["chance"]), source="recall_summary"))
    return out


def _ch4(runs) -> list[dict]:
    t = read(runs, "04_compare", "retrieval")
    if t is None:
        return []
    out = []
    for (model, dataset), _ in t.groupby(["model", "dataset"], sort=False):
        out += _retrieval_rows(t, "04_compare", "retrieval", model, dataset)
    return out


def _ch5(runs) -> list[dict]:
    t = read(runs, "05_robustness", "clean_vs_worst_severity")
    if t is None or t.empty:
        return []
    inf = t[t["informative"].astype(bool)] if "informative" in t else t
    if inf.empty:
        return []
    r = inf.sort_values("drop", ascending=False).iloc[0]
    if "drop_lo" in r and pd.notna(r["drop_lo"]):  # the chapter's paired bootstrap over images
        lo, hi = float(r["drop_lo"]), float(r["drop_hi"])
        how = f"paired bootstrap {float(r.get('level', 0.95)):.0%} over test images"
    else:  # a run from before the chapter kept per-image hits
        lo, hi, how = math.nan, math.nan, "one evaluation, no interval"
    return [_row("05_robustness", f"largest drop: {r['model']} on {r['dataset']}, {r['task']} {r['metric']}, "
                 f"{r['corruption']} (clean {r['clean']:.1f} → {r['worst']:.1f})", float(r["drop"]), lo, hi,
                 how, unit="points", source="clean_vs_worst_severity")]


def _ch6(runs) -> list[dict]:
    t = read(runs, "06_interpretability", "pointing_game")
    if t is None or t.empty or "excess" not in t:
        return []
    r = t.sort_values("excess", ascending=False).iloc[0]
    return [_row("06_interpretability", f"largest pointing excess: {r['model']}, {r['method']} on {r['dataset']}",
                 100 * float(r["excess"]), 100 * float(r["excess_lo"]), 100 * float(r["excess_hi"]),
                 "bootstrap 95 % over images", 0.0, unit="points of energy share", source="pointing_game")]


def _ch7(runs) -> list[dict]:
    out = []
    s = read(runs, "07_fairness", "rarity_summary")
    if s is not None and not s.empty:
        if "metric" in s and s["metric"].eq("zero-shot colour top-1").any():
            s = s[s["metric"] == "zero-shot colour top-1"]
        for r in (s.iloc[0], s.iloc[-1]):  # the control (f = 1) and the rarest fraction; gaps in points already
            n = int(r["seeds"])
            t = "gap_ci_lo" in r and n > 1 and not math.isnan(float(r["gap_ci_lo"]))
            lo, hi = (r["gap_ci_lo"], r["gap_ci_hi"]) if t else (r["gap_min"], r["gap_max"])
            how = f"Student t {100 * float(r.get('level', 0.95)):.0f} % over {n} seeds" if t else f"range over {n} seeds"
            out.append(_row("07_fairness", f"planted rarity, f = {r['fraction']:g}: others − rare colour accuracy",
                            float(r["gap_mean"]), float(lo), float(hi),
                            f"{how}; the permutation test flags {int(r['detected'])} of {n}", 0.0,
                            unit="points", source="rarity_summary"))
    g = read(runs, "07_fairness", "gaps")
    if g is not None and not g.empty:
        testable = g[g["n_groups"] >= 2]
        det = int(testable["gap_detected"].sum())
        how = "Holm-adjusted" if "p_holm" in g else "unadjusted"
        out.append(_row("07_fairness", f"group gaps detected ({how} permutation tests) of {len(testable)} testable",
                        float(det), interval="a count", unit="tests", source="gaps"))
    return out


EXTRACTORS: dict[str, Callable] = {"01_data_prep": _ch1, "02_clip_training": _ch2, "03_blip2_heads": _ch3,
                                   "04_compare": _ch4, "05_robustness": _ch5, "06_interpretability": _ch6,
                                   "07_fairness": _ch7}


def headlines(runs: str | Path) -> pd.DataFrame:
    """One row per headline finding of each chapter found under ``runs`` (columns :data:`COLUMNS`)."""
    rows = []
    for stem, f in EXTRACTORS.items():
        found = f(runs)
        if not found:
            found = [{**_row(stem, "(no run of this chapter in this build)", math.nan, unit=""), "source": ""}]
        rows += found
    return pd.DataFrame(rows, columns=COLUMNS)


def _recall(df: pd.DataFrame | None, model: str, dataset: str | None, direction: str, k: int = 1,
            method: str | None = None) -> float:
    if df is None:
        return math.nan
    sel = (df["direction"] == direction) & (df["k"] == k)
    if "model" in df:
        sel &= df["model"] == model
    if dataset is not None and "dataset" in df:
        sel &= df["dataset"] == dataset
    if method is not None:
        sel &= df["method"] == method
    sel &= _itc(df, sel)
    return float(df.loc[sel, "recall"].iloc[0]) if sel.any() else math.nan


def _agree(a: float, b: float) -> bool | None:
    """Whether two chapters' values of one quantity are equal to 0.05 points (None: one of them is missing)."""
    return None if math.isnan(a) or math.isnan(b) else bool(np.isclose(a, b, atol=0.05))


def consistency(runs: str | Path) -> pd.DataFrame:
    """Numbers two chapters measure independently, side by side (``agree``: equal to 0.05 points).

    - the frozen towers' retrieval on coco-mini val2017: chapter 2 vs chapter 3's "pretrained head" (offline it
      is the same model) and vs chapter 4;
    - the from-scratch model's retrieval on the world test set: chapter 2's last evaluation vs chapter 4;
    - the from-scratch model's zero-shot shape accuracy on the world test set: chapter 4 vs chapter 5's clean
      images (same images, classes, prompts and label rule);
    - chapter 7's per-image evaluation on the world test set, summed over all images: the from-scratch model's
      zero-shot shape accuracy (largest object) and the BLIP-like and Q-Former models' ITC image→text R@1 vs
      chapter 4.
    """
    r2 = read(runs, "02_clip_training", "results")
    r3 = read(runs, "03_blip2_heads", "recall_summary")
    r4 = read(runs, "04_compare", "retrieval")
    rows = []
    # chapter 3's "pretrained head" offline is chapter 2's towers-coco model, on the same coco-mini test images
    if r3 is not None and "method" in r3:
        for d in ("i2t", "t2i"):
            a = _recall(r2, "towers-coco", None, d)
            b = _recall(r3.assign(model="towers-coco"), "towers-coco", "coco-mini", d, method="pretrained head")
            rows.append({"quantity": f"towers-coco on coco-mini: {d} R@1", "chapter A": "2", "value A": a,
                         "chapter B": "3 (pretrained head)", "value B": b,
                         "agree": _agree(a, b)})
    for model, ds in (("scratch-world", "world"), ("towers-coco", "coco-mini")):
        for d in ("i2t", "t2i"):
            a, b = _recall(r2, model, None, d), _recall(r4, model, ds, d)
            rows.append({"quantity": f"{model} on {ds}: {d} R@1", "chapter A": "2", "value A": a,
                         "chapter B": "4", "value B": b,
                         "agree": _agree(a, b)})
    # zero-shot shape of scratch-world on the world test set: chapter 4's "any object" variant (proportion in its
    # CSV) vs chapter 5's clean cell (percent); same 500 images, 6 shapes, WORLD_TEMPLATES, any-object label rule
    zs4, r5 = read(runs, "04_compare", "zeroshot"), read(runs, "05_robustness", "robustness_results")
    if zs4 is not None and r5 is not None:
        a = zeroshot_pct(zs4, "scratch-world", "world", "any object")
        b = clean_value(r5, "scratch-world", "world", "zeroshot:shape", "top1")
        rows.append({"quantity": "scratch-world on world: zero-shot shape top-1 (any object, 5 prompts)",
                     "chapter A": "4", "value A": a, "chapter B": "5 (clean)", "value B": b,
                     "agree": _agree(a, b)})
    # chapter 7 evaluates the world models again, per image, on the same test images: its overall table (percent)
    # against chapter 4's zero-shot shape accuracy ("primary": the largest object, the label rule chapter 7 groups
    # by) and ITC retrieval, for the dual encoder and the two fusion models it reads through their ITC heads
    ov7 = read(runs, "07_fairness", "overall")
    if ov7 is not None:
        pairs = []
        if zs4 is not None:
            pairs.append(("scratch-world on world: zero-shot shape top-1 (largest object)",
                          zeroshot_pct(zs4, "scratch-world", "world", "primary"),
                          overall_value(ov7, "scratch-world", "world", "zero-shot shape top-1")))
        for model in ("blip-world", "qformer-world"):
            pairs.append((f"{model} on world: i2t R@1 (ITC)", _recall(r4, model, "world", "i2t"),
                          overall_value(ov7, model, "world", "i2t R@1")))
        for quantity, a, b in pairs:
            rows.append({"quantity": quantity, "chapter A": "4", "value A": a, "chapter B": "7", "value B": b,
                         "agree": _agree(a, b)})
    return pd.DataFrame(rows)


def overall_value(overall: pd.DataFrame, model: str, dataset: str, metric: str) -> float:
    """Chapter 7's value of one metric on a model's whole test set (its ``overall`` table, percent), or NaN."""
    sel = (overall["model"] == model) & (overall["dataset"] == dataset) & (overall["metric"] == metric)
    return float(overall.loc[sel, "value"].iloc[0]) if sel.any() else math.nan


def zeroshot_pct(zeroshot: pd.DataFrame, model: str, dataset: str, variant: str) -> float:
    """Chapter 4's zero-shot top-1 (its CSV keeps proportions) in percent, or NaN when that row is missing."""
    sel = (zeroshot["model"] == model) & (zeroshot["dataset"] == dataset) & (zeroshot["variant"] == variant)
    return 100.0 * float(zeroshot.loc[sel, "top1"].iloc[0]) if sel.any() else math.nan


def clean_value(results: pd.DataFrame, model: str, dataset: str, task: str, metric: str) -> float:
    """Chapter 5's clean (severity 0) value of one (model, data set, task, metric), in percent, or NaN."""
    sel = ((results["model"] == model) & (results["dataset"] == dataset) & (results["task"] == task)
           & (results["metric"] == metric) & (results["severity"] == 0))
    return float(results.loc[sel, "value"].iloc[0]) if sel.any() else math.nan


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:,.0f}" if abs(x) >= 1000 or float(x).is_integer() else f"{x:.1f}"


def page_table(table: pd.DataFrame) -> pd.DataFrame:
    """What the chapter shows of :func:`headlines`: the value with its unit and interval in one cell, the kind of
    interval and the chance level; no NaN, no float noise, narrow enough for a page. The CSV (``headlines.csv``)
    keeps the numbers and the table each row came from."""
    rows = []
    for r in table.itertuples(index=False):
        unit = {"%": " %", "": ""}.get(r.unit, f" {r.unit}")
        if isinstance(r.value, float) and math.isnan(r.value):
            value = "not run"
        else:
            value = _fmt(r.value) + unit + (f" [{_fmt(r.ci_lo)}, {_fmt(r.ci_hi)}]" if not math.isnan(r.ci_lo) else "")
        rows.append({"chapter": r.chapter, "finding": r.finding, "value [interval]": value,
                     "interval": r.interval or "—", "chance": _fmt(r.chance) + (unit if _fmt(r.chance) != "—" else "")})
    return pd.DataFrame(rows)
