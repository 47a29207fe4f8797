"""Projection heads on frozen features (chapter 3): what a linear or a small MLP head can and cannot add.

The experiment, in the order :func:`run_heads` does it:

1. **Frozen features, extracted once.** :class:`FrozenFeatureExtractor` exposes the *pre-head* features of
   a pretrained dual encoder through the interface that :mod:`vlnb.eval.features` caches, so every head,
   seed and rerun reads them from disk:

   - BLIP-2 (:class:`~vlnb.models.blip2.BLIP2Adapter`): image = the 32 Q-Former query outputs (hidden size
     768 for ViT-g), i.e. the input of ``vision_projection``; text = the Q-Former ``[CLS]`` output of the
     text-only pass, the input of ``text_projection``. The test set keeps all 32 queries (the pretrained
     ITC head needs them); heads are trained on the **mean over the 32 queries** (a single vector per
     image is what a contrastive loss over a batch needs; the max-over-queries trick of ITC is a property
     of the pretrained head, not something a new head can use before it is trained);
   - the offline towers (:class:`~vlnb.models.towers.TowersDualEncoder`): image = pooled EfficientNet-Lite0
     features (1280-d), text = all-MiniLM-L6-v2 sentence embeddings (384-d), the inputs of its heads.

2. **Baselines.** The pretrained contrastive head used correctly (:func:`pretrained_embeddings`: BLIP-2's
   ``vision_projection`` on every query, similarity = max over the 32 queries; the towers' trained linear
   heads), and -- a *different protocol* -- its ITC top-``k`` re-ranked with the ITM head
   (:mod:`vlnb.eval.rerank`, BLIP/BLIP-2 only: the cross encoder sees every candidate pair).

3. **Heads** (``"linear"``, or ``"mlp"`` = Linear -> GELU -> Linear with the same output size), one per
   tower, trained by the book's contrastive trainer :func:`vlnb.train.train_contrastive` with the CLIP loss,
   schedule and learnable temperature of chapter 2: :class:`HeadsDualEncoder` is a dual encoder whose
   "pixels" are cached image-feature vectors and whose :meth:`~HeadsDualEncoder.tokenize` maps a caption to
   its row of a cached text-feature table. Several seeds per head (initialisation and data order).

4. **Evaluation.** Recall@K in both directions with bootstrap intervals over test images
   (:func:`vlnb.eval.bootstrap.bootstrap_recall`), the spread over seeds, paired differences, the
   alignment and uniformity of the embeddings (Wang & Isola 2020) and their PCA before/after the heads.

Figures: :func:`recall_bars`, :func:`geometry_plot`, :func:`pca_plot`, :func:`gallery_plot`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .data.manifest import subset, subset_ids, texts_and_targets
from .eval.bootstrap import bootstrap_recall, recall_difference
from .eval.chance import recall_chance
from .eval.retrieval import recall_from_ranks, retrieval_ranks
from .models.base import DualEncoder, tokenizer_id, weights_fingerprint
from .models.towers import make_head
from .timing import timer

HEAD_KINDS = ("linear", "mlp")
HEAD_LABELS = {"linear": "linear head", "mlp": "MLP head"}
FEATURE_FAMILIES = ("towers", "blip2")
PROTOCOL_ITC = "dual encoder (cosine)"
PROTOCOL_RERANK = "ITC top-k re-ranked by ITM (cross encoder)"


# ============================================================================================ frozen features
def _blip2_query_outputs(adapter, pixel_values: torch.Tensor) -> torch.Tensor:
    """``(B, Q, H)`` Q-Former query outputs: :meth:`BLIP2Adapter.encode_image` minus the projection."""
    image, mask = adapter._vit(pixel_values)
    queries = adapter.model.query_tokens.expand(image.shape[0], -1, -1)
    return adapter.model.qformer(query_embeds=queries, encoder_hidden_states=image,
                                 encoder_attention_mask=mask).last_hidden_state


def _blip2_text_cls(adapter, **tokens) -> torch.Tensor:
    """``(B, H)`` Q-Former ``[CLS]`` of the text-only pass: :meth:`BLIP2Adapter.encode_text` minus the projection."""
    t = adapter._tokens_on_device(tokens)
    emb = adapter.model.embeddings(input_ids=t["input_ids"])
    h = adapter.model.qformer(query_embeds=emb, query_length=0, attention_mask=t["attention_mask"]).last_hidden_state
    return h[:, 0, :]


class FrozenFeatureExtractor:
    """The raw (pre-head) features of a pretrained dual encoder, shaped for :mod:`vlnb.eval.features`.

    ``encode_image`` / ``encode_texts`` return the features (see the module docstring), ``fingerprint``
    identifies the weights that produce them (towers: the two towers only, so retraining the heads keeps
    the cache), ``preprocess`` is the model's. ``pool_queries`` (BLIP-2): mean over the 32 query outputs
    (``True``, what heads train on) or keep them all (``False``: ``(B, 32, H)``, for the pretrained ITC head).
    """

    def __init__(self, model, pool_queries: bool = True):
        family = getattr(model, "family", None)
        if family not in FEATURE_FAMILIES:
            raise ValueError(
                f"frozen features are defined for the families {FEATURE_FAMILIES}, not {family!r} "
                f"({type(model).__name__}); see vlnb.heads"
            )
        self.model, self.family, self.pool_queries = model, family, bool(pool_queries)
        self.preprocess = model.preprocess
        if family == "towers":
            from .models.towers import IMAGE_DIM, TEXT_DIM

            self.image_dim, self.text_dim = IMAGE_DIM, TEXT_DIM
        else:
            self.image_dim = self.text_dim = int(model.model.config.qformer_config.hidden_size)
        self.embed_dim = self.image_dim
        self._fingerprint: str | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def describe(self) -> dict[str, str]:
        """What the image and text features are (for tables and prose)."""
        if self.family == "towers":
            return {"image": f"EfficientNet-Lite0 global average pool ({self.image_dim}-d)",
                    "text": f"all-MiniLM-L6-v2 mean-pooled sentence embedding ({self.text_dim}-d)"}
        q = int(self.model.num_queries)
        pooled = f"mean of the {q} Q-Former query outputs" if self.pool_queries else f"{q} Q-Former query outputs"
        return {"image": f"{pooled} ({self.image_dim}-d), before vision_projection",
                "text": f"Q-Former [CLS] of the text-only pass ({self.text_dim}-d), before text_projection"}

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            m = self.model
            if self.family == "towers":
                extra = {"frozen": "towers-raw-v1", "tokenizer": tokenizer_id(m.tokenizer),
                         "max_length": m.max_length, "preprocess": m.preprocess.config}
                self._fingerprint = weights_fingerprint(nn.ModuleList([m.image_tower, m.text_tower]), extra)
            else:
                payload = {"frozen": "blip2-qformer-raw-v1", "model": m.fingerprint(), "pool": self.pool_queries}
                self._fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return self._fingerprint

    def tokenize(self, texts):
        return self.model.tokenize(texts)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.family == "towers":
            return self.model.image_features(pixel_values)
        q = _blip2_query_outputs(self.model, pixel_values)
        return q.mean(dim=1) if self.pool_queries else q

    def encode_text(self, **tokens) -> torch.Tensor:
        if self.family == "towers":
            return self.model.text_features(**tokens)
        return _blip2_text_cls(self.model, **tokens)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        texts = list(texts)
        starts = range(0, len(texts), batch_size)
        if progress:
            from .progress import tqdm

            starts = tqdm(starts, desc="encoding texts", leave=False)
        with torch.inference_mode():
            out = [self.encode_text(**self.tokenize(texts[s : s + batch_size])).float().cpu() for s in starts]
        return torch.cat(out) if out else torch.empty(0, self.text_dim)


@dataclass
class FrozenFeatures:
    """Cached frozen features of one manifest: row ``i`` of ``image`` is ``manifest`` row ``i``; ``texts``
    are all their captions (``text_to_image[j]`` = image row of text ``j``), ``text`` their features."""

    image: torch.Tensor  #: (N, D_image), or (N, Q, D_image) for BLIP-2's unpooled queries
    text: torch.Tensor  #: (M, D_text)
    manifest: pd.DataFrame
    texts: list[str]
    text_to_image: np.ndarray
    description: dict = field(default_factory=dict)
    seconds: float = 0.0  #: extraction time (near 0 when read from the cache)
    from_cache: bool = False

    @property
    def n_images(self) -> int:
        return len(self.image)

    @property
    def pooled(self) -> torch.Tensor:
        """``(N, D)`` image features (multi-query features averaged over the queries)."""
        return self.image.mean(dim=1) if self.image.ndim == 3 else self.image

    @property
    def image_dim(self) -> int:
        return int(self.image.shape[-1])

    @property
    def text_dim(self) -> int:
        return int(self.text.shape[-1])

    @property
    def captions(self) -> list[list[str]]:
        return [list(c) for c in self.manifest["captions"]]


def extract_frozen_features(
    model_or_extractor,
    manifest: pd.DataFrame,
    pool_queries: bool = True,
    cache_dir=None,
    batch_size: int = 32,
    text_batch_size: int = 256,
    progress: bool = True,
) -> FrozenFeatures:
    """Frozen image and caption features of ``manifest`` via the feature cache of :mod:`vlnb.eval.features`
    (computed on the first call, read from disk afterwards). Images that cannot be decoded are dropped
    (with their captions); ``manifest`` of the result holds the rows that have features."""
    from .eval.features import image_features, text_features

    ex = (model_or_extractor if isinstance(model_or_extractor, FrozenFeatureExtractor)
          else FrozenFeatureExtractor(model_or_extractor, pool_queries))
    t0 = time.perf_counter()
    fs = image_features(ex, manifest, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    keep = subset_ids(manifest, fs.image_ids)
    texts, t2i = texts_and_targets(keep)
    txt = text_features(ex, texts, batch_size=text_batch_size, cache_dir=cache_dir, progress=progress)
    return FrozenFeatures(fs.embeddings.float(), txt.float(), keep, texts, t2i, ex.describe(),
                          time.perf_counter() - t0, fs.from_cache)


# ============================================================================================ heads model
class HeadsDualEncoder(DualEncoder):
    """Two projection heads over cached frozen features, as a :class:`DualEncoder` the trainer can train.

    ``encode_image(x)``: ``x`` is a batch of image-feature vectors ``(B, D_image)`` (the "pixels" of
    :func:`vlnb.train.train_contrastive`). ``tokenize(captions)`` looks each caption up in the text-feature
    table set by :meth:`set_text_table` and returns ``{"rows": indices}``; ``encode_text(rows=...)`` projects
    those rows. Both outputs are L2-normalised; ``log_logit_scale`` starts at ``log(1/0.07)`` as in CLIP.
    The head weights are initialised from ``seed`` alone (the global RNG is left untouched).
    """

    family = "heads"
    text_input_names = ("rows",)

    def __init__(self, image_dim: int, text_dim: int, head: str = "linear", embed_dim: int = 256,
                 hidden_dim: int | None = None, seed: int = 0, init_temperature: float = 0.07, name: str | None = None):
        if head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {HEAD_KINDS}, got {head!r}")
        if min(image_dim, text_dim, embed_dim) < 1:
            raise ValueError(f"dimensions must be positive, got image {image_dim}, text {text_dim}, embed {embed_dim}")
        super().__init__(name or f"{head} head (seed {seed})", preprocess=None)
        self.image_dim, self.text_dim, self.embed_dim = int(image_dim), int(text_dim), int(embed_dim)
        self.head_kind, self.hidden_dim, self.seed = head, hidden_dim, int(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.image_head = make_head(head, self.image_dim, self.embed_dim, hidden_dim)
            self.text_head = make_head(head, self.text_dim, self.embed_dim, hidden_dim)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.register_buffer("text_table", torch.empty(0, self.text_dim), persistent=False)
        self._rows: dict[str, int] = {}

    def adapter_config(self) -> dict:
        return {"head": self.head_kind, "image_dim": self.image_dim, "text_dim": self.text_dim,
                "embed_dim": self.embed_dim, "hidden_dim": self.hidden_dim}

    def fingerprint(self) -> str:
        return weights_fingerprint(self, {"family": self.family, **self.adapter_config()})

    @property
    def logit_scale(self) -> float:
        return float(self.log_logit_scale.detach().exp())

    def set_text_table(self, texts: Sequence[str], features: torch.Tensor) -> None:
        """The captions :meth:`tokenize` knows and their frozen features ``(len(texts), D_text)``."""
        if features.ndim != 2 or features.shape != (len(texts), self.text_dim):
            raise ValueError(f"text features must be ({len(texts)}, {self.text_dim}), got {tuple(features.shape)}")
        self.text_table = features.detach().float().to(self.log_logit_scale.device)
        self._rows = {t: i for i, t in enumerate(texts)}

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        missing = [t for t in texts if t not in self._rows]
        if missing:
            raise KeyError(f"{len(missing)} caption(s) have no cached text features (set_text_table), "
                           f"e.g. {missing[:3]}")
        return {"rows": torch.tensor([self._rows[t] for t in texts], dtype=torch.long)}

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(features.to(self.log_logit_scale.device).float()), dim=-1)

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(features.to(self.log_logit_scale.device).float()), dim=-1)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 2 or pixel_values.shape[1] != self.image_dim:
            raise ValueError(f"HeadsDualEncoder takes image features (B, {self.image_dim}), "
                             f"got {tuple(pixel_values.shape)}")
        return self.project_image(pixel_values)

    def encode_text(self, rows: torch.Tensor, **_) -> torch.Tensor:
        return self.project_text(self.text_table[rows.to(self.text_table.device)])


class FeaturePairs(torch.utils.data.Dataset):
    """``(image feature vector, caption)`` training pairs, one per image that has a caption.

    The caption of each image is drawn per epoch exactly as :class:`vlnb.train.PairDataset` draws it
    (``caption_sampling="random"``: from a generator seeded by ``(seed, epoch)``; ``"first"``: always the first).
    """

    def __init__(self, features: torch.Tensor, captions: Sequence[Sequence[str]], caption_sampling: str = "random",
                 seed: int = 0):
        if caption_sampling not in ("random", "first"):
            raise ValueError(f"caption_sampling must be 'random' or 'first', got {caption_sampling!r}")
        if len(features) != len(captions):
            raise ValueError(f"{len(features)} feature rows but {len(captions)} caption lists")
        keep = [i for i, c in enumerate(captions) if len(c) > 0]
        if not keep:
            raise ValueError("no image has a caption: nothing to train on")
        self.features = features[keep].float()
        self.captions = [list(captions[i]) for i in keep]
        self.caption_sampling, self.seed = caption_sampling, int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        from .train.trainer import caption_choice

        self._choice = caption_choice([len(c) for c in self.captions], self.caption_sampling, self.seed, epoch)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int):
        return self.features[i], self.captions[i][self._choice[i]]


@timer("training")
def train_head(
    train: FrozenFeatures,
    head: str = "linear",
    seed: int = 0,
    config=None,
    embed_dim: int = 256,
    hidden_dim: int | None = None,
    progress: bool = False,
):
    """Train one :class:`HeadsDualEncoder` on ``train`` with :func:`vlnb.train.train_contrastive`.

    ``config``: :class:`vlnb.train.TrainConfig` fields (dict or object); its ``seed`` is replaced by ``seed``,
    which also seeds the head initialisation. Returns ``(model in eval mode, History)``.
    """
    from .train import TrainConfig, train_contrastive

    base = config.model_dump() if hasattr(config, "model_dump") else dict(config or {})
    cfg = TrainConfig(**{**base, "seed": int(seed)})
    model = HeadsDualEncoder(train.image_dim, train.text_dim, head, embed_dim, hidden_dim, seed)
    model.set_text_table(train.texts, train.text)
    pairs = FeaturePairs(train.pooled, train.captions, cfg.caption_sampling, cfg.seed)
    history = train_contrastive(model, pairs, config=cfg, progress=progress)
    return model.eval(), history


# ============================================================================================ scoring
def similarity(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``(N, M)``; multi-query ``(N, Q, D)`` image embeddings take the max over queries."""
    return DualEncoder.similarity(None, image_emb.float(), text_emb.float())


@torch.no_grad()
def head_embeddings(model: HeadsDualEncoder, feats: FrozenFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image (N, D), text (M, D))`` normalised embeddings of ``feats`` through the heads (CPU)."""
    return model.project_image(feats.pooled).cpu(), model.project_text(feats.text).cpu()


@torch.no_grad()
def pretrained_embeddings(model, feats: FrozenFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """The pretrained contrastive head applied to cached frozen features -- exactly the model's own
    ``encode_image`` / ``encode_text`` (towers: its trained heads; BLIP-2: ``vision_projection`` on each of the
    32 query outputs, ``(N, 32, D)``, and ``text_projection`` on ``[CLS]``). BLIP-2 needs unpooled features."""
    family = getattr(model, "family", None)
    if family == "towers":
        return model.project_image(feats.image).float().cpu(), model.project_text(feats.text).float().cpu()
    if family == "blip2":
        if feats.image.ndim != 3:
            raise ValueError("BLIP-2's ITC head needs all query outputs: extract with pool_queries=False")
        vp, tp = model.model.vision_projection, model.model.text_projection
        dev = vp.weight.device
        img = F.normalize(vp(feats.image.to(dev, vp.weight.dtype)).float(), dim=-1).cpu()
        txt = F.normalize(tp(feats.text.to(dev, tp.weight.dtype)).float(), dim=-1).cpu()
        return img, txt
    raise ValueError(f"no pretrained head for family {family!r}")


# ============================================================================================ geometry
def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """Wang & Isola's alignment ``E ||x_i - y_i||^alpha`` over matched rows of normalised ``x``, ``y`` (lower
    is better aligned; 0 when every pair coincides, 4 for antipodal pairs at ``alpha = 2``)."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"alignment needs two (n, d) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    return float((x.float() - y.float()).norm(dim=1).pow(alpha).mean())


def uniformity(x: torch.Tensor, t: float = 2.0, max_points: int | None = 2000, seed: int = 0) -> float:
    """Wang & Isola's uniformity ``log E exp(-t ||x_i - x_j||^2)`` over distinct pairs of normalised rows
    (lower is more uniform; 0 when all points coincide). More than ``max_points`` rows: a seeded subsample."""
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"uniformity needs an (n >= 2, d) tensor, got {tuple(x.shape)}")
    if max_points is not None and len(x) > max_points:
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(len(x), generator=g)[:max_points]]
    d2 = torch.pdist(x.double(), p=2).pow(2)
    return float(torch.logsumexp(-t * d2, dim=0) - math.log(len(d2)))


def paired_embeddings(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per-text image embedding (M, D), per-image embedding (N, D))`` for geometry and PCA.

    2-D image embeddings are used as they are. Multi-query ``(N, Q, D)`` ones (BLIP-2's ITC) are reduced the
    way ITC scores them: for text ``j`` the query of its image that matches it best; for image ``i`` the query
    chosen by its first caption (the mean of the queries for images without a caption).
    """
    t2i = torch.as_tensor(np.asarray(text_to_image), dtype=torch.long)
    if image_emb.ndim == 2:
        return image_emb[t2i], image_emb
    q = torch.einsum("mqd,md->mq", image_emb[t2i], text_emb).argmax(dim=1)
    per_text = image_emb[t2i, q]
    per_image = F.normalize(image_emb.mean(dim=1), dim=-1)
    first = {}
    for j, i in enumerate(t2i.tolist()):
        first.setdefault(i, j)
    for i, j in first.items():
        per_image[i] = per_text[j]
    return per_text, per_image


def geometry(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image, seed: int = 0) -> dict[str, float]:
    """Alignment of matched pairs, uniformity of images and of texts, and the modality gap (distance between
    the image and text centroids, Liang et al. 2022) of normalised embeddings."""
    per_text, per_image = paired_embeddings(image_emb, text_emb, text_to_image)
    return {
        "alignment": alignment(per_text, text_emb),
        "uniformity_image": uniformity(per_image, seed=seed),
        "uniformity_text": uniformity(text_emb, seed=seed),
        "modality_gap": float((per_image.mean(0) - text_emb.mean(0)).norm()),
    }


# ============================================================================================ the experiment
@dataclass
class MethodRun:
    """One method evaluated on the test set (a baseline, or one head kind at one seed)."""

    method: str
    protocol: str
    ranks: dict
    head: str | None = None
    seed: int | None = None
    trained: bool = True
    image_emb: torch.Tensor | None = None  #: None for re-ranking (no embedding of its own)
    text_emb: torch.Tensor | None = None
    similarity: torch.Tensor | None = None  #: (N, M) scores used for the text->image gallery
    history: object | None = None
    seconds: float = 0.0
    max_k: int | None = None  #: re-ranking: Recall@K is only meaningful for K <= k (rows above are dropped)


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

    def runs_of(self, method: str) -> list[MethodRun]:
        return [r for r in self.runs if r.method == method]

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

    def compare(self, a: str, b: str) -> pd.DataFrame:
        """Paired bootstrap interval of (seed-mean) recall of method ``a`` minus method ``b``."""
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
    from .data.pixels import pixel_loader

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
) -> HeadsExperiment:
    """The whole chapter-3 experiment for one pretrained ``model`` and one data set (module docstring).

    ``k_rerank > 0`` adds the ITC + ITM re-ranking baseline for models with an ITM head (BLIP-2).
    ``include_untrained`` adds each head kind at its initialisation (seed by seed): the "before" picture.
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
    runs.append(MethodRun("pretrained head", PROTOCOL_ITC, _ranks(sim, t2i), image_emb=img, text_emb=txt,
                          similarity=sim, seconds=time.perf_counter() - t0))
    if k_rerank > 0 and hasattr(model, "cross_encoder"):
        from .eval.rerank import rerank_similarity

        t0 = time.perf_counter()
        reranked, _ = rerank_similarity(sim, model.cross_encoder(), _pixel_loader(model, test.manifest), test.texts,
                                        k=k_rerank, batch_size=rerank_batch_size, progress=progress)
        runs.append(MethodRun(f"pretrained head + ITM re-rank (k={k_rerank})", PROTOCOL_RERANK,
                              _rerank_ranks(reranked, t2i), similarity=reranked["t2i"],
                              seconds=time.perf_counter() - t0, max_k=k_rerank))

    for head in heads:
        label = HEAD_LABELS[head]
        for seed in seeds:
            if include_untrained:
                m0 = HeadsDualEncoder(train.image_dim, train.text_dim, head, embed_dim, hidden_dim, seed).eval()
                i0, t0_ = head_embeddings(m0, test)
                runs.append(MethodRun(f"untrained {label}", PROTOCOL_ITC, _ranks(similarity(i0, t0_), t2i), head, seed,
                                      trained=False, image_emb=i0, text_emb=t0_))
            t0 = time.perf_counter()
            m, hist = train_head(train, head, seed, train_config, embed_dim, hidden_dim, progress=progress)
            m.cpu()
            i1, t1 = head_embeddings(m, test)
            s1 = similarity(i1, t1)
            runs.append(MethodRun(label, PROTOCOL_ITC, _ranks(s1, t2i), head, seed, image_emb=i1, text_emb=t1,
                                  similarity=s1, history=hist, seconds=time.perf_counter() - t0))
    return HeadsExperiment(dataset, model_name, train, test, runs, tuple(ks), n_boot, level)


# ============================================================================================ data + models
def heads_data(dataset: str, n_train: int | None = None, n_test: int | None = None, seed: int = 0,
               flickr30k_source: str | None = None, progress: bool = False) -> dict[str, pd.DataFrame]:
    """``{"train", "test"}`` manifests of a chapter-3 data set, bad images dropped.

    ``"coco-mini"``: the towers-coco reference data (train2017 -> val2017); ``"world"``: the scratch-world
    reference data (the first ``n_train`` / ``n_test`` scenes, identical to those of the full reference set);
    ``"flickr30k"``: Karpathy train -> Karpathy 1k test of ``flickr30k_source`` (hub id or local copy).
    ``n_train`` / ``n_test``: a seeded random subset of that size (all when None or larger).
    """
    from .zoo import reference_data

    if dataset == "coco-mini":
        data = reference_data("towers-coco")
    elif dataset == "world":
        kw = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
        data = reference_data("scratch-world", **kw)
    elif dataset == "flickr30k":
        from .data.hub import load_flickr30k
        from .data.manifest import drop_bad_images

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
    from .zoo import HUB_MODELS, profile_models

    if not models:
        raise ValueError("no model given: `models` must map a display name to a checkpoint")
    if profile == "offline":
        loaded = profile_models("offline", models={ref: ref for ref in models.values()}, device=device,
                                progress=progress)
        return {name: loaded[ref] for name, ref in models.items()}
    table = {**{k: None for k in HUB_MODELS}, **dict(models)}
    return profile_models(profile, models=table, device=device, progress=progress, include_cross=False)


# ============================================================================================ prose
def fmt_ci(value: float, lo: float, hi: float, digits: int = 1) -> str:
    """``"23.4 % [18.0, 29.1]"``: a recall with its interval, for prose."""
    return f"{value:.{digits}f} % [{lo:.{digits}f}, {hi:.{digits}f}]"


def _short(method: str) -> str:
    if method.startswith("pretrained head +"):
        return "rerank"
    return {"pretrained head": "pretrained", "linear head": "linear", "MLP head": "mlp"}.get(method, "")


def prose_numbers(exp: HeadsExperiment, summary: pd.DataFrame | None = None, prefix: str = "main") -> dict:
    """Strings and numbers for the chapter's prose, keyed ``<prefix>_<what>`` (see the notebook):
    test size and chance, every (pretrained | linear | mlp | rerank) x (t2i | i2t) x k recall with its
    interval (``..._ci``) and seed spread (``..._sd``), and the paired differences MLP - linear and
    linear - pretrained (``<prefix>_diff_mlp_linear_t2i_r1`` ...). Methods a run lacks read "n/a"."""
    s = exp.summary_table() if summary is None else summary
    s = s[s["dataset"] == exp.dataset]
    out: dict = {f"{prefix}_dataset": exp.dataset, f"{prefix}_model": exp.model_name,
                 f"{prefix}_n_test": exp.test.n_images, f"{prefix}_n_texts": len(exp.test.texts),
                 f"{prefix}_n_train": len(exp.train.manifest)}
    for method in ("pretrained", "linear", "mlp", "rerank"):
        for d in ("t2i", "i2t"):
            for k in exp.ks:
                out[f"{prefix}_{method}_{d}_r{k}"] = "n/a"
                out[f"{prefix}_{method}_{d}_r{k}_ci"] = "n/a"
                out[f"{prefix}_{method}_{d}_r{k}_sd"] = "n/a"
    for _, r in s.iterrows():
        key = _short(r["method"])
        d, k = r["direction"], int(r["k"])
        out[f"{prefix}_chance_{d}_r{k}"] = f"{r['chance']:.1f} %"
        if key:
            out[f"{prefix}_{key}_{d}_r{k}"] = f"{r['recall']:.1f} %"
            out[f"{prefix}_{key}_{d}_r{k}_ci"] = fmt_ci(r["recall"], r["ci_lo"], r["ci_hi"])
            out[f"{prefix}_{key}_{d}_r{k}_sd"] = f"{r['seed_sd']:.1f}"
    for a, b, name in (("MLP head", "linear head", "mlp_linear"), ("linear head", "pretrained head", "linear_pretrained")):
        for d in ("t2i", "i2t"):
            for k in exp.ks:
                out[f"{prefix}_diff_{name}_{d}_r{k}"] = "n/a"
        if a in exp.methods() and b in exp.methods():
            for _, r in exp.compare(a, b).iterrows():
                out[f"{prefix}_diff_{name}_{r['direction']}_r{int(r['k'])}"] = (
                    f"{r['diff']:+.1f} points [{r['diff_lo']:+.1f}, {r['diff_hi']:+.1f}]")
    return out


def geometry_numbers(geo: pd.DataFrame, dataset: str, prefix: str = "main") -> dict[str, str]:
    """``<prefix>_align_<method>`` / ``<prefix>_gap_<method>`` (mean over seeds) for the prose, methods
    ``untrained_linear, linear, mlp, pretrained`` ("n/a" where absent) of :meth:`HeadsExperiment.geometry_table`."""
    g = geo[geo["dataset"] == dataset].groupby("method")[["alignment", "modality_gap"]].mean()
    out = {}
    for method, key in (("untrained linear head", "untrained_linear"), ("linear head", "linear"),
                        ("MLP head", "mlp"), ("pretrained head", "pretrained")):
        for col, name in (("alignment", "align"), ("modality_gap", "gap")):
            out[f"{prefix}_{name}_{key}"] = f"{g.loc[method, col]:.2f}" if method in g.index else "n/a"
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
        for m in _method_order(s["method"].unique()):
            p = s[s["method"] == m].set_index(["direction", "k"])
            parts = []
            for d, label in (("t2i", "text → image"), ("i2t", "image → text")):
                vals = [f"R@{k} {fmt_ci(p.loc[(d, k), 'recall'], p.loc[(d, k), 'ci_lo'], p.loc[(d, k), 'ci_hi'])}"
                        for k in ks if (d, k) in p.index]
                parts.append(f"{label} {'; '.join(vals)}")
            n = int(p["n_seeds"].iloc[0])
            seeds = f", mean of {n} seeds" if n > 1 else ""
            proto = " — *different protocol: cross encoder on the top k*" if "re-rank" in m else ""
            lines.append(f"  - {m}{seeds}: {' | '.join(parts)}{proto}")
    return "\n".join(lines)


# ============================================================================================ figures
def _method_order(methods: Sequence[str]) -> list[str]:
    def key(m: str):
        return (0 if m.startswith("pretrained") else 2 if m.startswith("untrained") else 1,
                "re-rank" in m, "MLP" in m, m)

    return sorted(dict.fromkeys(methods), key=key)


def recall_bars(summary: pd.DataFrame, per_seed: pd.DataFrame | None = None, title: str | None = None,
                include_untrained: bool = False):
    """R@K bars per method with the bootstrap interval of the seed-mean (error bars), each seed's value
    (dots, from ``per_seed`` = :meth:`HeadsExperiment.recall_table`) and chance (grey ticks); one panel
    per direction and one row per data set."""
    import matplotlib.pyplot as plt

    s = summary if include_untrained else summary[summary["trained"]]
    datasets, directions = list(dict.fromkeys(s["dataset"])), ["t2i", "i2t"]
    methods = _method_order(s["method"].unique())
    ks = sorted(s["k"].unique())
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.2 * len(datasets)), squeeze=False)
    width = 0.8 / len(methods)
    for r, ds in enumerate(datasets):
        for c, d in enumerate(directions):
            ax = axes[r, c]
            part = s[(s["dataset"] == ds) & (s["direction"] == d)]
            for m_i, m in enumerate(methods):
                row = part[part["method"] == m].set_index("k").reindex(ks)
                x = np.arange(len(ks)) + (m_i - (len(methods) - 1) / 2) * width
                err = np.vstack([row["recall"] - row["ci_lo"], row["ci_hi"] - row["recall"]])
                ax.bar(x, row["recall"], width * 0.9, yerr=err, capsize=3, color=f"C{m_i}", label=m,
                       hatch="//" if "re-rank" in m else None, edgecolor="white" if "re-rank" not in m else "k")
                if per_seed is not None:
                    ps = per_seed[(per_seed["dataset"] == ds) & (per_seed["direction"] == d) & (per_seed["method"] == m)]
                    if ps["seed"].notna().any():
                        for k_i, k in enumerate(ks):
                            v = ps[ps["k"] == k]["recall"]
                            ax.plot(np.full(len(v), x[k_i]), v, "k.", ms=4, zorder=3)
            ch = part.drop_duplicates("k").set_index("k").reindex(ks)["chance"]
            ax.hlines(ch, np.arange(len(ks)) - 0.45, np.arange(len(ks)) + 0.45, colors="0.4", linestyles=":",
                      label="chance")
            ax.set_xticks(np.arange(len(ks)), [f"R@{k}" for k in ks])
            ax.set_ylim(0, 100)
            ax.set_ylabel("recall (%)")
            ax.set_title(f"{ds}: {'text → image' if d == 't2i' else 'image → text'}", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    height = fig.get_figheight()
    top = 1 - (0.45 + (0.3 if title else 0)) / height  # room above the panels for the legend (and title)
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 5), fontsize=8,
               bbox_to_anchor=(0.5, 1 - (0.3 if title else 0) / height))
    if title:
        fig.suptitle(title, y=1.0)
    return fig


def geometry_plot(geo: pd.DataFrame):
    """Alignment (y) against uniformity (x, mean of images and texts), one marker per run; lower-left is
    better on both (Wang & Isola 2020). One panel per data set."""
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(geo["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4), squeeze=False)
    methods = _method_order(geo["method"].unique())
    for ax, ds in zip(axes[0], datasets):
        g = geo[geo["dataset"] == ds]
        for m_i, m in enumerate(methods):
            p = g[g["method"] == m]
            if len(p):
                u = (p["uniformity_image"] + p["uniformity_text"]) / 2
                ax.scatter(u, p["alignment"], s=40, color=f"C{m_i}", marker="o" if p["trained"].all() else "x",
                           label=m)
        ax.set(xlabel="uniformity (mean of images and texts; lower = more uniform)",
               ylabel="alignment of matched pairs (lower = closer)", title=ds)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _pca2(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def pca_plot(exp: HeadsExperiment, methods: Sequence[str] | None = None, seed: int = 0, n_lines: int = 25):
    """Joint 2-D PCA of image (blue) and text (orange) embeddings per method, with ``n_lines`` random matched
    pairs joined; the "before" panels are the heads at initialisation (and the raw frozen features when
    image and text share a space)."""
    import matplotlib.pyplot as plt

    t2i = exp.test.text_to_image
    panels = []
    if exp.test.image_dim == exp.test.text_dim:
        panels.append(("frozen features (no head)", F.normalize(exp.test.pooled, dim=-1), F.normalize(exp.test.text, dim=-1)))
    if methods is None:  # before -> after for each head kind, then the pretrained head
        kinds = [HEAD_LABELS[h] for h in HEAD_KINDS]
        methods = [m for k in kinds for m in (f"untrained {k}", k)] + ["pretrained head"]
    for m in methods:
        runs = [r for r in exp.runs_of(m) if r.image_emb is not None and r.seed in (None, seed)]
        if runs:
            panels.append((m, runs[0].image_emb, runs[0].text_emb))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4), squeeze=False)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(t2i), size=min(n_lines, len(t2i)), replace=False)
    for ax, (name, img, txt) in zip(axes[0], panels):
        _, per_image = paired_embeddings(img, txt, t2i)
        z = _pca2(np.concatenate([per_image.numpy(), txt.numpy()]).astype(np.float64))
        zi, zt = z[: len(per_image)], z[len(per_image):]
        ax.scatter(zt[:, 0], zt[:, 1], s=4, alpha=0.4, color="C1", label="texts")
        ax.scatter(zi[:, 0], zi[:, 1], s=6, alpha=0.6, color="C0", label="images")
        for j in pick:
            i = t2i[j]
            ax.plot([zi[i, 0], zt[j, 0]], [zi[i, 1], zt[j, 1]], color="0.3", lw=0.5, alpha=0.6)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].legend(fontsize=7, loc="best", markerscale=2)
    fig.tight_layout()
    return fig


def gallery_plot(exp: HeadsExperiment, methods: Sequence[str] | None = None, n_queries: int = 3, k: int = 4,
                 seed: int = 0, width: int = 32):
    """Text -> image retrievals: for ``n_queries`` random test captions, each method's top ``k`` images
    (seed ``seed`` for heads); the true image is framed in green, others in grey."""
    import textwrap

    import matplotlib.pyplot as plt

    from .data.images import try_open_rgb

    wanted = methods or [m for m in _method_order(exp.methods(trained_only=True))]
    runs = []
    for m in wanted:
        rs = [r for r in exp.runs_of(m) if r.similarity is not None and r.seed in (None, seed)]
        if rs:
            runs.append(rs[0])
    t2i = exp.test.text_to_image
    queries = np.random.default_rng(seed).choice(len(t2i), size=min(n_queries, len(t2i)), replace=False)
    k = min(k, exp.test.n_images)
    nrows = len(queries) * len(runs)
    fig, axes = plt.subplots(nrows, k + 1, figsize=(1.7 * (k + 1) + 1.2, 1.7 * nrows), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2] + [1] * k})
    sources = list(exp.test.manifest["image"])
    cache: dict[int, object] = {}
    for qi, j in enumerate(queries):
        for ri, r in enumerate(runs):
            row = axes[qi * len(runs) + ri]
            for ax in row:
                ax.set_xticks([]), ax.set_yticks([])
            text = "\n".join(textwrap.wrap(f"“{exp.test.texts[j]}”", width)[:4]) if ri == 0 else ""
            row[0].text(0.0, 0.5, f"{text}\n\n{r.method}" if text else r.method, fontsize=7, va="center")
            row[0].axis("off")
            top = torch.topk(r.similarity[:, j].float(), k).indices.tolist()
            for ax, i in zip(row[1:], top):
                if i not in cache:
                    cache[i] = try_open_rgb(sources[i])[0]
                if cache[i] is not None:
                    ax.imshow(cache[i])
                ok = i == t2i[j]
                for sp in ax.spines.values():
                    sp.set_edgecolor("tab:green" if ok else "0.7")
                    sp.set_linewidth(3 if ok else 0.5)
    fig.tight_layout()
    return fig


__all__ = [
    "FEATURE_FAMILIES", "HEAD_KINDS", "FeaturePairs", "FrozenFeatureExtractor", "FrozenFeatures", "HeadsDualEncoder",
    "HeadsExperiment", "MethodRun", "alignment", "extract_frozen_features", "fmt_ci", "gallery_plot",
    "geometry", "geometry_numbers", "geometry_plot", "head_embeddings", "heads_data", "load_backbones", "paired_embeddings", "pca_plot",
    "pretrained_embeddings", "prose_numbers", "recall_bars", "results_markdown", "run_heads", "similarity", "train_head", "uniformity",
]
