"""Chapter 3 parameters: projection heads on frozen BLIP-2 / towers features."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from vlnb.config import Device, NotebookParams, register


@register("03_blip2_heads")
class Blip2HeadsParams(NotebookParams):
    """Chapter 3: linear vs MLP projection heads on frozen features, against the pretrained heads."""

    #: Display name -> model. offline: a reference model of vlnb.zoo (its towers give the frozen features,
    #: its trained heads are the "pretrained head" baseline); full: a BLIP-2 ITM hub id or local folder.
    models: dict[str, str] | None = None
    #: Data sets: offline "coco-mini" (train2017 -> val2017) and "world"; full "flickr30k" (Karpathy train
    #: subset -> 1k test). "coco-mini" and "world" also run under the full profile.
    datasets: list[Literal["coco-mini", "world", "flickr30k"]] | None = None
    #: Flickr30k source (hub id, save_to_disk folder or parquet), full profile.
    flickr30k_source: str | None = None
    #: Training images per data set (each gives one (image, caption) pair per epoch, caption drawn anew).
    n_train_pairs: int = Field(300, ge=2)
    #: Test images per data set (None: the whole test split).
    n_test_images: int | None = Field(150, ge=2)
    #: Head kinds and the seeds each is trained with (>= 3 seeds for a spread).
    heads: list[Literal["linear", "mlp"]] = Field(["linear", "mlp"], min_length=1)
    seeds: list[Annotated[int, Field(ge=0)]] = Field([0, 1, 2], min_length=1)
    #: Output size of both heads; the MLP's hidden width (None: 2 x embed_dim).
    embed_dim: int = Field(256, ge=1)
    hidden_dim: int | None = Field(None, ge=1)
    #: Data sets on which a small Q-Former (learned queries cross-attending to EfficientNet-Lite0's 7x7 feature
    #: map, max over queries) is trained beside the heads (towers only; its patch cache is 49x the pooled one),
    #: with its number of queries, width and depth.
    qformer_datasets: list[Literal["coco-mini", "world"]] = ["coco-mini"]
    qformer_queries: int = Field(8, ge=1)
    qformer_width: int = Field(128, ge=4, multiple_of=4)  # (4 attention heads)
    qformer_layers: int = Field(2, ge=1)
    #: The contrastive trainer's schedule (same for every head; see vlnb.train.TrainConfig).
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(40, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(4, ge=0)
    #: ITC top-k re-ranked by the ITM head (models with one; 0 = skip). Cost: (images + texts) x k ITM
    #: forward passes, each of which re-runs the image tower in vlnb.eval.rerank (LAVIS uses k = 128).
    k_rerank: int = Field(16, ge=0)
    #: Bootstrap draws and interval level for R@K.
    n_bootstrap: int = Field(1000, ge=10)
    ci_level: float = Field(0.95, gt=0, lt=1)
    #: Text queries shown in the retrieval gallery.
    n_gallery: int = Field(3, ge=1)
    #: Images per batch when extracting frozen features.
    feature_batch_size: int = Field(32, ge=1)
    #: Where the chapter computes ("auto": CUDA when available, else CPU; "cpu", "cuda", "cuda:1"...).
    device: Device = "auto"

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "offline": {
            "models": {"towers-coco": "towers-coco"},
            "datasets": ["coco-mini", "world"],
        },
        "full": {
            "models": {"BLIP-2 ITM (ViT-g)": "Salesforce/blip2-itm-vit-g"},
            "datasets": ["flickr30k"],
            "qformer_datasets": [],
            "flickr30k_source": "nlphuji/flickr30k",
            "n_train_pairs": 5000,
            "n_test_images": None,
            "seeds": [0, 1, 2, 3, 4],
            "epochs": 10,
            "batch_size": 256,
            "lr": 5e-4,
            "warmup_steps": 20,
            "k_rerank": 16,
            "feature_batch_size": 64,
        },
    }
