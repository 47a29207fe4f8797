"""Chapter 2: training CLIP-style dual encoders (from scratch, and LiT-style over pretrained towers)."""

from __future__ import annotations

from typing import Any, ClassVar

from ..config import NotebookParams, register


@register("02_clip_training")
class ClipTrainingParams(NotebookParams):
    """Which reference recipes to train, and the two side experiments of the chapter."""

    #: Recipes of vlnb.zoo.RECIPES trained (or loaded) here; later chapters evaluate them.
    recipes: list[str] = ["scratch-world", "towers-coco"]
    #: Retrain even when a finished model of the same recipe exists in the artifacts folder.
    retrain: bool = False
    #: Redraw the learning curves after every epoch while training.
    live_plot: bool = True
    #: Text-encoder attention variants compared on a small world (empty list: skip the comparison).
    attention_variants: list[str] = ["self", "cross", "local"]
    variant_n_train: int = 600
    variant_n_test: int = 200
    variant_image_size: int = 32
    variant_epochs: int = 5
    #: Paired CIFAR-100 (two real CIFAR images side by side, caption naming both) with the text tower frozen.
    paired_cifar: bool = True
    paired_n_train: int = 600
    paired_n_test: int = 200
    paired_epochs: int = 6
    #: Also classify each test pair among all 9,900 ordered class-pair prompts (slow on a CPU).
    paired_classify: bool = False

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {
            "recipes": ["scratch-coco", "towers-coco-full"],
            "variant_n_train": 20000,
            "variant_n_test": 2000,
            "variant_image_size": 64,
            "variant_epochs": 20,
            "paired_n_train": 5000,
            "paired_n_test": 1000,
            "paired_epochs": 20,
            "paired_classify": True,
        }
    }
