"""The registry: the hub models of the full profile and the recipes of the reference models the book trains."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.world import REFERENCE_WORLD
from ..paths import cache_dir

#: Full profile: display name -> hub id. Dual encoders first; ViLT is a cross encoder (it re-ranks). BLIP-2 is
#: the COCO-fine-tuned ViT-g (364 px, its own processor): the checkpoint the BLIP-2 paper's retrieval numbers
#: belong to (chapter 3 keeps the pretrained ``Salesforce/blip2-itm-vit-g`` for its heads).
HUB_MODELS: dict[str, str] = {
    "CLIP ViT-B/32": "openai/clip-vit-base-patch32",
    "BLIP ITM (COCO)": "Salesforce/blip-itm-base-coco",
    "BLIP-2 ITM (ViT-g, COCO)": "Salesforce/blip2-itm-vit-g-coco",
    "ViLT (COCO)": "dandelin/vilt-b32-finetuned-coco",
}


@dataclass(frozen=True)
class Recipe:
    """How an offline reference model is built and trained (everything that changes its weights)."""

    name: str
    kind: str  #: "scratch" (ScratchDualEncoder), "towers" (TowersDualEncoder) or "fusion" (vlnb.models.fusion)
    data: str  #: "world" or "coco-mini"
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    data_kwargs: dict = field(default_factory=dict)
    description: str = ""
    #: Extra text negatives in every batch: "" none; "world-swaps" NegCLIP's composition-aware foils from the
    #: world's grammar (:class:`vlnb.train.negclip.WorldFoilPairs`).
    negatives: str = ""
    #: Start from another recipe's trained weights (and tokenizer) instead of a fresh model: a fine-tune.
    init_from: str = ""
    #: Fusion models: the trained recipe they build on (ViLT-like: the dual encoder its hard negatives are mined
    #: from and that it re-ranks; Q-Former: the frozen image tower). Changing that recipe retrains this one.
    uses: str = ""
    #: Seconds the training takes with one thread on a 2-core CPU, its final evaluation included (measured:
    #: ``epoch_time_s`` and the timing log of a cold offline book). Only the order in which models trained side
    #: by side start depends on it: the longest first (:func:`vlnb.zoo.train_side_by_side`). A wrong value costs
    #: time, never changes the weights; it is not part of :meth:`key`.
    cost: float = 0.0

    def key(self) -> dict:
        """What identifies the trained weights (empty ``negatives`` / ``init_from`` are left out, so older
        recipes keep their keys; a parent recipe's own key is nested, so changing it retrains the child)."""
        key = {k: v for k, v in asdict(self).items()
               if k not in ("description", "cost") and not (k in ("negatives", "init_from", "uses") and not v)}
        if self.init_from:
            key["init_from"] = {"name": self.init_from, **recipe(self.init_from).key()}
        if self.uses:
            key["uses"] = {"name": self.uses, **recipe(self.uses).key()}
        return key


RECIPES: dict[str, Recipe] = {
    "scratch-world": Recipe(
        name="scratch-world",
        kind="scratch",
        data="world",
        model={"config": "tiny", "seed": 0},
        # validation retrieval every 3rd epoch (and the last): the same weights and final numbers as every epoch
        # (tests/test_book_time.py), 10 fewer evaluations of 500 images x 2,500 captions
        train={"epochs": 15, "batch_size": 64, "lr": 1e-3, "warmup_steps": 30, "seed": 0, "eval_every": 3},
        data_kwargs=dict(REFERENCE_WORLD),
        cost=150,
        description="from-scratch ViT + text transformer (tiny preset), trained on the offline world",
    ),
    # NegCLIP (Yuksekgonul et al. 2023) fine-tunes a trained CLIP with composition-aware hard negatives; here:
    # scratch-world's weights, a few more epochs on the same data with each caption's grammar-checked swap foil
    # as an extra text negative. "scratch-world-ft" is the control: the same fine-tune without the foils.
    "negclip-world": Recipe(
        name="negclip-world",
        kind="scratch",
        data="world",
        model={"config": "tiny", "seed": 0},
        train={"epochs": 2, "batch_size": 64, "lr": 1e-3, "warmup_steps": 10, "eval_every": 2, "seed": 1},
        data_kwargs=dict(REFERENCE_WORLD),
        negatives="world-swaps",
        init_from="scratch-world",
        cost=21,
        description="scratch-world fine-tuned with NegCLIP's hard negatives: each caption's grammar-checked swap "
        "foil (relation arguments, or two phrases' colours/sizes) as an extra text negative",
    ),
    "scratch-world-ft": Recipe(
        name="scratch-world-ft",
        kind="scratch",
        data="world",
        model={"config": "tiny", "seed": 0},
        train={"epochs": 2, "batch_size": 64, "lr": 1e-3, "warmup_steps": 10, "eval_every": 2, "seed": 1},
        data_kwargs=dict(REFERENCE_WORLD),
        init_from="scratch-world",
        cost=19,
        description="control for negclip-world: scratch-world fine-tuned the same way without the hard negatives",
    ),
    # fusion encoders from scratch (vlnb.models.fusion, trained by vlnb.train.itm) on the same world split; sized
    # so that the three together add <= 2 minutes to the offline book on 2 CPU cores
    "vilt-world": Recipe(
        name="vilt-world",
        kind="fusion",
        data="world",
        model={"arch": "vilt", "image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "heads": 4, "seed": 0},
        train={"epochs": 4, "batch_size": 64, "lr": 1e-3, "warmup_steps": 20, "seed": 0},
        data_kwargs=dict(REFERENCE_WORLD),
        uses="scratch-world",
        cost=33,
        description="ViLT-like single-stream transformer over word + patch tokens with an ITM head, trained on "
        "hard negatives mined from scratch-world's similarities; retrieval re-ranks scratch-world's top-k",
    ),
    "blip-world": Recipe(
        name="blip-world",
        kind="fusion",
        data="world",
        model={"arch": "blip", "image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "text_layers": 2,
               "heads": 4, "embed_dim": 64, "seed": 0},
        train={"epochs": 10, "batch_size": 64, "lr": 2e-3, "warmup_steps": 30, "seed": 0},
        data_kwargs=dict(REFERENCE_WORLD),
        cost=50,
        description="BLIP-like (ALBEF-style): ITC dual encoder + image-grounded text encoder (cross-attention to "
        "patch tokens) with an ITM head, trained jointly on its own hard negatives",
    ),
    "qformer-world": Recipe(
        name="qformer-world",
        kind="fusion",
        data="world",
        model={"arch": "qformer", "width": 64, "layers": 2, "heads": 4, "embed_dim": 64, "n_queries": 8, "seed": 0},
        train={"epochs": 6, "batch_size": 64, "lr": 1e-3, "warmup_steps": 20, "seed": 0},
        data_kwargs=dict(REFERENCE_WORLD),
        uses="scratch-world",
        cost=53,
        description="BLIP-2-like Q-Former: learned queries over scratch-world's frozen ViT patch tokens, ITC (max "
        "over queries) + ITM",
    ),
    "towers-coco": Recipe(
        name="towers-coco",
        kind="towers",
        data="coco-mini",
        model={"embed_dim": 256, "head": "linear", "freeze_towers": True},
        train={"epochs": 10, "batch_size": 40, "lr": 1e-3, "warmup_steps": 4, "weight_decay": 0.1, "eval_every": 2,
               "seed": 0},
        cost=13,
        description="frozen EfficientNet-Lite0 + all-MiniLM-L6-v2 with linear heads (LiT-style), trained on "
        "coco-mini train2017",
    ),
    # full profile (GPU): the same two recipes at COCO scale, Karpathy train+restval -> 5k test
    "scratch-coco": Recipe(
        name="scratch-coco",
        kind="scratch",
        data="coco",
        # the tokenizer comes from the hub id (a Colab clone has no ../shared/data)
        model={"config": "vit_b32", "seed": 0, "tokenizer": "openai/clip-vit-base-patch32"},
        train={"epochs": 30, "batch_size": 256, "lr": 5e-4, "warmup_steps": 500, "seed": 0},
        data_kwargs={"root": "data/coco", "karpathy_split": "data/coco/dataset_coco.json"},
        description="from-scratch ViT-B/32-like dual encoder with CLIP's BPE tokenizer, trained on COCO (GPU)",
    ),
    "towers-coco-full": Recipe(
        name="towers-coco-full",
        kind="towers",
        data="coco",
        model={"embed_dim": 256, "head": "mlp", "freeze_towers": True},
        train={"epochs": 10, "batch_size": 256, "lr": 1e-3, "warmup_steps": 200, "weight_decay": 0.1, "seed": 0},
        data_kwargs={"root": "data/coco", "karpathy_split": "data/coco/dataset_coco.json"},
        description="frozen EfficientNet-Lite0 + all-MiniLM-L6-v2 with MLP heads, trained on COCO (GPU)",
    ),
}

#: Which recipes each profile's chapters use.
PROFILE_RECIPES = {
    "offline": ("scratch-world", "towers-coco", "vilt-world", "blip-world", "qformer-world"),
    "full": ("scratch-coco", "towers-coco-full"),
}


def artifacts_dir(profile: str = "offline") -> Path:
    """Where reference models live: ``$VLNB_ARTIFACTS`` or ``<cache>/artifacts/<profile>``."""
    env = os.environ.get("VLNB_ARTIFACTS")
    return Path(env) / profile if env else cache_dir() / "artifacts" / profile


def recipe(name: str) -> Recipe:
    """The recipe ``name`` of :data:`RECIPES`; an unknown name is a ``KeyError`` naming the known ones."""
    if name not in RECIPES:
        raise KeyError(f"unknown reference model {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]


def is_cross_recipe(name: str) -> bool:
    """True for a recipe whose model is a cross encoder (no embeddings of its own: the ViLT-like fusion model)."""
    r = recipe(name)
    return r.kind == "fusion" and r.model.get("arch") == "vilt"
