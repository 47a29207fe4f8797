"""The chapter-3 experiment: every method on one (model, data set), its tables; the chapter's data and models."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..data.hub import load_flickr30k
from ..data.manifest import drop_bad_images, subset
from ..data.pixels import pixel_loader
from ..eval.bootstrap import bootstrap_recall, recall_difference
from ..eval.chance import recall_chance
from ..eval.rerank import rerank_similarity
from ..eval.retrieval import recall_from_ranks, retrieval_ranks
from ..zoo import HUB_MODELS, profile_models, reference_data
from .features import FrozenFeatureExtractor, FrozenFeatures, extract_frozen_features, patch_features
from .geometry import geometry
from .model import (
    HEAD_KINDS,
    HeadsDualEncoder,
    QFormerHeads,
    head_embeddings,
    pretrained_embeddings,
    similarity,
    train_head,
    train_qformer,
)

PROTOCOL_ITC = "dual encoder (cosine)"
PROTOCOL_RERANK = "ITC top-k re-ranked by ITM (cross encoder)"


class Method(str, Enum):
    """The methods chapter 3 compares. A value is the label tables and figures show (the re-ranking row adds its
    depth: :meth:`label`); code compares members, never display strings."""

    PRETRAINED = "pretrained head"
    RERANK = "pretrained head + ITM re-rank"
    LINEAR = "linear head"
    MLP = "MLP head"
    QFORMER = "Q-Former (7x7 map)"
    UNTRAINED_LINEAR = "untrained linear head"
    UNTRAINED_MLP = "untrained MLP head"
    UNTRAINED_QFORMER = "untrained Q-Former"

    @classmethod
    def head(cls, kind: str, trained: bool = True) -> Method:
        """The method of a head kind (``"linear"`` / ``"mlp"``), trained or at its initialisation."""
        if kind not in HEAD_KINDS:
            raise ValueError(f"head must be one of {HEAD_KINDS}, got {kind!r}")
        return {("linear", True): cls.LINEAR, ("mlp", True): cls.MLP, ("linear", False): cls.UNTRAINED_LINEAR,
                ("mlp", False): cls.UNTRAINED_MLP}[kind, bool(trained)]

    @classmethod
    def of(cls, label: str) -> Method | None:
        """The method a table label names (``"pretrained head + ITM re-rank (k=3)"`` -> :attr:`RERANK`); None
        for rows that are no method (e.g. ``"frozen features (no head)"`` of the geometry table)."""
        if str(label).startswith(cls.RERANK.value):
            return cls.RERANK
        try:
            return cls(label)
        except ValueError:
            return None

    def label(self, k: int | None = None) -> str:
        return f"{self.value} (k={k})" if self is Method.RERANK and k is not None else self.value

    @property
    def key(self) -> str:
        """Short name for glue keys: ``pretrained``, ``rerank``, ``linear``, ``mlp``, ``untrained_linear``..."""
        return self.name.lower()

    @property
    def trained(self) -> bool:
        return self not in (Method.UNTRAINED_LINEAR, Method.UNTRAINED_MLP, Method.UNTRAINED_QFORMER)


@dataclass
class MethodRun:
    """One method evaluated on the test set (a baseline, or one head kind at one seed)."""

    kind: Method
    protocol: str
    ranks: dict
    head: str | None = None
    seed: int | None = None
    image_emb: torch.Tensor | None = None  #: None for re-ranking (no embedding of its own)
    text_emb: torch.Tensor | None = None
    similarity: torch.Tensor | None = None  #: (N, M) scores used for the text->image gallery
    history: object | None = None
    seconds: float = 0.0
    max_k: int | None = None  #: re-ranking: Recall@K is only meaningful for K <= k (rows above are dropped)

    @property
    def method(self) -> str:
        """The label of :attr:`kind` in tables and figures."""
        return self.kind.label(self.max_k)

    @property
    def trained(self) -> bool:
        return self.kind.trained


@dataclass
class HeadsExperiment:
    """Everything :func:`run_heads` measured on one (model, data set); tables via the methods below."""

    dataset: str
    model_name: str
    train: FrozenFeatures
    test: FrozenFeatures
    runs: list[MethodRun]
    ks: tuple[int, ...] = (1, 5, 10)
    n_boot: int = 1000
    level: float = 0.95
    boot_seed: int = 0

    def _meta(self) -> dict:
        return {"dataset": self.dataset, "model": self.model_name}

    def methods(self, trained_only: bool = False) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.runs if r.trained or not trained_only))

    def label_of(self, method: Method | str) -> str:
        """The table label of ``method`` in this experiment (a :class:`Method`, or a label passed through)."""
        if isinstance(method, Method):
            return next((r.method for r in self.runs if r.kind is method), method.label())
        return method

    def runs_of(self, method: Method | str) -> list[MethodRun]:
        label = self.label_of(method)
        return [r for r in self.runs if r.method == label]

    def chance(self) -> dict[str, float]:
        return recall_chance(self.test.text_to_image, self.test.n_images, self.ks)

    def recall_table(self) -> pd.DataFrame:
        """Tidy: one row per (method, seed, direction, k) with the bootstrap interval of that run."""
        parts = []
        for r in self.runs:
            df = bootstrap_recall(r.ranks, self.test.text_to_image, self._ks(r.method), self.n_boot, self.level,
                                  self.boot_seed, n_images=self.test.n_images)
            parts.append(df.assign(**self._meta(), method=r.method, protocol=r.protocol, head=r.head, seed=r.seed,
                                   trained=r.trained))
        out = pd.concat(parts, ignore_index=True)
        front = ["dataset", "model", "method", "protocol", "head", "seed", "trained", "direction", "k", "recall",
                 "ci_lo", "ci_hi"]
        return out[front + [c for c in out.columns if c not in front]]

    def _ks(self, method: str) -> tuple[int, ...]:
        caps = [r.max_k for r in self.runs_of(method) if r.max_k is not None]
        return tuple(k for k in self.ks if not caps or k <= min(caps)) or self.ks[:1]

    def _seed_samples(self, method: str):
        runs = self.runs_of(method)
        return bootstrap_recall([r.ranks for r in runs], self.test.text_to_image, self._ks(method), self.n_boot,
                                self.level, self.boot_seed, n_images=self.test.n_images, return_samples=True)

    def summary_table(self) -> pd.DataFrame:
        """Tidy: one row per (method, direction, k): recall averaged over seeds, its spread over seeds (sd,
        min, max) and the bootstrap interval of the seed-averaged recall (test images resampled)."""
        chance = self.chance()
        rows = []
        for method in self.methods():
            runs = self.runs_of(method)
            boot, _ = self._seed_samples(method)
            for _, b in boot.iterrows():
                d, k = b["direction"], int(b["k"])
                per_seed = [recall_from_ranks(r.ranks[d], [k])[k] for r in runs]
                rows.append({**self._meta(), "method": method, "protocol": runs[0].protocol, "trained": runs[0].trained,
                             "direction": d, "k": k, "recall": float(np.mean(per_seed)),
                             "seed_sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
                             "seed_min": float(np.min(per_seed)), "seed_max": float(np.max(per_seed)),
                             "n_seeds": len(runs), "ci_lo": b["ci_lo"], "ci_hi": b["ci_hi"], "level": self.level,
                             "chance": chance[f"{d}_R@{k}"]})
        return pd.DataFrame(rows)

    def compare(self, a: Method | str, b: Method | str) -> pd.DataFrame:
        """Paired bootstrap interval of (seed-mean) recall of method ``a`` minus method ``b``."""
        a, b = self.label_of(a), self.label_of(b)
        _, sa = self._seed_samples(a)
        _, sb = self._seed_samples(b)
        common = set(sa) & set(sb)
        sa, sb = {key: v for key, v in sa.items() if key in common}, {key: v for key, v in sb.items() if key in common}
        s = self.summary_table().set_index(["method", "direction", "k"])["recall"]
        out = recall_difference(sa, sb, self.level)
        out["diff"] = [s[a, d, k] - s[b, d, k] for d, k in zip(out["direction"], out["k"])]
        return out.assign(**self._meta(), a=a, b=b)[
            ["dataset", "model", "a", "b", "direction", "k", "diff", "diff_lo", "diff_hi", "p_not_better"]]

    def geometry_table(self) -> pd.DataFrame:
        """Alignment / uniformity / modality gap of every run that has embeddings, plus the raw frozen
        features when images and texts share their space (equal dimensions, e.g. BLIP-2's Q-Former)."""
        t2i = self.test.text_to_image
        rows = []
        if self.test.image_dim == self.test.text_dim:
            img = F.normalize(self.test.pooled, dim=-1)
            rows.append({"method": "frozen features (no head)", "head": None, "seed": None, "trained": False,
                         **geometry(img, F.normalize(self.test.text, dim=-1), t2i)})
        for r in self.runs:
            if r.image_emb is not None:
                rows.append({"method": r.method, "head": r.head, "seed": r.seed, "trained": r.trained,
                             **geometry(r.image_emb, r.text_emb, t2i)})
        return pd.DataFrame(rows).assign(**self._meta())

    def history_table(self) -> pd.DataFrame:
        """Per-epoch training records of every trained head (loss, temperature, lr, time)."""
        parts = [r.history.epochs_df.assign(method=r.method, head=r.head, seed=r.seed)
                 for r in self.runs if r.history is not None]
        return pd.concat(parts, ignore_index=True).assign(**self._meta()) if parts else pd.DataFrame()


def _ranks(sim: torch.Tensor, t2i) -> dict:
    return retrieval_ranks(sim, t2i)


def _rerank_ranks(reranked: dict, t2i) -> dict:
    a, b = retrieval_ranks(reranked["i2t"], t2i), retrieval_ranks(reranked["t2i"], t2i)
    return {"i2t": a["i2t"], "i2t_images": a["i2t_images"], "t2i": b["t2i"]}


def _pixel_loader(model, manifest: pd.DataFrame):
    """The model's preprocessed pixels of manifest rows, decoded once (:func:`vlnb.data.pixels.pixel_loader`)."""
    return pixel_loader(model.preprocess, manifest)


def run_heads(
    model,
    train_manifest: pd.DataFrame,
    test_manifest: pd.DataFrame,
    *,
    dataset: str,
    model_name: str,
    heads: Sequence[str] = HEAD_KINDS,
    seeds: Sequence[int] = (0, 1, 2),
    train_config: Mapping | None = None,
    embed_dim: int = 256,
    hidden_dim: int | None = None,
    k_rerank: int = 0,
    rerank_batch_size: int = 64,
    feature_batch_size: int = 32,
    include_untrained: bool = True,
    ks: Sequence[int] = (1, 5, 10),
    n_boot: int = 1000,
    level: float = 0.95,
    cache_dir=None,
    progress: bool = True,
    qformer: bool = False,
    qformer_queries: int = 8,
    qformer_width: int = 128,
    qformer_layers: int = 2,
) -> HeadsExperiment:
    """The whole chapter-3 experiment for one pretrained ``model`` and one data set (module docstring).

    ``k_rerank > 0`` adds the ITC + ITM re-ranking baseline for models with an ITM head (BLIP-2).
    ``include_untrained`` adds each head kind at its initialisation (seed by seed): the "before" picture.
    ``qformer`` (towers only) adds a third method: a :class:`~vlnb.heads.model.QFormerHeads` of
    ``qformer_queries`` queries, ``qformer_layers`` blocks of width ``qformer_width``, over the cached 7x7
    patch map of the same frozen image tower and the same cached text features, same trainer, recipe and seeds.
    """
    heads, seeds = list(heads), [int(s) for s in seeds]
    bad = [h for h in heads if h not in HEAD_KINDS]
    if bad or not heads:
        raise ValueError(f"heads must be a non-empty list of {HEAD_KINDS}, got {heads}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    extractor = FrozenFeatureExtractor(model, pool_queries=True)
    train = extract_frozen_features(extractor, train_manifest, cache_dir=cache_dir, batch_size=feature_batch_size,
                                    progress=progress)
    test_ex = extractor if model.family != "blip2" else FrozenFeatureExtractor(model, pool_queries=False)
    test = extract_frozen_features(test_ex, test_manifest, cache_dir=cache_dir, batch_size=feature_batch_size,
                                   progress=progress)
    t2i = test.text_to_image
    if len(t2i) == 0:
        raise ValueError(f"{dataset}: the test manifest has no captions to retrieve")
    runs: list[MethodRun] = []

    t0 = time.perf_counter()
    img, txt = pretrained_embeddings(model, test)
    sim = similarity(img, txt)
    runs.append(MethodRun(Method.PRETRAINED, PROTOCOL_ITC, _ranks(sim, t2i), image_emb=img, text_emb=txt,
                          similarity=sim, seconds=time.perf_counter() - t0))
    if k_rerank > 0 and hasattr(model, "cross_encoder"):
        t0 = time.perf_counter()
        reranked, _ = rerank_similarity(sim, model.cross_encoder(), _pixel_loader(model, test.manifest), test.texts,
                                        k=k_rerank, batch_size=rerank_batch_size, progress=progress)
        runs.append(MethodRun(Method.RERANK, PROTOCOL_RERANK,
                              _rerank_ranks(reranked, t2i), similarity=reranked["t2i"],
                              seconds=time.perf_counter() - t0, max_k=k_rerank))

    for head in heads:
        for seed in seeds:
            if include_untrained:
                m0 = HeadsDualEncoder(train.image_dim, train.text_dim, head, embed_dim, hidden_dim, seed).eval()
                i0, t0_ = head_embeddings(m0, test)
                runs.append(MethodRun(Method.head(head, trained=False), PROTOCOL_ITC, _ranks(similarity(i0, t0_), t2i),
                                      head, seed, image_emb=i0, text_emb=t0_))
            t0 = time.perf_counter()
            m, hist = train_head(train, head, seed, train_config, embed_dim, hidden_dim, progress=progress)
            m.cpu()
            i1, t1 = head_embeddings(m, test)
            s1 = similarity(i1, t1)
            runs.append(MethodRun(Method.head(head), PROTOCOL_ITC, _ranks(s1, t2i), head, seed, image_emb=i1, text_emb=t1,
                                  similarity=s1, history=hist, seconds=time.perf_counter() - t0))
    if qformer:
        ptrain = patch_features(model, train, cache_dir=cache_dir, batch_size=feature_batch_size, progress=progress)
        ptest = patch_features(model, test, cache_dir=cache_dir, batch_size=feature_batch_size, progress=progress)
        qkw = {"embed_dim": embed_dim, "width": qformer_width, "layers": qformer_layers, "n_queries": qformer_queries}
        for seed in seeds:
            if include_untrained:
                m0 = QFormerHeads(ptrain.image_dim, ptrain.text_dim, int(ptrain.image.shape[1]), seed=seed, **qkw).eval()
                i0, t0_ = head_embeddings(m0, ptest)
                runs.append(MethodRun(Method.UNTRAINED_QFORMER, PROTOCOL_ITC, _ranks(similarity(i0, t0_), t2i),
                                      "qformer", seed, image_emb=i0, text_emb=t0_))
            t0 = time.perf_counter()
            m, hist = train_qformer(ptrain, seed, train_config, progress=progress, **qkw)
            m.cpu()
            i1, t1 = head_embeddings(m, ptest)
            s1 = similarity(i1, t1)
            runs.append(MethodRun(Method.QFORMER, PROTOCOL_ITC, _ranks(s1, t2i), "qformer", seed, image_emb=i1,
                                  text_emb=t1, similarity=s1, history=hist, seconds=time.perf_counter() - t0))
    return HeadsExperiment(dataset, model_name, train, test, runs, tuple(ks), n_boot, level)

def heads_data(dataset: str, n_train: int | None = None, n_test: int | None = None, seed: int = 0,
               flickr30k_source: str | None = None, progress: bool = False) -> dict[str, pd.DataFrame]:
    """``{"train", "test"}`` manifests of a chapter-3 data set, bad images dropped.

    ``"coco-mini"``: the towers-coco reference data (train2017 -> val2017); ``"world"``: the scratch-world
    reference data (the first ``n_train`` / ``n_test`` scenes, identical to those of the full reference set);
    ``"flickr30k"``: Karpathy train -> Karpathy 1k test of ``flickr30k_source`` (hub id or local copy).
    ``n_train`` / ``n_test``: a seeded random subset of that size (all when None or larger).
    """
    if dataset == "coco-mini":
        data = reference_data("towers-coco")
    elif dataset == "world":
        kw = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
        data = reference_data("scratch-world", **kw)
    elif dataset == "flickr30k":
        src = flickr30k_source or "nlphuji/flickr30k"
        data = {}
        for split in ("train", "test"):
            df, _ = load_flickr30k(src, split=split, check_images=False, progress=progress)
            n = n_train if split == "train" else n_test
            df = _subset(df, n, seed)
            data[split] = drop_bad_images(df, progress=progress)[0]
        return data
    else:
        raise ValueError(f"unknown data set {dataset!r} for chapter 3; choose coco-mini, world or flickr30k")
    return {"train": _subset(data["train"], n_train, seed), "test": _subset(data["test"], n_test, seed)}


def _subset(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    if n is None or n >= len(df):
        return df
    if n < 1:
        raise ValueError(f"subset size must be >= 1, got {n}")
    rows = np.sort(np.random.default_rng([int(seed), 0x5B]).choice(len(df), size=int(n), replace=False))
    return subset(df, rows)


def load_backbones(profile: str, models: Mapping[str, str] | None, device="auto", progress: bool = True) -> dict:
    """``{display name: pretrained model}`` through :func:`vlnb.zoo.profile_models`.

    offline: ``models`` maps display names to reference-model names (``towers-coco``); full: to hub ids or
    local checkpoint folders (every other hub model of :data:`vlnb.zoo.HUB_MODELS` is left out).
    """
    if not models:
        raise ValueError("no model given: `models` must map a display name to a checkpoint")
    if profile == "offline":
        loaded = profile_models("offline", models={ref: ref for ref in models.values()}, device=device,
                                progress=progress)
        return {name: loaded[ref] for name, ref in models.items()}
    table = {**{k: None for k in HUB_MODELS}, **dict(models)}
    return profile_models(profile, models=table, device=device, progress=progress, include_cross=False)
