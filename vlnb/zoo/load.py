"""Loading the models a chapter evaluates: a trained reference model (trained first when missing or stale), every
model of a profile, a chapter run's models."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

from ..device import resolve_device
from ..errors import ArtifactError, read_json_artifact
from ..models import CrossEncoder, load_model
from ..train.trainer import History
from .recipes import HUB_MODELS, PROFILE_RECIPES, Recipe, artifacts_dir, is_cross_recipe, recipe
from .train import train_reference, train_side_by_side


def _load_saved(r: Recipe, folder: Path, device="auto"):
    try:
        model = load_model(str(folder / "model"), family=r.kind, device=device)
        model.name = r.name  # the recipe's name on pages and in tables, not the cache folder it was read from
        return model
    except ArtifactError:
        raise
    except (SafetensorError, UnicodeDecodeError, ValueError, KeyError) as e:  # a loader that names no file
        raise ArtifactError(f"{folder / 'model'}: cannot load the saved model ({type(e).__name__}: "
                            f"{str(e)[:300]})") from None


def is_trained(name: str, profile: str = "offline") -> bool:
    """True when the artifact folder holds a finished model of the *current* recipe."""
    folder = artifacts_dir(profile) / name
    try:
        if json.loads((folder / "recipe.json").read_text()) != recipe(name).key():
            return False
        return isinstance(json.loads((folder / "history.json").read_text()), dict)  # damaged history: retrain
    except (OSError, ValueError):
        return False


def reference_history(name: str, profile: str = "offline"):
    """The :class:`vlnb.train.History` (per step and per epoch: loss, logit scale, lr, validation R@K)
    of a trained reference model."""
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
    r = recipe(name)
    folder = artifacts_dir(profile) / name
    if not is_trained(name, profile):
        if not train_if_missing:
            raise FileNotFoundError(
                f"reference model {name!r} is not trained for the current recipe at {folder} "
                "(run chapter 2, or call vlnb.zoo.train_reference)"
            )
        if progress:
            # the page says what is trained and why; the machine's folder is the artifacts folder's business
            print(f"[vlnb.zoo] {name}: not trained yet for this recipe; training it now: {r.description}")
        model, _ = train_reference(name, profile, progress=progress, device=device)

        return model.to(resolve_device(device)).eval()

    try:
        return _load_saved(r, folder, device)
    except (ArtifactError, FileNotFoundError) as e:
        if not train_if_missing:
            raise

        warnings.warn(f"[vlnb.zoo] {name}: the saved model is damaged ({e}); retraining it", stacklevel=2)
        model, _ = train_reference(name, profile, progress=progress, device=device)

        return model.to(resolve_device(device)).eval()


#: the folders of the reference models this process trained (with :func:`train_or_load`): a later call that loads
#: one says so without printing the folder (chapter 2's fusion cell, after its first cell trained them)
_TRAINED_HERE: set[Path] = set()


def train_or_load(names, profile: str = "offline", device="auto", retrain: bool = False, side_by_side: bool = True,
                  on_epoch_end: Callable | None = None, ahead=(), side_jobs=()):
    """Yield ``(name, model, history)`` for the reference models ``names``, in order: each one trained now when it is
    missing (or ``retrain``), else loaded, saying which on stdout.

    With ``side_by_side`` the ones to train are first trained together (:func:`train_side_by_side`, which does
    nothing where that cannot help) and then loaded; the others train one at a time here, with
    ``on_epoch_end(name)`` (a callback or None) after every epoch -- e.g. live learning curves.

    ``ahead``: more recipes that a later cell or chapter loads, trained here too when missing (or ``retrain``) but
    not yielded: side by side with ``names`` where that helps (their training fills the cores that would wait while
    the longest model trains: chapter 2's fusion models and chapter 4's NegCLIP pair beside scratch-world), else one
    at a time after the last yielded model.

    ``side_jobs``: independent one-thread runs (:class:`~vlnb.device.SideJob`) that :func:`train_side_by_side` may
    take on beside the models (chapter 2: its attention variants' runs); where nothing trains side by side they
    are not run here (their own cell runs them)."""
    pending = [n for n in names if retrain or not is_trained(n, profile)]
    extra = [n for n in dict.fromkeys(ahead) if n not in names and (retrain or not is_trained(n, profile))]
    together = train_side_by_side(pending + extra, profile, device=device, side_jobs=side_jobs) if side_by_side else []
    folder = artifacts_dir(profile)
    _TRAINED_HERE.update(folder / n for n in together)
    for name in names:
        r = recipe(name)
        if name in pending and name not in together:
            print(f"training {name}: {r.description}")
            callback = on_epoch_end(name) if on_epoch_end is not None else None
            model, history = train_reference(name, profile, on_epoch_end=callback, device=device)
            _TRAINED_HERE.add(folder / name)
        else:
            if name in together or folder / name in _TRAINED_HERE:  # the page says what, not the machine's folder
                print(f"{name}: {r.description}" + ("" if name in together else " (trained earlier in this run)"))
            else:
                print(f"{name}: loading the trained model from {folder / name}")
            model, history = reference_model(name, profile, device=device), reference_history(name, profile)
        yield name, model, history
    for name in extra:
        if name not in together:
            print(f"training {name} (used later): {recipe(name).description}")
            train_reference(name, profile, progress=False, device=device)
            _TRAINED_HERE.add(folder / name)


def profile_models(profile: str, models: dict[str, str] | None = None, device="auto", progress: bool = True,
                   include_cross: bool = True, **load_kw) -> dict:
    """``{display name: model}`` a chapter evaluates under ``profile``.

    ``offline``: every reference model of :data:`RECIPES` (trained if missing). ``full``: the hub models of
    :data:`HUB_MODELS`, with ``models`` (name -> hub id or local folder) replacing or adding entries; a
    name mapped to ``None`` is dropped. ``include_cross=False`` leaves out cross encoders (ViLT). ``device``:
    ``"auto"`` (CUDA when available, else CPU) or any device of :func:`vlnb.device.resolve_device`.
    """
    device = resolve_device(device)
    if profile == "offline":
        names = list(models) if models else list(PROFILE_RECIPES["offline"])
        if not include_cross:  # the ViLT-like fusion model is a cross encoder: not even loaded
            names = [n for n in names if not is_cross_recipe(n)]
        return {n: reference_model(n, progress=progress, device=device) for n in names}
    if profile != "full":
        raise ValueError(f"unknown profile {profile!r} (offline | full)")

    table = {**HUB_MODELS, **(models or {})}
    out = {}
    for name, ref in table.items():
        if ref is None:
            continue
        model = load_model(ref, device=device, **load_kw)
        if include_cross or not isinstance(model, CrossEncoder):
            out[name] = model
    return out


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
