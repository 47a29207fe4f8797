"""Chapter 3's report: the numbers its prose quotes and the markdown summary of every data set."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .experiment import HeadsExperiment, Method
from .plots import method_order


def fmt_ci(value: float, lo: float, hi: float, digits: int = 1) -> str:
    """``"23.4 % [18.0, 29.1]"``: a recall with its interval, for prose."""
    return f"{value:.{digits}f} % [{lo:.{digits}f}, {hi:.{digits}f}]"


#: What the prose reads for a method this run does not have (e.g. ITM re-ranking of towers without an ITM head).
NOT_MEASURED = "not measured in this run (the model has no such head)"


def prose_numbers(exp: HeadsExperiment, summary: pd.DataFrame | None = None, prefix: str = "main") -> dict:
    """Strings and numbers for the chapter's prose, keyed ``<prefix>_<what>`` (see the notebook):
    test size and chance, every (pretrained | linear | mlp | qformer | rerank) x (t2i | i2t) x k recall with its
    interval (``..._ci``) and seed spread (``..._sd``), and the paired differences MLP - linear,
    linear - pretrained, Q-Former - linear and Q-Former - MLP (``<prefix>_diff_mlp_linear_t2i_r1`` ...). Methods a run lacks read
    :data:`NOT_MEASURED` (a phrase for the prose, never "n/a")."""
    s = exp.summary_table() if summary is None else summary
    s = s[s["dataset"] == exp.dataset]
    out: dict = {f"{prefix}_dataset": exp.dataset, f"{prefix}_model": exp.model_name,
                 f"{prefix}_n_test": exp.test.n_images, f"{prefix}_n_texts": len(exp.test.texts),
                 f"{prefix}_n_train": len(exp.train.manifest)}
    quoted = (Method.PRETRAINED, Method.LINEAR, Method.MLP, Method.QFORMER, Method.RERANK)
    for method in (m.key for m in quoted):
        for d in ("t2i", "i2t"):
            for k in exp.ks:
                out[f"{prefix}_{method}_{d}_r{k}"] = NOT_MEASURED
                out[f"{prefix}_{method}_{d}_r{k}_ci"] = NOT_MEASURED
                out[f"{prefix}_{method}_{d}_r{k}_sd"] = NOT_MEASURED
    for _, r in s.iterrows():
        kind = Method.of(r["method"])
        key = kind.key if kind in quoted else ""
        d, k = r["direction"], int(r["k"])
        out[f"{prefix}_chance_{d}_r{k}"] = f"{r['chance']:.1f} %"
        if key:
            out[f"{prefix}_{key}_{d}_r{k}"] = f"{r['recall']:.1f} %"
            out[f"{prefix}_{key}_{d}_r{k}_ci"] = fmt_ci(r["recall"], r["ci_lo"], r["ci_hi"])
            out[f"{prefix}_{key}_{d}_r{k}_sd"] = f"{r['seed_sd']:.1f}"
            out[f"{prefix}_{key}_{d}_r{k}_vs_chance"] = (
                "above chance" if r["ci_lo"] > r["chance"] else "below chance" if r["ci_hi"] < r["chance"]
                else "not distinguishable from chance")
    for a, b, name in ((Method.MLP, Method.LINEAR, "mlp_linear"), (Method.LINEAR, Method.PRETRAINED, "linear_pretrained"),
                       (Method.QFORMER, Method.LINEAR, "qformer_linear"), (Method.QFORMER, Method.MLP, "qformer_mlp")):
        for d in ("t2i", "i2t"):
            for k in exp.ks:
                out[f"{prefix}_diff_{name}_{d}_r{k}"] = NOT_MEASURED
                out[f"{prefix}_verdict_{name}_{d}_r{k}"] = NOT_MEASURED
        if exp.runs_of(a) and exp.runs_of(b):
            for _, r in exp.compare(a, b).iterrows():
                out[f"{prefix}_diff_{name}_{r['direction']}_r{int(r['k'])}"] = (
                    f"{r['diff']:+.1f} points [{r['diff_lo']:+.1f}, {r['diff_hi']:+.1f}]")
                out[f"{prefix}_verdict_{name}_{r['direction']}_r{int(r['k'])}"] = verdict(r["diff_lo"], r["diff_hi"])
    return out


def verdict(lo: float, hi: float) -> str:
    """What the interval ``[lo, hi]`` of a paired difference a - b says, for prose: a is ``"below"`` /
    ``"above"`` b when it excludes 0, else ``"not distinguishable from"`` b."""
    if hi < 0:
        return "below"
    if lo > 0:
        return "above"
    return "not distinguishable from"


def geometry_numbers(geo: pd.DataFrame, dataset: str, prefix: str = "main") -> dict[str, str]:
    """``<prefix>_align_<method>`` / ``<prefix>_gap_<method>`` (mean over seeds) for the prose, methods
    ``untrained_linear, linear, mlp, pretrained`` (:data:`NOT_MEASURED` where absent) of :meth:`HeadsExperiment.geometry_table`."""
    g = geo[geo["dataset"] == dataset].groupby("method")[["alignment", "modality_gap"]].mean()
    out = {}
    for method in (Method.UNTRAINED_LINEAR, Method.LINEAR, Method.MLP, Method.QFORMER, Method.PRETRAINED):
        for col, name in (("alignment", "align"), ("modality_gap", "gap")):
            out[f"{prefix}_{name}_{method.key}"] = f"{g.loc[method.value, col]:.2f}" if method.value in g.index else NOT_MEASURED
    return out


def results_markdown(summary: pd.DataFrame, ks: Sequence[int] = (1, 10)) -> str:
    """A markdown list, one line per (data set, method): text->image and image->text R@K with intervals,
    and the chance level -- every data set of a run, for the prose."""
    lines = []
    for ds in dict.fromkeys(summary["dataset"]):
        s = summary[(summary["dataset"] == ds) & summary["trained"]]
        ch = s.drop_duplicates(["direction", "k"]).set_index(["direction", "k"])["chance"]
        chance = ", ".join(f"R@{k} {ch['t2i', k]:.1f} %" for k in ks if ("t2i", k) in ch.index)
        lines.append(f"- **{ds}** (text → image chance: {chance})")
        for m in method_order(s["method"].unique()):
            p = s[s["method"] == m].set_index(["direction", "k"])
            parts = []
            for d, label in (("t2i", "text → image"), ("i2t", "image → text")):
                vals = [f"R@{k} {fmt_ci(p.loc[(d, k), 'recall'], p.loc[(d, k), 'ci_lo'], p.loc[(d, k), 'ci_hi'])}"
                        for k in ks if (d, k) in p.index]
                parts.append(f"{label} {'; '.join(vals)}")
            n = int(p["n_seeds"].iloc[0])
            seeds = f", mean of {n} seeds" if n > 1 else ""
            proto = " — *different protocol: cross encoder on the top k*" if Method.of(m) is Method.RERANK else ""
            lines.append(f"  - {m}{seeds}: {' | '.join(parts)}{proto}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- tables
def features_table(experiments: Sequence[HeadsExperiment]) -> pd.DataFrame:
    """One row per experiment: data set, model, train/test sizes, what the frozen features are and what
    extracting them cost (``from_cache``: both sides read from the feature cache)."""
    return pd.DataFrame([{"dataset": e.dataset, "model": e.model_name, "train_images": e.train.n_images,
                          "test_images": e.test.n_images, "test_captions": len(e.test.texts),
                          "image_features": e.train.description["image"], "text_features": e.train.description["text"],
                          "extract_s": round(e.train.seconds + e.test.seconds, 1),
                          "from_cache": e.train.from_cache and e.test.from_cache} for e in experiments])


#: The paired differences the chapter reports (a minus b), where both methods were run.
COMPARISONS = ((Method.MLP, Method.LINEAR), (Method.LINEAR, Method.PRETRAINED), (Method.MLP, Method.PRETRAINED),
               (Method.QFORMER, Method.LINEAR), (Method.QFORMER, Method.MLP))


def paired_differences(experiments: Sequence[HeadsExperiment]) -> pd.DataFrame:
    """:meth:`HeadsExperiment.compare` of every pair of :data:`COMPARISONS` in every experiment that ran both."""
    parts = [e.compare(a, b) for e in experiments for a, b in COMPARISONS if e.runs_of(a) and e.runs_of(b)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def r1_table(summary: pd.DataFrame) -> pd.DataFrame:
    """R@1 of every (data set, method) both ways: recall, interval, seed spread and chance, one decimal."""
    return summary[summary["k"] == 1].pivot_table(index=["dataset", "method"], columns="direction",
                                                  values=["recall", "ci_lo", "ci_hi", "seed_sd", "chance"]).round(1)


def geometry_summary(geo: pd.DataFrame) -> pd.DataFrame:
    """Alignment, uniformity (images, texts) and modality gap per (data set, method), mean over seeds."""
    cols = ["alignment", "uniformity_image", "uniformity_text", "modality_gap"]
    return geo.groupby(["dataset", "method"], sort=False)[cols].mean().round(3)


def final_epochs(history: pd.DataFrame) -> pd.DataFrame:
    """The last epoch's training loss and inverse temperature of every trained head (data set, method, seed)."""
    return history.groupby(["dataset", "method", "seed"])[["train_loss", "logit_scale"]].last().round(3)
