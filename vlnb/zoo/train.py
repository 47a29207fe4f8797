"""Training a reference model with its recipe (contrastive dual encoders; fusion models with ITM) and saving it."""

from __future__ import annotations

import copy
import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import pandas as pd

from ..device import SideJob, resolve_device, run_side_job, side_by_side_jobs, start_worker
from ..models.fusion import FusionConfig, create_fusion, qformer_config
from ..models.scratch import ScratchDualEncoder, clip_tokenizer
from ..models.towers import TowersDualEncoder
from ..paths import atomic_write_text
from ..train import TrainConfig, train_contrastive
from ..train.itm import train_fusion
from ..train.negclip import WorldFoilPairs
from ..train.trainer import PairDataset
from .data import reference_data
from .recipes import Recipe, artifacts_dir, recipe


def build_model(r: Recipe, train: pd.DataFrame):
    """A fresh (untrained) model of recipe ``r``; a scratch model's tokenizer is fit on ``train``'s captions."""
    if r.kind == "scratch":
        kw = dict(r.model)
        config = kw.pop("config", "tiny")
        tok = kw.pop("tokenizer", None)  # a hub id / folder of a CLIP tokenizer (None: the preset's default)
        captions = [c for caps in train["captions"] for c in caps]
        return ScratchDualEncoder.create(config, captions=captions, name=r.name,
                                         tokenizer=clip_tokenizer(tok) if tok else None, **kw)
    if r.kind == "towers":
        return TowersDualEncoder(name=r.name, **{"seed": r.train.get("seed", 0), **r.model})
    raise ValueError(f"recipe {r.name!r}: unknown kind {r.kind!r}")


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
    r = recipe(name)
    folder = Path(folder) if folder is not None else artifacts_dir(profile) / name
    data = reference_data(name)
    if r.kind == "fusion":
        return _train_fusion_reference(r, folder, data, profile, progress, on_epoch_end, device)
    if r.init_from:  # a fine-tune: the parent's trained weights and tokenizer, under this recipe's name

        model = copy.deepcopy(trained_parent(r.init_from, profile, progress))
        model.name = r.name
    else:
        model = build_model(r, data["train"])
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
    recipe_file = folder / "recipe.json"
    if recipe_file.exists():
        recipe_file.unlink()
    kw = dict(r.model)
    seed, rerank_k = kw.pop("seed", 0), kw.pop("rerank_k", 16)
    used = trained_parent(r.uses, profile, progress) if r.uses else None
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


def trained_parent(name: str, profile: str, progress: bool):
    """The trained reference model ``name`` that a recipe fine-tunes (``init_from``) or builds on (``uses``), on
    the CPU; trained first when missing."""
    # lazy: a cycle (reference_model trains a missing model with train_reference, which needs its parent)
    from .load import reference_model

    return reference_model(name, profile, progress=progress, device="cpu")


def _train_in_worker(name: str, profile: str, device: str, recipes: dict[str, Recipe], threads: int = 1) -> str:
    from .recipes import RECIPES  # lazy: the registry of the fresh worker process, completed below

    start_worker(threads)
    RECIPES.update(recipes)  # recipes registered at run time in the caller (a spawned worker only has the built-in ones)
    train_reference(name, profile, progress=False, device=device)
    return name


def train_side_by_side(names, profile: str = "offline", device: str = "auto", jobs: int | None = None,
                       side_jobs: Sequence[SideJob] = ()) -> list[str]:
    """Train the reference models ``names`` (each with :func:`train_reference`, saved as usual) in processes side by
    side; returns the names trained.

    A model that others of ``names`` need (``uses``/``init_from``) starts first; the others start as soon as their
    parent is saved, one thread each, so a core that finished its models early takes the next ready one instead of
    waiting for a whole wave; of the ready ones, the longest (:attr:`Recipe.cost`) starts first.

    ``side_jobs``: independent one-thread runs (:class:`~vlnb.device.SideJob`, e.g. chapter 2's attention-variant
    runs) that fill the cores beside the models; each one's ``done`` gets its result here. When they and the models
    that wait for nobody hold enough work to keep the other cores busy while the first model trains on one thread,
    it trains on one thread beside them (chapter 2 on 2 cores: scratch-world beside blip-world, towers-coco and the
    variants): on a machine whose cores are shared with others, two threads in lock-step lose much of their
    speed, two one-thread processes do not (six cold book builds, scratch-world's two-thread epoch against the
    one-thread epoch of its fine-tune scratch-world-ft: 1.78-1.87x faster on a quiet machine, 1.31x on a busy
    one). Otherwise it trains first, alone, with every thread, its dependants waiting for it.

    Returns ``[]`` without training anything when side by side cannot help (no model to train, fewer than two runs
    in all, a GPU, or ``jobs=1``): the caller trains them one at a time, as before, and the side jobs are left to
    their own cell. No progress or live curves are shown: the histories are saved with the models
    (:func:`vlnb.zoo.reference_history`).
    """

    names = list(dict.fromkeys(names))
    for n in names:
        recipe(n)  # an unknown name is a KeyError naming the known ones, before any process starts
    side = list(side_jobs)
    n_jobs = side_by_side_jobs(len(names) + len(side), device, jobs)
    if not names or len(names) + len(side) < 2 or n_jobs < 2:
        return []
    parents = {n: {recipe(n).uses, recipe(n).init_from} & set(names) - {n} for n in names}
    left, done = set(names), set()
    while left:  # a cycle would never start: refuse it before any process does
        ready = {n for n in left if not parents[n] & left}
        if not ready:
            raise ValueError(f"reference models {sorted(left)} depend on each other in a cycle")
        left -= ready
    dev = str(resolve_device(device))
    needed = {n: recipe(n) for n in names}
    for r in list(needed.values()):
        for parent in (r.uses, r.init_from):
            if parent:
                needed[parent] = recipe(parent)
    feeds = {p for n in names for p in parents[n]}  # models that others wait for
    lead = [n for n in names if n in feeds]
    rest = [n for n in names if n not in feeds]
    beside = sum(needed[n].cost for n in rest if not parents[n]) + sum(j.cost for j in side)
    lead_threads = 1 if lead and beside >= (n_jobs - 1) * max(needed[n].cost for n in lead) else n_jobs
    also = f", and {len(side)} independent runs beside them ({side[0].name}, …)" if side else ""
    if lead and lead_threads > 1:
        print(f"training {', '.join(lead)} first ({n_jobs} threads), then {', '.join(rest)} side by side "
              f"({n_jobs} processes, one thread each){also} ...", flush=True)
    else:
        print(f"training {', '.join([*lead, *rest])} side by side ({n_jobs} processes, one thread each){also} ...",
              flush=True)
    waiting, running = [*names, *range(len(side))], {}
    cost = {**{n: needed[n].cost for n in names}, **{i: j.cost for i, j in enumerate(side)}}
    with ProcessPoolExecutor(n_jobs, mp_context=mp.get_context("spawn")) as pool:
        while waiting or running:
            # the longest first (Recipe.cost; ties in the caller's order): the last to start are the short ones, so
            # the processes finish together instead of one waiting for the other's long model
            ready = sorted((n for n in waiting if isinstance(n, int) or parents[n] <= done), key=lambda n: -cost[n])
            first = [n for n in ready if n in feeds]
            if lead_threads == 1:  # everything on one thread, what others wait for first, one run per free process
                start = [*first, *(n for n in ready if n not in feeds)][: n_jobs - len(running)]
            elif first:  # alone, with every thread, once what is running has finished
                start = first[:1] if not running else []
            else:
                start = [] if any(running[f] in feeds for f in running) else ready
            for n in start:
                if isinstance(n, int):
                    fut = pool.submit(run_side_job, side[n].fn, side[n].args, 1)
                else:
                    threads = lead_threads if n in feeds else 1
                    fut = pool.submit(_train_in_worker, n, profile, dev, needed, threads)
                running[fut] = n
                waiting.remove(n)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                n = running.pop(f)
                result = f.result()  # a failure raises here, naming the model's (or run's) own error
                if isinstance(n, int):
                    side[n].done(result)
                else:
                    done.add(n)
    return names
