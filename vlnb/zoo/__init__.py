"""Which models each profile evaluates, and the reference models chapter 2 trains for the offline profile.

Chapters never hard-code checkpoints. They ask this module:

* :func:`profile_models` — ``{display name: model}`` for a profile. ``full``: the hub checkpoints of
  :data:`HUB_MODELS` (``models=`` swaps any of them, e.g. tiny local checkpoints in tests). ``offline``:
  the reference models of :data:`RECIPES`, trained by chapter 2 and saved under :func:`artifacts_dir`.
* :func:`reference_model` — one reference model, loaded from its artifact folder; when the folder is
  missing (a chapter run on its own) it is trained first with its recipe, so every chapter runs alone.
* :func:`reference_data` — the train / test manifests a recipe trains and evaluates on.

The artifact folder holds ``model/`` (the model's own ``save`` format, safetensors), ``history.json``
(per-epoch metrics) and ``recipe.json`` (what was trained, for provenance). A recipe change (different
config) retrains instead of silently loading a stale model.

Its modules: :mod:`~vlnb.zoo.recipes` (the registry), :mod:`~vlnb.zoo.data` (a recipe's manifests),
:mod:`~vlnb.zoo.train` (training a recipe), :mod:`~vlnb.zoo.load` (loading, or training when missing). The names
below are re-exported here: ``from vlnb import zoo; zoo.reference_model(...)``.
"""

from .data import reference_data
from .load import (
    chapter_models,
    is_trained,
    profile_models,
    reference_history,
    reference_model,
    train_or_load,
)
from .recipes import HUB_MODELS, PROFILE_RECIPES, RECIPES, Recipe, artifacts_dir, is_cross_recipe, recipe
from .train import build_model, side_by_side_jobs, train_reference, train_side_by_side

__all__ = [
    "HUB_MODELS", "PROFILE_RECIPES", "RECIPES", "Recipe", "artifacts_dir", "build_model", "chapter_models",
    "is_cross_recipe", "is_trained", "profile_models", "recipe", "reference_data", "reference_history",
    "reference_model", "side_by_side_jobs", "train_or_load", "train_reference", "train_side_by_side",
]
