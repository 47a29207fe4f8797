"""Projection heads on frozen features (chapter 3): what a linear or a small MLP head can and cannot add.

The experiment, in the order :func:`run_heads` does it (modules: :mod:`~vlnb.heads.features`,
:mod:`~vlnb.heads.model`, :mod:`~vlnb.heads.geometry`, :mod:`~vlnb.heads.experiment`, :mod:`~vlnb.heads.report`,
:mod:`~vlnb.heads.plots`):

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

3. **Heads** (``"linear"``, or ``"mlp"`` = Linear -> GELU -> Linear with the same output size) and, for the
   towers, a small BLIP-2-like **Q-Former** (:class:`QFormerHeads`: learned queries cross-attending to the cached
   7x7 EfficientNet-Lite0 patch map, max over queries, :func:`patch_features`); the heads are one per
   tower, trained by the book's contrastive trainer :func:`vlnb.train.train_contrastive` with the CLIP loss,
   schedule and learnable temperature of chapter 2: :class:`HeadsDualEncoder` is a dual encoder whose
   "pixels" are cached image-feature vectors and whose :meth:`~HeadsDualEncoder.tokenize` maps a caption to
   its row of a cached text-feature table. Several seeds per head (initialisation and data order).

4. **Evaluation.** Recall@K in both directions with bootstrap intervals over test images
   (:func:`vlnb.eval.bootstrap.bootstrap_recall`), the spread over seeds, paired differences, the
   alignment and uniformity of the embeddings (Wang & Isola 2020) and their PCA before/after the heads.

Methods are :class:`Method` values (their value is the label tables and figures show). The prose numbers
and markdown summary: :mod:`~vlnb.heads.report`. Figures (:mod:`~vlnb.heads.plots`): :func:`recall_bars`,
:func:`geometry_plot`, :func:`pca_plot`, :func:`gallery_plot`.
"""

from .experiment import HeadsExperiment, Method, MethodRun, heads_data, load_backbones, run_heads
from .features import (
    FEATURE_FAMILIES,
    FrozenFeatureExtractor,
    FrozenFeatures,
    extract_frozen_features,
    patch_features,
)
from .geometry import alignment, geometry, paired_embeddings, uniformity
from .model import (
    HEAD_KINDS,
    FeaturePairs,
    HeadsDualEncoder,
    QFormerHeads,
    head_embeddings,
    pretrained_embeddings,
    similarity,
    train_head,
    train_qformer,
)
from .plots import gallery_plot, geometry_plot, method_order, pca_plot, recall_bars
from .report import (
    COMPARISONS,
    features_table,
    final_epochs,
    fmt_ci,
    geometry_numbers,
    geometry_summary,
    paired_differences,
    prose_numbers,
    r1_table,
    results_markdown,
)

__all__ = [
    "COMPARISONS",
    "FEATURE_FAMILIES",
    "HEAD_KINDS",
    "FeaturePairs",
    "FrozenFeatureExtractor",
    "FrozenFeatures",
    "HeadsDualEncoder",
    "HeadsExperiment",
    "Method",
    "MethodRun",
    "QFormerHeads",
    "alignment",
    "extract_frozen_features",
    "features_table",
    "final_epochs",
    "fmt_ci",
    "gallery_plot",
    "geometry",
    "geometry_numbers",
    "geometry_plot",
    "geometry_summary",
    "head_embeddings",
    "heads_data",
    "load_backbones",
    "method_order",
    "paired_differences",
    "paired_embeddings",
    "patch_features",
    "pca_plot",
    "pretrained_embeddings",
    "prose_numbers",
    "r1_table",
    "recall_bars",
    "results_markdown",
    "run_heads",
    "similarity",
    "train_head",
    "train_qformer",
    "uniformity",
]
