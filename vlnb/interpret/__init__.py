"""Interpretability: attention maps whose provenance is certain, and a way to check where they point.

- :mod:`~vlnb.interpret.trace` -- record a model's attention while its own encode/score code runs, with the
  true patch grid asserted (ViLT's shuffled image tokens put back in place);
- :mod:`~vlnb.interpret.maps` -- rollout, Chefer relevancy, entropy, grid/normalise/upsample (pure tensors);
- :mod:`~vlnb.interpret.explain` -- :func:`explain`: every method of every family (Grad-CAM for the CNN towers);
- :mod:`~vlnb.interpret.pointing` -- object masks in the model's frame and the (energy) pointing game;
- :mod:`~vlnb.interpret.plots` -- overlays and entropy figures.
"""

from .explain import (
    GRAD_METHODS,
    METHODS,
    Saliency,
    attention_grid_maps,
    cnn_grid,
    entropy_table,
    explain,
    gradcam,
    supported_methods,
)
from .maps import (
    attention_entropy,
    chefer_bimodal,
    chefer_relevance,
    fuse_heads,
    handle_residual,
    normalise_maps,
    rollout,
    tokens_to_grid,
    upsample_maps,
)
from .trace import ATTENTION_FAMILIES, AttentionTrace, backprop, trace_attention

__all__ = [
    "ATTENTION_FAMILIES",
    "GRAD_METHODS",
    "METHODS",
    "AttentionTrace",
    "Saliency",
    "attention_entropy",
    "attention_grid_maps",
    "backprop",
    "chefer_bimodal",
    "chefer_relevance",
    "cnn_grid",
    "entropy_table",
    "explain",
    "fuse_heads",
    "gradcam",
    "handle_residual",
    "normalise_maps",
    "rollout",
    "supported_methods",
    "tokens_to_grid",
    "trace_attention",
    "upsample_maps",
]
