"""Chapter 4: comparing CLIP, BLIP, BLIP-2 and ViLT (offline: the book's own trained models)."""

from __future__ import annotations

from typing import Any, ClassVar

from ..config import NotebookParams, register


@register("04_compare")
class CompareParams(NotebookParams):
    """Which models are evaluated on which data sets, and how."""

    #: Display name -> hub id or local folder (full profile; replaces/extends vlnb.zoo.HUB_MODELS, a name
    #: mapped to None is dropped). Offline: names of vlnb.zoo.RECIPES to evaluate (None: all of them).
    models: dict[str, Any] | None = None
    #: Data sets: offline "world" (the scratch model's test split), "coco-mini" (val2017), "cifar100";
    #: full "coco" (Karpathy 5k test), "flickr30k" (1k test), "cifar100".
    datasets: list[str] = ["world", "coco-mini", "cifar100"]
    #: Keep at most this many images per data set (None: all).
    max_images: int | None = None
    #: Which dual encoder's ITC top-k a cross encoder without its own ITC (ViLT) re-ranks.
    first_stage: str | None = None
    #: Candidates re-ranked per query by ITM heads / cross encoders (LAVIS: 256 COCO, 128 Flickr30k).
    rerank_k: int = 16
    #: Template set for COCO zero-shot ("openai_imagenet" 80, "openai_imagenet_7", "cifar" 18, "simple" 1);
    #: CIFAR-100 always uses the 18 CIFAR templates, the world its own.
    coco_templates: str = "openai_imagenet_7"
    #: Full-profile data locations.
    coco_root: str | None = None
    #: Karpathy's dataset_coco.json (full profile: its 5k test split); "" evaluates on val2017 instead.
    coco_karpathy_split: str | None = None
    flickr30k_source: str | None = None
    cifar100_source: str | None = None
    pokemon_source: str | None = None
    #: Text→image top-K experiment (zero-shot models vs a trained BERT+CNN baseline) on this data set
    #: (full: "pokemon"); None skips it. Any evaluation data set name works (e.g. "coco-mini").
    t2i_dataset: str | None = None
    t2i_test_fraction: float = 0.2
    baseline_epochs: int = 10
    batch_size: int = 64
    #: Captions shown in each retrieval gallery.
    n_gallery: int = 4

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {
            "datasets": ["coco", "flickr30k", "cifar100"],
            "first_stage": "CLIP ViT-B/32",
            "rerank_k": 128,
            "coco_templates": "openai_imagenet",
            "coco_root": "data/coco",
            "coco_karpathy_split": "data/coco/dataset_coco.json",
            "flickr30k_source": "nlphuji/flickr30k",
            "cifar100_source": "uoft-cs/cifar100",
            "pokemon_source": "reach-vb/pokemon-blip-captions",
            "t2i_dataset": "pokemon",
            "batch_size": 256,
        }
    }
