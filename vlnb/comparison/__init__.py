"""Chapter 4, the model comparison: every model on every data set, with protocols, chance and published numbers.

- :mod:`vlnb.comparison.experiment` -- :func:`run_comparison` (the chapter loop: retrieval, re-ranking,
  zero-shot, coverage) and :func:`text_to_image_experiment` (a trained BERT + CNN baseline against zero-shot models)
- :mod:`vlnb.comparison.report`     -- the chapter's tables and the numbers its prose quotes

The metrics themselves (one model on one manifest) are :mod:`vlnb.eval.compare`'s.
"""

from .experiment import run_comparison, split_manifest, text_to_image_experiment

__all__ = ["run_comparison", "split_manifest", "text_to_image_experiment"]
