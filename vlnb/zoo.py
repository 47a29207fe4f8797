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
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from .data.manifest import subset
from .data.world import REFERENCE_WORLD
from .paths import atomic_write_text, cache_dir

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

    def key(self) -> dict:
        """What identifies the trained weights (empty ``negatives`` / ``init_from`` are left out, so older
        recipes keep their keys; a parent recipe's own key is nested, so changing it retrains the child)."""
        key = {k: v for k, v in asdict(self).items()
               if k != "description" and not (k in ("negatives", "init_from", "uses") and not v)}
        if self.init_from:
            key["init_from"] = {"name": self.init_from, **_recipe(self.init_from).key()}
        if self.uses:
            key["uses"] = {"name": self.uses, **_recipe(self.uses).key()}
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


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown reference model {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]


def reference_data(name: str, **data_overrides) -> dict[str, pd.DataFrame]:
    """``{"train": manifest, "test": manifest}`` of recipe ``name`` (bad images already dropped)."""
    from .data import build_manifest

    r = _recipe(name)
    if r.data == "world":
        df, _ = build_manifest("world", **{**r.data_kwargs, **data_overrides})
        return {s: subset(df, (df["split"] == s).to_numpy()) for s in ("train", "test")}
    if r.data == "coco-mini":
        train, _ = build_manifest("coco", split="train2017", **data_overrides)
        test, _ = build_manifest("coco", split="val2017", **data_overrides)
        return {"train": train, "test": test}
    if r.data == "coco":
        from .data.profiles import coco_source

        kw = {**r.data_kwargs, **data_overrides}
        root, ks = kw.pop("root"), kw.pop("karpathy_split")
        train, _ = build_manifest("coco", **coco_source(root, ks, subset=("train", "restval")), **kw)
        test, _ = build_manifest("coco", **coco_source(root, ks, subset="test"), **kw)
        return {"train": train, "test": test}
    raise ValueError(f"recipe {name!r}: unknown data {r.data!r}")


def _build(r: Recipe, train: pd.DataFrame):
    if r.kind == "scratch":
        from .models.scratch import ScratchDualEncoder, clip_tokenizer

        kw = dict(r.model)
        config = kw.pop("config", "tiny")
        tok = kw.pop("tokenizer", None)  # a hub id / folder of a CLIP tokenizer (None: the preset's default)
        captions = [c for caps in train["captions"] for c in caps]
        return ScratchDualEncoder.create(config, captions=captions, name=r.name,
                                         tokenizer=clip_tokenizer(tok) if tok else None, **kw)
    if r.kind == "towers":
        from .models.towers import TowersDualEncoder

        return TowersDualEncoder(name=r.name, **r.model)
    raise ValueError(f"recipe {r.name!r}: unknown kind {r.kind!r}")


def _load_saved(r: Recipe, folder: Path, device="auto"):
    from safetensors import SafetensorError

    from .errors import ArtifactError
    from .models import load_model

    try:
        return load_model(str(folder / "model"), family=r.kind, device=device)
    except ArtifactError:
        raise
    except (SafetensorError, UnicodeDecodeError, ValueError, KeyError) as e:  # a loader that names no file
        raise ArtifactError(f"{folder / 'model'}: cannot load the saved model ({type(e).__name__}: "
                            f"{str(e)[:300]})") from None


def train_reference(
    name: str,
    profile: str = "offline",
    progress: bool = True,
    on_epoch_end: Callable | None = None,
    folder: str | os.PathLike | None = None,
    device: str = "auto",
):
    """Train reference model ``name`` with its recipe and save it; returns ``(model, history)``.

    Training checkpoints go to ``<folder>/train`` (an interrupted run resumes there); the finished model
    is written to ``<folder>/model`` and the folder is only considered complete once ``recipe.json``
    is written last. Calling this on a *finished* folder retrains from scratch (its checkpoint is dropped,
    not resumed at its last epoch).
    """
    from .train import TrainConfig, train_contrastive
    from .train.trainer import PairDataset

    r = _recipe(name)
    folder = Path(folder) if folder is not None else artifacts_dir(profile) / name
    data = reference_data(name)
    if r.kind == "fusion":
        return _train_fusion_reference(r, folder, data, profile, progress, on_epoch_end, device)
    if r.init_from:  # a fine-tune: the parent's trained weights and tokenizer, under this recipe's name
        import copy

        model = copy.deepcopy(reference_model(r.init_from, profile, progress=progress, device="cpu"))
        model.name = r.name
    else:
        model = _build(r, data["train"])
    recipe_file = folder / "recipe.json"
    finished = recipe_file.exists()  # asked to train a finished model again: retrain, do not resume its end
    if finished:
        recipe_file.unlink()
    if (folder / "train").exists():
        saved = folder / "train" / "recipe.json"
        try:
            same = json.loads(saved.read_text()) == r.key()
        except (OSError, ValueError):
            same = False
        if finished or not same:
            shutil.rmtree(folder / "train")  # a finished run or another recipe's checkpoint is not resumed
    (folder / "train").mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "train" / "recipe.json", json.dumps(r.key(), indent=2, default=str))
    cfg = TrainConfig(**r.train, device=device)  # "auto": CUDA when available (vlnb.device)
    if hasattr(model, "enable_feature_memo"):
        model.enable_feature_memo()  # frozen towers: each image / caption is encoded once, not once per epoch
    if r.negatives == "world-swaps":
        from .train.negclip import WorldFoilPairs

        pairs = WorldFoilPairs(data["train"], model.preprocess, cfg.caption_sampling, cfg.seed, cache=True)
    elif r.negatives:
        raise ValueError(f"recipe {r.name!r}: unknown negatives {r.negatives!r} (known: 'world-swaps')")
    else:
        pairs = PairDataset(data["train"], model.preprocess, cfg.caption_sampling, cfg.seed, cache=True)
    history = train_contrastive(
        model,
        pairs,
        val_data=data["test"],
        config=cfg,
        out_dir=folder / "train",
        progress=progress,
        on_epoch_end=on_epoch_end,
    )
    if hasattr(model, "enable_feature_memo"):
        model.enable_feature_memo(False)
    model.eval()
    model.save(folder / "model")
    atomic_write_text(folder / "history.json", json.dumps(history.state_dict(), default=float))
    atomic_write_text(recipe_file, json.dumps(r.key(), indent=2, default=str))
    return model, history


def _train_fusion_reference(r: Recipe, folder: Path, data: dict, profile: str, progress: bool,
                            on_epoch_end: Callable | None, device: str):
    """Build and train a fusion recipe (:mod:`vlnb.models.fusion`, :func:`vlnb.train.itm.train_fusion`): a few
    CPU minutes at most, so no per-epoch checkpoint; ``recipe.json`` is still written last."""
    from .device import resolve_device
    from .models.fusion import FusionConfig, create_fusion, qformer_config
    from .train import TrainConfig
    from .train.itm import train_fusion

    recipe_file = folder / "recipe.json"
    if recipe_file.exists():
        recipe_file.unlink()
    kw = dict(r.model)
    seed, rerank_k = kw.pop("seed", 0), kw.pop("rerank_k", 16)
    used = reference_model(r.uses, profile, progress=progress, device="cpu") if r.uses else None
    captions = [c for caps in data["train"]["captions"] for c in caps]
    if kw.get("arch") == "qformer":
        if used is None or not hasattr(used, "visual"):
            raise ValueError(f"recipe {r.name!r}: a Q-Former needs uses= a scratch dual encoder recipe (its ViT)")
        cfg = qformer_config(used.config, **{k: v for k, v in kw.items() if k != "arch"})
        model = create_fusion(cfg, captions=captions, seed=seed, name=r.name, backbone=used.visual)
    else:
        model = create_fusion(FusionConfig(**kw), captions=captions, seed=seed, name=r.name)
    if kw.get("arch") == "vilt" and used is None:
        raise ValueError(f"recipe {r.name!r}: a ViLT-like model needs uses= the dual encoder it mines negatives from")
    cfg = TrainConfig(**r.train, device=resolve_device(device))
    history = train_fusion(model, data["train"], cfg, miner=used, val_data=data["test"], rerank_k=rerank_k,
                           progress=progress, on_epoch_end=on_epoch_end)
    model.save(folder / "model")
    atomic_write_text(folder / "history.json", json.dumps(history.state_dict(), default=float))
    atomic_write_text(recipe_file, json.dumps(r.key(), indent=2, default=str))
    return model, history


def is_trained(name: str, profile: str = "offline") -> bool:
    """True when the artifact folder holds a finished model of the *current* recipe."""
    folder = artifacts_dir(profile) / name
    try:
        if json.loads((folder / "recipe.json").read_text()) != _recipe(name).key():
            return False
        return isinstance(json.loads((folder / "history.json").read_text()), dict)  # damaged history: retrain
    except (OSError, ValueError):
        return False


def reference_history(name: str, profile: str = "offline"):
    """The :class:`vlnb.train.History` (per step and per epoch: loss, logit scale, lr, validation R@K)
    of a trained reference model."""
    from .errors import ArtifactError, read_json_artifact
    from .train.trainer import History

    f = artifacts_dir(profile) / name / "history.json"
    if not f.exists():
        raise FileNotFoundError(f"{name} has no training history at {f}; train it first (chapter 2)")
    hint = f"retrain it (chapter 2 with retrain=True, or vlnb.zoo.train_reference({name!r}))"
    state = read_json_artifact(f, "training history", hint)
    try:
        return History.from_state(state)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{f}: damaged training history ({type(e).__name__}: {e}); {hint}") from None


def reference_model(name: str, profile: str = "offline", train_if_missing: bool = True, progress: bool = True,
                    device="auto"):
    """The trained reference model ``name`` (eval mode) on ``device`` (``"auto"``: CUDA when available, else
    CPU). Trains it first when it is missing or stale."""
    r = _recipe(name)
    folder = artifacts_dir(profile) / name
    if not is_trained(name, profile):
        if not train_if_missing:
            raise FileNotFoundError(
                f"reference model {name!r} is not trained for the current recipe at {folder} "
                "(run chapter 2, or call vlnb.zoo.train_reference)"
            )
        if progress:
            print(f"[vlnb.zoo] {name}: no trained model at {folder}; training it now ({r.description})")
        model, _ = train_reference(name, profile, progress=progress, device=device)
        from .device import resolve_device

        return model.to(resolve_device(device)).eval()
    from .errors import ArtifactError

    try:
        return _load_saved(r, folder, device)
    except (ArtifactError, FileNotFoundError) as e:
        if not train_if_missing:
            raise
        import warnings

        warnings.warn(f"[vlnb.zoo] {name}: the saved model is damaged ({e}); retraining it", stacklevel=2)
        model, _ = train_reference(name, profile, progress=progress, device=device)
        from .device import resolve_device

        return model.to(resolve_device(device)).eval()


def profile_models(profile: str, models: dict[str, str] | None = None, device="auto", progress: bool = True,
                   include_cross: bool = True, **load_kw) -> dict:
    """``{display name: model}`` a chapter evaluates under ``profile``.

    ``offline``: every reference model of :data:`RECIPES` (trained if missing). ``full``: the hub models of
    :data:`HUB_MODELS`, with ``models`` (name -> hub id or local folder) replacing or adding entries; a
    name mapped to ``None`` is dropped. ``include_cross=False`` leaves out cross encoders (ViLT). ``device``:
    ``"auto"`` (CUDA when available, else CPU) or any device of :func:`vlnb.device.resolve_device`.
    """
    from .device import resolve_device

    device = resolve_device(device)
    if profile == "offline":
        names = list(models) if models else list(PROFILE_RECIPES["offline"])
        if not include_cross:  # the ViLT-like fusion model is a cross encoder: not even loaded
            names = [n for n in names if not _is_cross_recipe(n)]
        return {n: reference_model(n, progress=progress, device=device) for n in names}
    if profile != "full":
        raise ValueError(f"unknown profile {profile!r} (offline | full)")
    from .models import CrossEncoder, load_model

    table = {**HUB_MODELS, **(models or {})}
    out = {}
    for name, ref in table.items():
        if ref is None:
            continue
        model = load_model(ref, device=device, **load_kw)
        if include_cross or not isinstance(model, CrossEncoder):
            out[name] = model
    return out


def _is_cross_recipe(name: str) -> bool:
    """True for a recipe whose model is a cross encoder (no embeddings of its own: the ViLT-like fusion model)."""
    r = _recipe(name)
    return r.kind == "fusion" and r.model.get("arch") == "vilt"


def chapter_models(cfg, device=None, progress: bool = True, include_cross: bool = True) -> dict:
    """The models of a chapter run from its parameters ``cfg`` (``cfg.profile``, ``cfg.models``).

    offline: the reference models (``cfg.models``, a list or dict of recipe names, picks a subset); full:
    the hub models, where a dict replaces / adds / drops (value None) entries of :data:`HUB_MODELS` and a
    list keeps only those display names. ``device``: None takes the chapter's ``cfg.device`` ("auto" when it
    has none).
    """
    if device is None:
        device = getattr(cfg, "device", None) or "auto"
    models = cfg.models
    if cfg.profile == "offline":
        names = list(models) if models else None
        return profile_models("offline", models=dict.fromkeys(names) if names else None, device=device,
                              progress=progress, include_cross=include_cross)
    if isinstance(models, list):
        unknown = [m for m in models if m not in HUB_MODELS]
        if unknown:
            raise KeyError(f"model(s) {unknown} are not hub models; known: {sorted(HUB_MODELS)} "
                           "(pass a dict name -> checkpoint to add models)")
        models = {n: None for n in HUB_MODELS if n not in models}
    return profile_models("full", models=models, device=device, progress=progress, include_cross=include_cross)


__all__ = [
    "HUB_MODELS", "PROFILE_RECIPES", "RECIPES", "Recipe", "artifacts_dir", "chapter_models", "is_trained", "profile_models", "reference_data",
    "reference_history", "reference_model", "train_reference",
]
