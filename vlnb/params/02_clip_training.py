"""Chapter 2: training CLIP-style dual encoders (from scratch, and LiT-style over pretrained towers)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ..config import Device, NotebookParams, check_recipes, register


@register("02_clip_training")
class ClipTrainingParams(NotebookParams):
    """Which reference recipes to train, and the two side experiments of the chapter."""

    #: Recipes of vlnb.zoo.RECIPES trained (or loaded) here; later chapters evaluate them.
    recipes: list[str] = ["scratch-world", "towers-coco"]
    #: Retrain even when a finished model of the same recipe exists in the artifacts folder.
    retrain: bool = False
    #: Redraw the learning curves after every epoch while training (interactive sessions; a batch run,
    #: `vlnb run` / `vlnb book`, skips the redraws nobody watches: vlnb.train.plots.live_plot).
    live_plot: bool = True
    #: Fusion encoders trained from scratch here (vlnb.zoo.RECIPES of kind "fusion": ViLT-, BLIP-, BLIP-2-like).
    fusion_recipes: list[str] = ["vilt-world", "blip-world", "qformer-world"]
    #: Recipes of later chapters trained with this chapter's (when missing, or retrain) but not shown here:
    #: chapter 4's NegCLIP fine-tune and its control. Side by side on a CPU they fill the cores that would wait
    #: while scratch-world trains; else chapter 4 trains them when it first loads them.
    train_ahead: list[str] = ["negclip-world", "scratch-world-ft"]
    #: Text-encoder attention variants compared on a small world (empty list: skip the comparison).
    #: "memory" = learned memory slots (a dual encoder still); "cross" = text layers cross-attending to the image's
    #: patches (a BLIP-like fusion encoder, re-ranking its ITC top-k with its ITM head).
    attention_variants: list[Literal["self", "memory", "cross", "local"]] = ["self", "memory", "cross", "local"]
    variant_n_train: int = Field(600, ge=2)
    variant_n_test: int = Field(200, ge=2)
    #: Side of the small world's images in pixels, and the variants' model input (tiny preset: 8-px patches, so a
    #: multiple of 8; 32 -> a 4x4 grid of patches).
    variant_image_size: int = Field(32, ge=24, multiple_of=8)
    variant_epochs: int = Field(5, ge=1)
    #: Training seeds per variant (initialisation and data order): the table reports means with intervals.
    variant_seeds: list[int] = [0, 1, 2]
    #: Linear-warmup steps of the variants' schedule; it must fit in the run (vlnb.train.schedule).
    variant_warmup_steps: int = Field(5, ge=0)
    #: Pairs per batch of the variants (each sample is contrasted with batch - 1 negatives).
    variant_batch_size: int = Field(64, ge=2)
    #: Variant runs trained side by side on a CPU, one thread each (None: one per core; 1: one at a time with
    #: every core; a GPU always trains one at a time). The costs table then times one-thread runs.
    variant_jobs: int | None = Field(None, ge=1)
    #: Paired CIFAR-100 (two real CIFAR images side by side, caption naming both) with the text tower frozen.
    paired_cifar: bool = True
    paired_n_train: int = Field(600, ge=2)
    paired_n_test: int = Field(200, ge=2)
    paired_epochs: int = Field(6, ge=1)
    #: Also classify each test pair among all 9,900 ordered class-pair prompts (slow on a CPU).
    paired_classify: bool = False
    #: CIFAR-100 the pairs are made from: None = the 916 shared offline test images; a hub id (full profile:
    #: "uoft-cs/cifar100", its test split) or a local npz / parquet / save_to_disk copy.
    paired_source: str | None = None
    #: Where the chapter computes ("auto": CUDA when available, else CPU; "cpu", "cuda", "cuda:1"...).
    device: Device = "auto"

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {
            "fusion_recipes": [],  # world-sized CPU models; the full profile evaluates the hub's BLIP/BLIP-2/ViLT
            "train_ahead": [],
            "recipes": ["scratch-coco", "towers-coco-full"],
            "variant_n_train": 20000,
            "variant_n_test": 2000,
            "variant_image_size": 64,
            "variant_epochs": 20,
            "variant_warmup_steps": 200,
            "paired_n_train": 5000,
            "paired_n_test": 1000,
            "paired_epochs": 20,
            "paired_classify": True,
            "paired_source": "uoft-cs/cifar100",
        }
    }

    @field_validator("recipes", "fusion_recipes", "train_ahead")
    @classmethod
    def _known_recipes(cls, v: list[str]) -> list[str]:
        check_recipes(v, "recipe")
        return v
