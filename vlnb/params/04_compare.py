"""Chapter 4: comparing CLIP, BLIP, BLIP-2 and ViLT (offline: the book's own trained models)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from ..config import EVAL_DATASETS, Datasets, Device, NotebookParams, register


@register("04_compare")
class CompareParams(NotebookParams):
    """Which models are evaluated on which data sets, and how."""

    #: Display name -> hub id or local folder (full profile; replaces/extends vlnb.zoo.HUB_MODELS, a name
    #: mapped to None is dropped). Offline: names of vlnb.zoo.RECIPES to evaluate (None: all of them).
    models: dict[str, Any] | None = None
    #: Data sets: offline "world" (the scratch model's test split), "coco-mini" (val2017), "cifar100";
    #: full "coco" (Karpathy 5k test), "flickr30k" (1k test), "cifar100".
    datasets: Datasets = ["world", "coco-mini", "cifar100"]
    #: Keep at most this many images per data set (None: all).
    max_images: int | None = Field(None, ge=1)
    #: Which dual encoder's ITC top-k a cross encoder without its own ITC (ViLT) re-ranks (offline: the
    #: scratch CLIP, whose similarities vilt-world was trained to re-rank; full: CLIP ViT-B/32).
    first_stage: str | None = "scratch-world"
    #: Candidates re-ranked per query by ITM heads / cross encoders: an int (0: no re-ranking), {data set: k},
    #: or "lavis": LAVIS's k_test per model and data set (BLIP 256 on COCO / 128 on Flickr30k, BLIP-2 128;
    #: others 128). Own ITM heads score ITM + ITC (LAVIS); a pure cross encoder (ViLT) its ITM score alone.
    rerank_k: Annotated[int, Field(ge=0)] | dict[str, Annotated[int, Field(ge=0)]] | Literal["lavis"] = 16
    #: Template set for COCO zero-shot ("openai_imagenet" 80, "openai_imagenet_7", "cifar" 18, "simple" 1);
    #: CIFAR-100 always uses the 18 CIFAR templates, the world its own.
    coco_templates: Literal["openai_imagenet", "openai_imagenet_7", "cifar", "simple"] = "openai_imagenet_7"
    #: Full-profile data locations.
    coco_root: str | None = None
    #: Karpathy split file, Karpathy's dataset_coco.json or LAVIS's coco_karpathy_test.json (full profile: the
    #: 5k test, fetched by `vlnb prepare coco --download`); "" evaluates on val2017 instead.
    coco_karpathy_split: str | None = None
    flickr30k_source: str | None = None
    cifar100_source: str | None = None
    pokemon_source: str | None = None
    #: Text→image top-K experiment (zero-shot models vs a trained BERT+CNN baseline) on this data set
    #: (full: "pokemon"); "" skips it. Any evaluation data set name works (e.g. "coco-mini").
    t2i_dataset: str | None = None
    t2i_test_fraction: float = Field(0.2, gt=0, lt=1)
    baseline_epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    #: Captions shown in each retrieval gallery.
    n_gallery: int = Field(4, ge=0)
    #: Where the chapter computes ("auto": CUDA when available, else CPU; "cpu", "cuda", "cuda:1"...).
    device: Device = "auto"
    #: Compositionality probe: world test images with grammar-checked foils (None: all 500).
    probe_max_images: int | None = Field(None, ge=1)
    #: ARO COCO-Order probe: at most this many captions (None: all of the order data set's captions).
    order_max_captions: int | None = Field(None, ge=1)
    #: Where the ARO COCO-Order probe reads its captions: "coco-mini" offline, "coco" (Karpathy test) full.
    order_dataset: str = "coco-mini"
    #: Offline: also evaluate NegCLIP (scratch-world fine-tuned with hard negatives) and its control.
    negclip: bool = True
    #: Gallery sizes of the query-cost table.
    cost_gallery_sizes: list[Annotated[int, Field(ge=1)]] = [100, 300, 1000, 3000, 5000]
    #: Bootstrap draws of the probes' confidence intervals.
    n_boot: int = Field(1000, ge=100)

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {
            "datasets": ["coco", "flickr30k", "cifar100"],
            "first_stage": "CLIP ViT-B/32",
            "rerank_k": "lavis",
            "coco_templates": "openai_imagenet",
            "coco_root": "data/coco",
            "coco_karpathy_split": "data/coco/coco_karpathy_test.json",
            "flickr30k_source": "nlphuji/flickr30k",
            "cifar100_source": "uoft-cs/cifar100",
            "pokemon_source": "reach-vb/pokemon-blip-captions",
            "t2i_dataset": "pokemon",
            "batch_size": 256,
            "order_dataset": "coco",
        }
    }

    @field_validator("order_dataset")
    @classmethod
    def _known_order_dataset(cls, v: str) -> str:
        if v not in EVAL_DATASETS:
            raise ValueError(f"unknown data set {v!r}; known: {', '.join(EVAL_DATASETS)}")
        return v

    @field_validator("t2i_dataset")
    @classmethod
    def _known_t2i_dataset(cls, v: str | None) -> str | None:
        if v and v not in EVAL_DATASETS:  # "" skips the experiment (None is the profile's default)
            raise ValueError(f"unknown data set {v!r}; known: {', '.join(EVAL_DATASETS)}")
        return v
