"""Parameters of chapter 5 (robustness to image corruptions)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from vlnb.config import Datasets, Device, Ks, NotebookParams, register

#: Every family the sweep knows (vlnb.robustness.perturbations.CORRUPTIONS) plus "occlusion", which
#: means occlusion_<occlusion> (the ``occlusion`` parameter picks random / centre / object).
_KNOWN = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "defocus_blur", "motion_blur",
    "brightness", "contrast", "saturate", "jpeg_compression", "pixelate", "occlusion_random", "occlusion_centre",
    "occlusion_object", "occlusion",
)


@register("05_robustness")
class RobustnessParams(NotebookParams):
    """Chapter 5: zero-shot accuracy and retrieval Recall@K under corruptions at severities 1-5."""

    #: offline: names of reference models (vlnb.zoo.RECIPES); full: display name -> hub id or local folder
    #: (replacing or adding to vlnb.zoo.HUB_MODELS; None drops one); a list keeps those names only.
    models: list[str] | dict[str, str | None] | None = None
    #: data sets each model is evaluated on: a list (every model on each) or {model: [data sets]}.
    #: offline names: world, coco-mini; full: coco, flickr30k (see vlnb.data.profiles.evaluation_manifest).
    datasets: Datasets = ["world", "coco-mini"]
    #: corruption families swept (split over several runs: `vlnb sweep` with a grid such as sweeps/robustness.yaml).
    corruptions: list[str] = [
        "shot_noise", "defocus_blur", "motion_blur", "jpeg_compression", "pixelate", "brightness", "contrast",
        "occlusion",
    ]
    #: severities (1-5; 0, the clean images, is always evaluated).
    severities: list[int] = [1, 3, 5]
    #: where the "occlusion" square goes: random, centre, or on the largest object (masks of the data set).
    occlusion: Literal["random", "centre", "object"] = "object"
    #: grey level of the occluding square, in [0, 1].
    occlusion_fill: float = 0.5
    #: images per data set (the first n of its test manifest): an int for all, or {data set: n}; a data
    #: set not in the mapping is used whole.
    n_images: int | dict[str, int] = {"world": 500}
    #: the re-rank subset: ITM heads and cross encoders score image x text pairs on at most the first this many
    #: images of a data set (with their captions), again in every cell.
    cross_max_images: int = 40
    #: chapter 4's re-rank protocol: ITM heads (BLIP-like, Q-Former) re-rank their own ITC top-k (ITM + ITC), a
    #: cross encoder (ViLT-like) the ITC top-k of ``first_stage`` (ITM alone), on the re-rank subset; 0: no
    #: re-ranking (a cross encoder then scores every pair of the subset).
    rerank_k: Annotated[int, Field(ge=0)] = 0
    #: the dual encoder whose ITC top-k a cross encoder without its own ITC re-ranks (chapter 4's ``first_stage``);
    #: also the reference the other models' drops are compared with on the same images (None: ``baseline``).
    first_stage: str | None = None
    #: template set of zero-shot classification on photo data sets (chapter 4's ``coco_templates``: "openai_imagenet"
    #: 80, "openai_imagenet_7", "cifar" 18, "simple" 1); the world uses its own prompts.
    coco_templates: Literal["openai_imagenet", "openai_imagenet_7", "cifar", "simple"] = "openai_imagenet_7"
    #: bootstrap draws (images redrawn) of the intervals of drops and differences.
    n_boot: int = Field(1000, ge=100)
    #: the model whose errors normalise the mCE (None: the first model).
    baseline: str | None = None
    #: spatial constants (blur sizes) are ImageNet-C's at this image side and scale with the input side.
    reference_size: int | None = Field(224, ge=1)
    #: Recall@K cut-offs.
    ks: Ks = [1, 5]
    #: images per encoder batch; None: 128 on CUDA, about 256k pixels on a CPU (see sweep.auto_batch_size).
    batch_size: int | None = None
    #: models evaluated side by side on a CPU, sharing its torch threads; None: sweep.auto_workers (one per
    #: thread, e.g. 2 with OMP_NUM_THREADS=2; 1 on a GPU).
    workers: int | None = Field(None, ge=1)
    #: Where the chapter computes ("auto": CUDA when available, else CPU; "cpu", "cuda", "cuda:1"...).
    device: Device = "auto"
    #: full profile: COCO root / Karpathy split / Flickr30k source (as chapter 1).
    coco_root: str | None = None
    coco_karpathy_split: str | None = None
    flickr30k_source: str | None = None
    #: feature cache folder (None: vlnb's cache); cells already computed are read back.
    cache_dir: str | None = None

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        # the fusion models of chapter 2 read the world's words only (chapter 4 does not evaluate them on COCO either)
        "offline": {"datasets": {"scratch-world": ["world", "coco-mini"], "towers-coco": ["coco-mini"],
                                 "blip-world": ["world"], "qformer-world": ["world"], "vilt-world": ["world"]},
                    "baseline": "towers-coco", "first_stage": "scratch-world", "rerank_k": 16},
        "full": {
            "datasets": ["coco", "flickr30k"],
            "corruptions": ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur",
                            "gaussian_blur", "brightness", "contrast", "saturate", "jpeg_compression", "pixelate",
                            "occlusion"],
            "severities": [1, 2, 3, 4, 5],
            "n_images": {"coco": 5000, "flickr30k": 1000},
            "cross_max_images": 100,
            "baseline": "CLIP ViT-B/32",
            "coco_templates": "openai_imagenet",  # chapter 4's full profile
            "coco_root": "data/coco",
            "coco_karpathy_split": "data/coco/coco_karpathy_test.json",
            "flickr30k_source": "nlphuji/flickr30k",
        },
    }

    @field_validator("corruptions")
    @classmethod
    def _known_corruptions(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in _KNOWN]
        if bad:
            raise ValueError(f"unknown corruption(s) {bad}; known: {', '.join(_KNOWN)}")
        if not v:
            raise ValueError("give at least one corruption")
        return v

    @field_validator("severities")
    @classmethod
    def _severity_range(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not 1 <= s <= 5]
        if bad or not v:
            raise ValueError(f"severities must be a non-empty list of ints in 1..5, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _ranges(self):
        if not 0 <= self.occlusion_fill <= 1:
            raise ValueError(f"occlusion_fill must be in [0, 1], got {self.occlusion_fill}")
        n = self.n_images.values() if isinstance(self.n_images, dict) else [self.n_images]
        if min(n, default=1) < 1 or self.cross_max_images < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise ValueError("n_images, cross_max_images and batch_size must be >= 1")
        return self

    def resolved_corruptions(self) -> list[str]:
        """``corruptions`` with ``"occlusion"`` replaced by ``occlusion_<occlusion>`` (order kept, no repeats)."""
        return list(dict.fromkeys(f"occlusion_{self.occlusion}" if c == "occlusion" else c for c in self.corruptions))
