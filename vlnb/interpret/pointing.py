"""Where do the maps point? Object masks in the model's frame, and the (energy-based) pointing game.

A *pair* is one image, a text naming one object in it (the *target*) and another object of the image
(the *distractor*), with both objects' masks:

- offline world (:func:`world_pairs`): exact masks from the generator; the text is the world grammar's
  noun phrase ``"a {colour} {shape}"`` for an object whose colour+shape is unique in the image; each image
  gives both directions (A named with B as distractor, and B named with A), so a map that ignores the
  text scores the same on average for target and distractor;
- COCO (:func:`coco_pairs`): pycocotools masks (union of the category's instances); the text is a real
  caption of the image that mentions the target category (word match, :data:`COCO_WORDS`) and not the
  distractor category; targets in both directions where the captions allow.

Scores per map (:func:`energy_share`, :func:`pointing_hit`): the share of the map's energy (sum of its
values) inside a mask -- the energy-based pointing game of Score-CAM (Wang et al., 2020) -- and the
hit of the classic pointing game (Zhang et al., 2018): the map's maximum falls inside the mask (dilated by
``tolerance`` pixels). A map that is uniform has an energy share equal to the mask's area share, the
baseline each row of :func:`summarise` reports.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..data import get_annotations, open_rgb
from ..models.transforms import ImagePreprocess
from ..progress import tqdm
from .explain import explain, supported_methods


@dataclass
class PointingPair:
    """One image, a text naming its target object, and a distractor object (masks in the original frame)."""

    dataset: str
    image_id: str
    image: Image.Image
    text: str
    target: str
    distractor: str
    target_mask: np.ndarray
    distractor_mask: np.ndarray


# ---------------------------------------------------------------------------------------------- frames
def mask_in_frame(mask: np.ndarray, preprocess: ImagePreprocess) -> np.ndarray:
    """A boolean ``(h, w)`` mask of the original image moved into the model's input frame ``(H, W)``:
    ``preprocess``'s own resize and crop (:meth:`~vlnb.models.transforms.ImagePreprocess.resize_mask`,
    nearest-neighbour, so it stays binary), so the frame is the model's also where a subclass resizes its own
    way (ViLT's aspect-kept sides floored to whole patches)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    return preprocess.resize_mask(m)


def size_batches(preprocess: ImagePreprocess, images: Sequence[Image.Image], batch_size: int) -> list[list[int]]:
    """Positions of ``images`` in batches of at most ``batch_size`` whose model inputs have one size.

    A map lives on one patch grid, so a batch must not mix input sizes: ViLT keeps each image's aspect ratio
    and pads a mixed batch, and its padded patches are not a grid cell of any image. With a fixed-size
    preprocessing this is ``range(len(images))`` cut every ``batch_size``; otherwise sizes are grouped in the
    order they first occur, positions in order within a group.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(preprocess.output_hw(im.height, im.width)), []).append(i)
    return [g[s: s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]


def image_in_frame(image: Image.Image, preprocess: ImagePreprocess) -> np.ndarray:
    """The ``(H, W, 3)`` ``[0, 1]`` pixels the model sees (before its normalisation), for plotting."""
    return preprocess.to_unit([image])[0].permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------------------------- scores
def energy_share(maps, masks) -> np.ndarray:
    """Share of each map's energy inside its mask: ``Σ_mask m / Σ m`` (NaN for an all-zero map)."""
    m = torch.as_tensor(np.asarray(maps), dtype=torch.float64)
    k = torch.as_tensor(np.asarray(masks), dtype=torch.bool)
    if m.ndim == 2:
        m, k = m[None], k[None]
    if m.shape != k.shape:
        raise ValueError(f"maps {tuple(m.shape)} and masks {tuple(k.shape)} differ in shape")
    if bool((m < 0).any()):
        raise ValueError("maps must be non-negative (normalise them first)")
    total = m.sum(dim=(-2, -1))
    inside = (m * k).sum(dim=(-2, -1))
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.full_like(total, float("nan"))).numpy()


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    if r <= 0:
        return mask
    t = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    return (torch.nn.functional.max_pool2d(t, 2 * r + 1, stride=1, padding=r)[0, 0] > 0).numpy()


def pointing_hit(map_, mask: np.ndarray, tolerance: int = 0) -> bool:
    """True when the map's maximum (the first one, row-major) lies in ``mask`` dilated by ``tolerance`` px."""
    m = np.asarray(map_)
    if m.shape != np.asarray(mask).shape:
        raise ValueError(f"map {m.shape} and mask {np.asarray(mask).shape} differ in shape")
    idx = np.unravel_index(int(np.argmax(m)), m.shape)
    return bool(_dilate(np.asarray(mask, bool), tolerance)[idx])


# ---------------------------------------------------------------------------------------------- pairs
def world_pairs(manifest: pd.DataFrame, n_images: int, split: str | None = "test") -> list[PointingPair]:
    """Pairs from the first ``n_images`` world images (of ``split``) with two objects whose colour+shape is
    unique in the image: the two largest such objects, each named once with the other as distractor."""
    df = manifest if split is None else manifest[manifest["split"] == split]
    pairs: list[PointingPair] = []
    used = 0
    for _, row in df.iterrows():
        if used >= n_images:
            break
        objs = get_annotations(manifest, row["image_id"])
        counts: dict[str, int] = {}
        for o in objs:
            counts[o.category] = counts.get(o.category, 0) + 1
        unique = sorted((o for o in objs if counts[o.category] == 1), key=lambda o: -float(o.mask.sum()))
        if len(unique) < 2:
            continue
        a, b = unique[:2]
        image = open_rgb(row["image"])
        for t, d in ((a, b), (b, a)):
            pairs.append(PointingPair("world", str(row["image_id"]), image, f"a {t.category}", t.category,
                                      d.category, np.asarray(t.mask, bool), np.asarray(d.mask, bool)))
        used += 1
    return pairs


#: Words that name a COCO category in captions (the category's own name and its last word are always used).
COCO_WORDS: dict[str, tuple[str, ...]] = {
    "person": ("person", "people", "man", "men", "woman", "women", "boy", "boys", "girl", "girls", "child",
               "children", "kid", "kids", "guy", "guys", "lady", "ladies", "player", "players", "baby",
               "skier", "skiers", "surfer", "surfers", "skateboarder", "snowboarder", "rider", "chef", "baker",
               "someone", "adult", "adults", "crowd", "batter", "catcher", "pitcher", "couple"),
    "bicycle": ("bicycle", "bike", "bikes", "cycle"),
    "motorcycle": ("motorcycle", "motorbike", "motor bike", "scooter"),
    "airplane": ("airplane", "plane", "jet", "aircraft", "airliner"),
    "car": ("car", "cars", "taxi", "suv", "vehicle"),
    "truck": ("truck", "pickup"),
    "tv": ("tv", "television", "tvs"),
    "couch": ("couch", "sofa"),
    "dining table": ("table", "dining table"),
    "cup": ("cup", "mug"),
    "cell phone": ("phone", "cellphone", "cell phone", "smartphone"),
    "laptop": ("laptop", "computer", "notebook"),
    "sports ball": ("ball",),
    "potted plant": ("plant", "potted plant", "houseplant"),
    "teddy bear": ("teddy", "teddy bear", "stuffed animal"),
    "hair drier": ("hair drier", "hair dryer", "blow dryer"),
    "baseball glove": ("glove", "mitt"),
    "tennis racket": ("racket", "racquet"),
    "wine glass": ("wine glass", "glass", "wine"),
    "fire hydrant": ("hydrant", "fire hydrant"),
    "stop sign": ("stop sign",),
    "parking meter": ("meter", "parking meter"),
    "traffic light": ("traffic light", "stoplight", "stop light"),
    "hot dog": ("hot dog", "hotdog"),
    "donut": ("donut", "doughnut"),
    "sheep": ("sheep", "lamb"),
    "cow": ("cow", "cattle", "bull", "calf"),
}


@lru_cache(maxsize=512)
def _category_pattern(category: str) -> re.Pattern:
    words = set(COCO_WORDS.get(category, ())) | {category, category.split()[-1]}
    alts = sorted((re.escape(w) for w in words), key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(alts) + r")(?:s|es)?\b")


def mentions(caption: str, category: str) -> bool:
    """Whether ``caption`` names COCO ``category`` (its name, last word or a word of :data:`COCO_WORDS`)."""
    return bool(_category_pattern(category).search(caption.lower()))


def coco_pairs(manifest: pd.DataFrame, n_images: int, min_area: float = 0.01) -> list[PointingPair]:
    """Pairs from the first ``n_images`` images with two categories (each covering >= ``min_area`` of the
    image) such that a caption names one and not the other; up to two pairs per image (largest targets
    first, each with the largest category its caption does not name as distractor)."""
    pairs: list[PointingPair] = []
    used = 0
    for _, row in manifest.iterrows():
        if used >= n_images:
            break
        objs = get_annotations(manifest, row["image_id"])
        if not objs:
            continue
        masks: dict[str, np.ndarray] = {}
        for o in objs:
            if o.mask is None:
                continue
            masks[o.category] = masks.get(o.category, False) | np.asarray(o.mask, bool)
        if not masks:
            continue
        n_pix = next(iter(masks.values())).size
        cats = sorted((c for c, m in masks.items() if m.sum() >= min_area * n_pix), key=lambda c: -masks[c].sum())
        if len(cats) < 2:
            continue
        made = []
        for target in cats:
            for caption in row["captions"]:
                if not mentions(caption, target):
                    continue
                others = [c for c in cats if c != target and not mentions(caption, c)]
                if others:
                    made.append((caption, target, others[0]))
                    break
            if len(made) == 2:
                break
        if not made:
            continue
        image = open_rgb(row["image"])
        for caption, t, d in made:
            pairs.append(PointingPair("coco", str(row["image_id"]), image, caption, t, d, masks[t], masks[d]))
        used += 1
    return pairs


# ---------------------------------------------------------------------------------------------- the game
@dataclass
class Example:
    """One pair as one model saw it, with its maps (for overlays)."""

    pair_index: int
    pair: PointingPair
    image: np.ndarray
    target_mask: np.ndarray
    distractor_mask: np.ndarray
    maps: dict[str, np.ndarray]


def score_pairs(model, model_name: str, pairs: Sequence[PointingPair], methods: Sequence[str] | None = None,
                batch_size: int = 16, upsample: str = "bilinear", tolerance: int = 0, start_layer: int = 0,
                keep: int = 0, progress: bool = False) -> tuple[pd.DataFrame, list[Example]]:
    """Explain every pair with ``model`` and score its maps against the target and distractor masks.

    Returns one row per (pair, method) -- energy shares, hits, area shares of both masks in the model's
    frame -- and the first ``keep`` pairs as :class:`Example` for overlays, both in pair order. Pairs whose
    target or distractor falls outside the model's crop are dropped (column ``n_dropped`` of :func:`summarise`
    counts them). Batches never mix input sizes (:func:`size_batches`).
    """

    methods = list(methods) if methods is not None else supported_methods(model)
    recs: dict[int, list[dict]] = {}
    examples: dict[int, Example] = {}
    batches = size_batches(model.preprocess, [p.image for p in pairs], batch_size)
    if progress:
        batches = tqdm(batches, desc=f"pointing game: {model_name}", leave=False)
    for idx in batches:
        batch = [pairs[j] for j in idx]
        pixels = model.preprocess([p.image for p in batch])
        maps = explain(model, pixels, [p.text for p in batch], methods=methods, upsample=upsample,
                       start_layer=start_layer)
        for i, (j, p) in enumerate(zip(idx, batch)):
            tm, dm = mask_in_frame(p.target_mask, model.preprocess), mask_in_frame(p.distractor_mask, model.preprocess)
            dropped = not tm.any() or not dm.any()
            recs[j] = []
            for m in methods:
                mp = maps[m].pixels[i].numpy()
                rec = {"model": model_name, "family": model.family, "dataset": p.dataset, "method": m,
                       "pair": j, "image_id": p.image_id, "text": p.text, "target": p.target,
                       "distractor": p.distractor, "dropped": dropped,
                       "area_target": float(tm.mean()), "area_distractor": float(dm.mean())}
                if not dropped:
                    e_t, e_d = energy_share(np.stack([mp, mp]), np.stack([tm, dm]))
                    rec.update(energy_target=float(e_t), energy_distractor=float(e_d),
                               hit_target=pointing_hit(mp, tm, tolerance), hit_distractor=pointing_hit(mp, dm, tolerance))
                recs[j].append(rec)
            if j < keep:
                examples[j] = Example(j, p, image_in_frame(p.image, model.preprocess), tm, dm,
                                      {m: maps[m].pixels[i].numpy() for m in methods})
    return (pd.DataFrame([r for j in sorted(recs) for r in recs[j]]),
            [examples[j] for j in sorted(examples)])


def _cluster_bootstrap(values: np.ndarray, groups: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap means of ``values`` resampling whole groups (images), ``(n_boot,)``."""
    uniq, inv = np.unique(groups, return_inverse=True)
    sums = np.bincount(inv, weights=values, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(float)
    draws = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
    return sums[draws].sum(axis=1) / counts[draws].sum(axis=1)


def summarise(records: pd.DataFrame, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per (model, dataset, method): pairs and images scored, mean energy share on the target and on the
    distractor, their difference with a ``ci`` bootstrap interval (resampling images, since the two
    directions of an image are not independent), hit rates, the uniform-map baseline (mean area shares),
    the *excess* ``(E_t - E_d) - (A_t - A_d)`` (the difference beyond what a uniform map gets from the
    objects' sizes, with its interval) and how often the target gets more energy than the distractor."""
    if records.empty:
        raise ValueError("no pointing-game records to summarise")
    rng = np.random.default_rng(seed)
    lo_q, hi_q = (1 - ci) / 2, 1 - (1 - ci) / 2
    rows = []
    for (model, dataset, method), g in records.groupby(["model", "dataset", "method"], sort=False):
        ok = g[~g["dropped"]].dropna(subset=["energy_target", "energy_distractor"])
        row = {"model": model, "dataset": dataset, "method": method, "n_pairs": len(ok),
               "n_images": ok["image_id"].nunique(), "n_dropped": int(len(g) - len(ok))}
        if len(ok):
            diff = (ok["energy_target"] - ok["energy_distractor"]).to_numpy()
            groups = ok["image_id"].astype(str).to_numpy()
            boot_t = _cluster_bootstrap(ok["energy_target"].to_numpy(), groups, n_boot, rng)
            boot_d = _cluster_bootstrap(diff, groups, n_boot, rng)
            excess = diff - (ok["area_target"] - ok["area_distractor"]).to_numpy()
            boot_x = _cluster_bootstrap(excess, groups, n_boot, rng)
            row.update(
                energy_target=ok["energy_target"].mean(),
                energy_target_lo=np.quantile(boot_t, lo_q), energy_target_hi=np.quantile(boot_t, hi_q),
                energy_distractor=ok["energy_distractor"].mean(),
                difference=diff.mean(), difference_lo=np.quantile(boot_d, lo_q), difference_hi=np.quantile(boot_d, hi_q),
                excess=excess.mean(), excess_lo=np.quantile(boot_x, lo_q), excess_hi=np.quantile(boot_x, hi_q),
                target_wins=float((diff > 0).mean()),
                hit_target=ok["hit_target"].astype(float).mean(), hit_distractor=ok["hit_distractor"].astype(float).mean(),
                area_target=ok["area_target"].mean(), area_distractor=ok["area_distractor"].mean(),
            )
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["COCO_WORDS", "Example", "PointingPair", "coco_pairs", "energy_share", "image_in_frame", "mask_in_frame",
           "mentions", "pointing_hit", "score_pairs", "size_batches", "summarise", "world_pairs"]
