"""Evaluation: retrieval Recall@K, cross-encoder re-ranking, zero-shot classification, a feature cache.

- :mod:`vlnb.eval.retrieval` -- exact, tie-pessimistic Recall@K in both directions (fast, chunked)
- :mod:`vlnb.eval.chance`    -- the exact chance level of Recall@K and zero-shot top-k (one definition for every chapter)
- :mod:`vlnb.eval.rerank`    -- re-rank a dual encoder's top-k with a cross encoder (LAVIS protocol)
- :mod:`vlnb.eval.zeroshot`  -- prompt-ensemble classifiers, top-k accuracy, mean per-class recall
- :mod:`vlnb.eval.templates` -- OpenAI's CLIP prompt templates (ImageNet 80, CIFAR 18)
- :mod:`vlnb.eval.features`  -- image/text embeddings cached on disk, keyed by weights + data + preprocessing
- :mod:`vlnb.eval.bootstrap` -- bootstrap intervals of any statistic, of Recall@K and of paired differences
- :mod:`vlnb.eval.compare`   -- any model on any manifest: retrieval (+ re-ranking) and zero-shot rows with protocols
- :mod:`vlnb.eval.published` -- published reference numbers (literature values) with their protocols
- :mod:`vlnb.eval.compositionality` -- the caption-vs-foil probe; :mod:`vlnb.eval.ambiguity` -- the world
  captions' ambiguity ceiling; :mod:`vlnb.eval.cost`, :mod:`vlnb.eval.protocol_cost` -- what a model and a
  protocol cost
"""

from ..data.classnames import CIFAR100_CLASSNAMES
from .chance import manifest_recall_chance, recall_chance, recall_chance_from_counts, zeroshot_chance
from .features import FeatureSet, image_features, text_features
from .rerank import rerank_similarity, reranked_recall
from .retrieval import (
    mean_rank,
    median_rank,
    recall_at_k,
    recall_from_ranks,
    retrieval_ranks,
    retrieval_table,
)
from .templates import (
    CIFAR_TEMPLATES,
    OPENAI_IMAGENET_TEMPLATES,
    SIMPLE_TEMPLATES,
    get_templates,
)
from .zeroshot import (
    classification_metrics,
    multilabel_targets,
    primary_targets,
    zeroshot_classifier,
    zeroshot_scores,
)

__all__ = [
    "CIFAR100_CLASSNAMES",
    "CIFAR_TEMPLATES",
    "OPENAI_IMAGENET_TEMPLATES",
    "SIMPLE_TEMPLATES",
    "FeatureSet",
    "classification_metrics",
    "get_templates",
    "image_features",
    "manifest_recall_chance",
    "mean_rank",
    "median_rank",
    "multilabel_targets",
    "primary_targets",
    "recall_at_k",
    "recall_chance",
    "recall_chance_from_counts",
    "recall_from_ranks",
    "rerank_similarity",
    "reranked_recall",
    "retrieval_ranks",
    "retrieval_table",
    "text_features",
    "zeroshot_chance",
    "zeroshot_classifier",
    "zeroshot_scores",
]
