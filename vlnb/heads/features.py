"""Frozen features: the pre-head image and text features of a pretrained dual encoder, cached."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.manifest import subset_ids, texts_and_targets
from ..eval.features import image_features, text_features
from ..models.base import encode_texts_batched, tokenizer_id, weights_fingerprint
from ..models.towers import IMAGE_DIM, TEXT_DIM

FEATURE_FAMILIES = ("towers", "blip2")


class FrozenFeatureExtractor:
    """The raw (pre-head) features of a pretrained dual encoder, shaped for :mod:`vlnb.eval.features`.

    ``encode_image`` / ``encode_texts`` return the features (see the module docstring), ``fingerprint``
    identifies the weights that produce them (towers: the two towers only, so retraining the heads keeps
    the cache), ``preprocess`` is the model's. ``pool_queries`` (BLIP-2): mean over the 32 query outputs
    (``True``, what heads train on) or keep them all (``False``: ``(B, 32, H)``, for the pretrained ITC head).
    ``patches`` (towers only): EfficientNet-Lite0's last 7x7 feature map instead of its global average pool,
    as ``(B, 49, 1280)`` tokens (row-major positions; their mean is the pooled feature) -- what a Q-Former
    cross-attends to.
    """

    def __init__(self, model, pool_queries: bool = True, patches: bool = False):
        family = getattr(model, "family", None)
        if family not in FEATURE_FAMILIES:
            raise ValueError(
                f"frozen features are defined for the families {FEATURE_FAMILIES}, not {family!r} "
                f"({type(model).__name__}); see vlnb.heads"
            )
        if patches and family != "towers":
            raise ValueError(f"patch features are defined for the towers' EfficientNet-Lite0 only, not {family!r}")
        self.model, self.family, self.pool_queries, self.patches = model, family, bool(pool_queries), bool(patches)
        self.preprocess = model.preprocess
        if family == "towers":
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
        if self.family == "towers" and self.patches:
            return {"image": f"EfficientNet-Lite0 last feature map, 7x7 = 49 tokens ({self.image_dim}-d each)",
                    "text": f"all-MiniLM-L6-v2 mean-pooled sentence embedding ({self.text_dim}-d)"}
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
                extra = {"frozen": "towers-patches-v1" if self.patches else "towers-raw-v1",
                         "tokenizer": tokenizer_id(m.tokenizer),
                         "max_length": m.max_length, "preprocess": m.preprocess.config}
                self._fingerprint = weights_fingerprint(nn.ModuleList([m.image_tower, m.text_tower]), extra)
            else:
                payload = {"frozen": "blip2-qformer-raw-v1", "model": m.fingerprint(), "pool": self.pool_queries}
                self._fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return self._fingerprint

    def tokenize(self, texts):
        return self.model.tokenize(texts)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.family == "towers" and self.patches:
            m = self.model
            return m.feature_map(pixel_values).flatten(2).transpose(1, 2)
        if self.family == "towers":
            return self.model.image_features(pixel_values)
        q = self.model.query_outputs(pixel_values)
        return q.mean(dim=1) if self.pool_queries else q

    def encode_text(self, **tokens) -> torch.Tensor:
        if self.family == "towers":
            return self.model.text_features(**tokens)
        return self.model.text_cls(**tokens)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        return encode_texts_batched(lambda batch: self.encode_text(**self.tokenize(batch)), texts, batch_size,
                                    progress, self.text_dim)


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
    ex = (model_or_extractor if isinstance(model_or_extractor, FrozenFeatureExtractor)
          else FrozenFeatureExtractor(model_or_extractor, pool_queries))
    t0 = time.perf_counter()
    fs = image_features(ex, manifest, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    keep = subset_ids(manifest, fs.image_ids)
    texts, t2i = texts_and_targets(keep)
    txt = text_features(ex, texts, batch_size=text_batch_size, cache_dir=cache_dir, progress=progress)
    return FrozenFeatures(fs.embeddings.float(), txt.float(), keep, texts, t2i, ex.describe(),
                          time.perf_counter() - t0, fs.from_cache)


def patch_features(model, feats: FrozenFeatures, cache_dir=None, batch_size: int = 32,
                   progress: bool = True) -> FrozenFeatures:
    """``feats`` with its image features replaced by the towers' 7x7 patch map ``(N, 49, 1280)`` (cached like
    every frozen feature); the captions and their text features are ``feats``' own (already cached)."""
    ex = FrozenFeatureExtractor(model, patches=True)
    t0 = time.perf_counter()
    fs = image_features(ex, feats.manifest, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    if list(fs.image_ids) != list(feats.manifest["image_id"]):
        raise ValueError("the patch map and the pooled features do not cover the same images")
    return FrozenFeatures(fs.embeddings.float(), feats.text, feats.manifest, feats.texts, feats.text_to_image,
                          ex.describe(), time.perf_counter() - t0, fs.from_cache)
