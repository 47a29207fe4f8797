"""Parameters of chapter 6 (interpretability: attention maps and the pointing game)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from vlnb.config import Device, NotebookParams, register

_METHODS = ("cls_attention", "rollout_mean", "rollout_max", "chefer", "qformer_attention", "gradcam")


@register("06_interpretability")
class InterpretabilityParams(NotebookParams):
    """Chapter 6: attention maps (CLS, rollout, Chefer, Q-Former), Grad-CAM, entropy and the pointing game."""

    #: offline: reference model names (keys; values unused); full: display name -> hub id or local folder,
    #: replacing or adding to vlnb.zoo.HUB_MODELS (None drops a name). None = the profile's models.
    models: dict[str, str | None] | None = None
    #: images per data set for the pointing game (each gives up to 2 pairs)
    n_images: int = 80
    #: methods to run (those a model does not support are skipped); None = all of each model's
    methods: list[str] | None = None
    #: data sets for hub models (reference models always use their own training data)
    datasets: list[Literal["world", "coco"]] = Field(default_factory=lambda: ["world", "coco"])
    #: COCO folder with annotations/ and the split's images; None = the shared coco-mini (val2017)
    coco_root: str | None = None
    coco_split: str = "val2017"
    #: COCO objects must cover at least this share of the image
    min_area: float = 0.01
    #: examples per data set in the overlay figures
    n_overlays: int = 4
    #: methods shown in the overlays (None = all; the full profile shows three to keep the figure readable)
    overlay_methods: list[str] | None = None
    #: images whose attention entropy is measured, per model
    n_entropy: int = 8
    #: how maps are upsampled from the patch grid to the image
    upsample: Literal["bilinear", "nearest", "bicubic"] = "bilinear"
    #: pointing-game tolerance in pixels of the model input (Zhang et al. use 15 px at full resolution)
    tolerance: int = Field(0, ge=0)
    #: first layer Chefer's rule accumulates (0 = all layers, as in the paper)
    chefer_start_layer: int = Field(0, ge=0)
    #: bootstrap resamples (over images) for the intervals
    n_bootstrap: int = 1000
    batch_size: int = 16
    #: Where the chapter computes ("auto": CUDA when available, else CPU; "cpu", "cuda", "cuda:1"...).
    device: Device = "auto"
    progress: bool = True

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {"n_images": 500, "n_overlays": 6, "overlay_methods": ["rollout_mean", "chefer", "qformer_attention"], "n_entropy": 32, "coco_root": "data/coco", "coco_split": "val2014", "batch_size": 16},
    }

    @field_validator("methods", "overlay_methods")
    @classmethod
    def _known_methods(cls, v):
        if v is not None:
            bad = [m for m in v if m not in _METHODS]
            if bad:
                raise ValueError(f"unknown method(s) {bad}; choose from {list(_METHODS)}")
        return v

    @field_validator("n_images", "n_overlays", "n_entropy", "batch_size", "n_bootstrap")
    @classmethod
    def _positive(cls, v):
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v

    @field_validator("min_area")
    @classmethod
    def _share(cls, v):
        if not 0 <= v < 1:
            raise ValueError(f"must be in [0, 1), got {v}")
        return v
