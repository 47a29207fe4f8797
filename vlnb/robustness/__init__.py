"""Robustness of vision-language models to image corruptions (ImageNet-C style), measured in sweeps.

- :mod:`vlnb.robustness.perturbations` -- batched, seeded, device-agnostic perturbations applied to
  ``[0, 1]`` pixels before each model's normalisation (noise, blur, occlusion, ImageNet-C families);
- :mod:`vlnb.robustness.sweep` -- model x corruption x severity sweeps (text once, images per cell,
  feature-cached; ITM heads and cross encoders re-rank an ITC top-k as in chapter 4), one tidy results table and
  the hits of every image, mCE-style summaries;
- :mod:`vlnb.robustness.intervals` -- paired bootstrap intervals over images of drops, of differences between
  models and of the mCE;
- :mod:`vlnb.robustness.plots` -- example grids, metric-vs-severity curves, relative-robustness heatmap.
"""

from .perturbations import (
    CORRUPTIONS,
    SEVERITY_CONSTANTS,
    GaussianBlur,
    GaussianNoise,
    ObjectMasks,
    Occlusion,
    Perturbation,
    corruption,
)
from .sweep import (
    HITS_COLUMNS,
    RERANK_TASK,
    RESULT_COLUMNS,
    EvalTask,
    LabelSet,
    caption_task,
    make_task,
    monotonicity,
    run_sweep,
    summarize,
    world_task,
)

__all__ = [
    "CORRUPTIONS", "HITS_COLUMNS", "RERANK_TASK", "RESULT_COLUMNS", "SEVERITY_CONSTANTS", "EvalTask", "GaussianBlur", "GaussianNoise", "LabelSet",
    "ObjectMasks", "Occlusion", "Perturbation", "caption_task", "corruption", "make_task", "monotonicity",
    "run_sweep", "summarize", "world_task",
]
