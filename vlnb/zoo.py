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

from .paths import cache_dir

#: Full profile: display name -> hub id. Dual encoders first; ViLT is a cross encoder (it re-ranks).
HUB_MODELS: dict[str, str] = {
    "CLIP ViT-B/32": "openai/clip-vit-base-patch32",
    "BLIP ITM (COCO)": "Salesforce/blip-itm-base-coco",
    "BLIP-2 ITM (ViT-g)": "Salesforce/blip2-itm-vit-g",
    "ViLT (COCO)": "dandelin/vilt-b32-finetuned-coco",
}


@dataclass(frozen=True)
class Recipe:
    """How an offline reference model is built and trained (everything that changes its weights)."""

    name: str
    kind: str  #: "scratch" (ScratchDualEncoder) or "towers" (TowersDualEncoder)
    data: str  #: "world" or "coco-mini"
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    data_kwargs: dict = field(default_factory=dict)
    description: str = ""

    def key(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "description"}


RECIPES: dict[str, Recipe] = {
    "scratch-world": Recipe(
        name="scratch-world",
        kind="scratch",
        data="world",
        model={"config": "tiny", "seed": 0},
        train={"epochs": 15, "batch_size": 64, "lr": 1e-3, "warmup_steps": 30, "seed": 0},
        data_kwargs={"n_train": 2000, "n_test": 500, "image_size": 64, "seed": 0},
        description="from-scratch ViT + text transformer (tiny preset), trained on the offline world",
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
        model={"config": "vit_b32", "seed": 0},
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
PROFILE_RECIPES = {"offline": ("scratch-world", "towers-coco"), "full": ("scratch-coco", "towers-coco-full")}


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
        return {s: df[df["split"] == s].reset_index(drop=True).pipe(_keep_attrs, df) for s in ("train", "test")}
    if r.data == "coco-mini":
        train, _ = build_manifest("coco", split="train2017", **data_overrides)
        test, _ = build_manifest("coco", split="val2017", **data_overrides)
        return {"train": train, "test": test}
    if r.data == "coco":
        from .data.profiles import _resolve

        kw = {**r.data_kwargs, **data_overrides}
        root, ks = _resolve(kw.pop("root")), _resolve(kw.pop("karpathy_split"))
        both = ("train2017", "val2017")
        train, _ = build_manifest("coco", root=root, split=both, karpathy_split=ks,
                                  karpathy_subset=("train", "restval"), **kw)
        test, _ = build_manifest("coco", root=root, split=both, karpathy_split=ks, karpathy_subset="test", **kw)
        return {"train": train, "test": test}
    raise ValueError(f"recipe {name!r}: unknown data {r.data!r}")


def _keep_attrs(part: pd.DataFrame, whole: pd.DataFrame) -> pd.DataFrame:
    part.attrs = dict(whole.attrs)
    return part


def _build(r: Recipe, train: pd.DataFrame):
    if r.kind == "scratch":
        from .models.scratch import ScratchDualEncoder

        kw = dict(r.model)
        config = kw.pop("config", "tiny")
        captions = [c for caps in train["captions"] for c in caps]
        return ScratchDualEncoder.create(config, captions=captions, name=r.name, **kw)
    if r.kind == "towers":
        from .models.towers import TowersDualEncoder

        return TowersDualEncoder(name=r.name, **r.model)
    raise ValueError(f"recipe {r.name!r}: unknown kind {r.kind!r}")


def _load_saved(r: Recipe, folder: Path, device="cpu"):
    from .models import load_model

    return load_model(str(folder / "model"), family=r.kind, device=device)


def train_reference(
    name: str,
    profile: str = "offline",
    progress: bool = True,
    on_epoch_end: Callable | None = None,
    folder: str | os.PathLike | None = None,
):
    """Train reference model ``name`` with its recipe and save it; returns ``(model, history)``.

    Training checkpoints go to ``<folder>/train`` (an interrupted run resumes there); the finished model
    is written to ``<folder>/model`` and the folder is only considered complete once ``recipe.json``
    is written last.
    """
    from .train import TrainConfig, train_contrastive
    from .train.trainer import PairDataset

    r = _recipe(name)
    folder = Path(folder) if folder is not None else artifacts_dir(profile) / name
    data = reference_data(name)
    model = _build(r, data["train"])
    recipe_file = folder / "recipe.json"
    if recipe_file.exists():
        recipe_file.unlink()
    if (folder / "train").exists():
        saved = folder / "train" / "recipe.json"
        if not saved.exists() or json.loads(saved.read_text()) != r.key():
            shutil.rmtree(folder / "train")  # a checkpoint of another recipe must not be resumed
    (folder / "train").mkdir(parents=True, exist_ok=True)
    (folder / "train" / "recipe.json").write_text(json.dumps(r.key(), indent=2, default=str))
    cfg = TrainConfig(**r.train)
    if hasattr(model, "enable_feature_memo"):
        model.enable_feature_memo()  # frozen towers: each image / caption is encoded once, not once per epoch
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
    (folder / "history.json").write_text(json.dumps(history.state_dict(), default=float))
    recipe_file.write_text(json.dumps(r.key(), indent=2, default=str))
    return model, history


def is_trained(name: str, profile: str = "offline") -> bool:
    """True when the artifact folder holds a finished model of the *current* recipe."""
    f = artifacts_dir(profile) / name / "recipe.json"
    try:
        return json.loads(f.read_text()) == _recipe(name).key()
    except (OSError, ValueError):
        return False


def reference_history(name: str, profile: str = "offline"):
    """The :class:`vlnb.train.History` (per step and per epoch: loss, logit scale, lr, validation R@K)
    of a trained reference model."""
    from .train.trainer import History

    f = artifacts_dir(profile) / name / "history.json"
    if not f.exists():
        raise FileNotFoundError(f"{name} has no training history at {f}; train it first (chapter 2)")
    return History.from_state(json.loads(f.read_text()))


def reference_model(name: str, profile: str = "offline", train_if_missing: bool = True, progress: bool = True,
                    device="cpu"):
    """The trained reference model ``name`` (eval mode). Trains it first when it is missing or stale."""
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
        model, _ = train_reference(name, profile, progress=progress)
        return model.to(device).eval()
    return _load_saved(r, folder, device)


def profile_models(profile: str, models: dict[str, str] | None = None, device="cpu", progress: bool = True,
                   include_cross: bool = True, **load_kw) -> dict:
    """``{display name: model}`` a chapter evaluates under ``profile``.

    ``offline``: every reference model of :data:`RECIPES` (trained if missing). ``full``: the hub models of
    :data:`HUB_MODELS`, with ``models`` (name -> hub id or local folder) replacing or adding entries; a
    name mapped to ``None`` is dropped. ``include_cross=False`` leaves out cross encoders (ViLT).
    """
    if profile == "offline":
        names = list(models) if models else list(PROFILE_RECIPES["offline"])
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


def chapter_models(cfg, device="cpu", progress: bool = True, include_cross: bool = True) -> dict:
    """The models of a chapter run from its parameters ``cfg`` (``cfg.profile``, ``cfg.models``).

    offline: the reference models (``cfg.models``, a list or dict of recipe names, picks a subset); full:
    the hub models, where a dict replaces / adds / drops (value None) entries of :data:`HUB_MODELS` and a
    list keeps only those display names.
    """
    models = cfg.models
    if cfg.profile == "offline":
        names = list(models) if models else None
        return profile_models("offline", models=dict.fromkeys(names) if names else None, device=device,
                              progress=progress)
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
