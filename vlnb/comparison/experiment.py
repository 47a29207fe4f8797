"""Chapter 4's experiment: every model on every data set it can read, and a trained text->image baseline.

:func:`run_comparison` evaluates each model of a profile on each manifest with the metrics of
:mod:`vlnb.eval.compare` (retrieval both ways, own-ITM and cross-encoder re-ranking, zero-shot) and records
which (model, data set) pairs were evaluated and why not. :func:`text_to_image_experiment` trains the seed
projects' "BERT + CNN" baseline on a train split and ranks the held-out images against the zero-shot models.
The tables the chapter shows and the numbers its prose quotes are in :mod:`vlnb.comparison.report`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..data.manifest import subset
from ..eval.compare import (
    WORLD_TEMPLATES,
    add_rerank,
    evaluate_retrieval,
    evaluate_zeroshot,
    rerank_depth,
    rerank_label,
    tidy_retrieval,
    unknown_word_rate,
    zeroshot_task,
)
from ..models import CrossEncoder
from ..models.towers import TowersDualEncoder
from ..train import TrainConfig, train_contrastive
from ..train.schedule import capped_warmup
from ..train.trainer import PairDataset


def run_comparison(
    models: dict,
    manifests: dict[str, pd.DataFrame],
    first_stage: str | None = None,
    rerank_k: int | dict | str = "lavis",
    coco_templates: str = "openai_imagenet",
    max_unknown_words: float = 0.5,
    batch_size: int = 64,
    cache_dir=None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, dict, pd.DataFrame]:
    """Evaluate every model on every data set it can read; returns
    ``(retrieval table, zero-shot table, {(model, dataset): RetrievalRun}, coverage table)``.

    Dual encoders: retrieval (data sets with captions) and zero-shot (data sets with a task), plus an
    ITC→ITM re-ranked row when the model has its own ITM head (BLIP, BLIP-2; score ITM + ITC, as LAVIS). Cross
    encoders (ViLT) re-rank the ITC top-k of dual encoder ``first_stage`` by their own ITM score alone. The depth
    k: ``rerank_k`` (an int, ``{data set: k}``, or ``"lavis"``: LAVIS's ``k_test`` per model family and data
    set, :func:`rerank_depth`). A model with a word-level tokenizer
    is not evaluated on data whose captions are mostly unknown words to it (> ``max_unknown_words``): the
    coverage table records every (model, data set) pair, evaluated or not, and why.
    """
    runs: dict = {}
    zs, cover = [], []
    duals = {n: m for n, m in models.items() if not isinstance(m, CrossEncoder)}
    crosses = {n: m for n, m in models.items() if isinstance(m, CrossEncoder)}
    for ds, df in manifests.items():
        has_caps = bool(df["captions"].map(len).sum())
        probe = [c for caps in df["captions"] for c in caps][:2000] or [
            t.format(c) for t in WORLD_TEMPLATES[:1] for c in _task_names(ds, df)]
        for name, model in duals.items():
            unk = unknown_word_rate(model, probe)
            if unk > max_unknown_words:
                cover.append({"model": name, "dataset": ds, "evaluated": False,
                              "why": f"{unk:.0%} of the words are unknown to its tokenizer"})
                continue
            cover.append({"model": name, "dataset": ds, "evaluated": True, "why": ""})
            kw = {"batch_size": batch_size, "cache_dir": cache_dir, "progress": progress}
            if has_caps:
                cross = model.cross_encoder() if hasattr(model, "cross_encoder") else None
                k = rerank_depth(rerank_k, getattr(model, "family", None), ds)
                cross = cross if k > 0 else None
                run = evaluate_retrieval(model, df, ds, name, protocol="ITC", cross_encoder=cross, rerank_k=k,
                                         rerank_protocol=rerank_label("ITC", k, "own ITM", "itm+itc") if cross
                                         else None, **kw)
                runs[(name, ds)] = run
            try:
                task = zeroshot_task(ds, df, coco_templates)
            except ValueError:
                task = None
            if task is not None:
                zs += evaluate_zeroshot(model, df, ds, name, task, **kw)
        for name, cross in crosses.items():
            base = runs.get((first_stage, ds))
            if base is None:
                cover.append({"model": name, "dataset": ds, "evaluated": False,
                              "why": f"needs a first-stage dual encoder run ({first_stage!r}) with captions"})
                continue
            k = rerank_depth(rerank_k, getattr(cross, "family", None), ds)
            if k == 0:
                cover.append({"model": name, "dataset": ds, "evaluated": False, "why": "rerank_k is 0"})
                continue
            add_rerank(base, cross, df, name, rerank_label(f"{first_stage} ITC", k, "ITM", "itm"), k,
                       progress=progress, combine="itm", cache_dir=cache_dir)
            cover.append({"model": name, "dataset": ds, "evaluated": True, "why": ""})
    ret_df = tidy_retrieval(list(runs.values()))
    return ret_df, pd.DataFrame(zs), runs, pd.DataFrame(cover)


def _task_names(ds: str, df: pd.DataFrame) -> list[str]:
    try:
        return zeroshot_task(ds, df).class_names
    except ValueError:
        return []


# ---------------------------------------------------------------------------------------------- text→image top-K
def split_manifest(manifest: pd.DataFrame, test_fraction: float = 0.2, seed: int = 0):
    """A deterministic image-level ``(train, test)`` split of a manifest (attrs kept)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(manifest))
    n_test = max(1, round(test_fraction * len(manifest)))
    return subset(manifest, np.sort(order[n_test:])), subset(manifest, np.sort(order[:n_test]))


def text_to_image_experiment(
    models: dict,
    manifest: pd.DataFrame,
    dataset: str = "pokemon",
    baseline_epochs: int = 10,
    test_fraction: float = 0.2,
    seed: int = 0,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 64,
    cache_dir=None,
    progress: bool = True,
):
    """Caption → image top-K on a held-out split: every dual encoder zero-shot, against a trained baseline.

    The baseline is the seed projects' "BERT + CNN": a frozen BERT-family sentence encoder
    (all-MiniLM-L6-v2) and a frozen ImageNet CNN (EfficientNet-Lite0) with MLP heads trained
    contrastively on the *train* split. Returns ``(tidy table, baseline History)``; the table has
    ``model, dataset, protocol, direction="t2i", k, recall, chance``.
    """
    train, test = split_manifest(manifest, test_fraction, seed)
    baseline = TowersDualEncoder(embed_dim=256, head="mlp", name="BERT+CNN baseline (MiniLM + EfficientNet-Lite0)",
                                 seed=seed)
    train_batch = min(64, len(train))
    warmup = capped_warmup(5, len(train), train_batch, baseline_epochs)
    cfg = TrainConfig(epochs=baseline_epochs, batch_size=train_batch, lr=1e-3, warmup_steps=warmup, seed=seed,
                      eval_every=max(1, baseline_epochs))
    pairs = PairDataset(train, baseline.preprocess, cfg.caption_sampling, cfg.seed, cache=True)
    history = train_contrastive(baseline, pairs, val_data=test, config=cfg, progress=progress)
    baseline.eval()
    entries = [(n, m, "zero-shot, ITC") for n, m in models.items() if not isinstance(m, CrossEncoder)]
    entries.append((baseline.name, baseline, f"trained on the {dataset} train split ({len(train)} images)"))
    runs = [evaluate_retrieval(model, test, dataset, name, protocol=proto, ks=ks, batch_size=batch_size,
                               cache_dir=cache_dir, progress=progress) for name, model, proto in entries]
    df = tidy_retrieval(runs)
    return df[df["direction"] == "t2i"].reset_index(drop=True), history
