"""Paired CIFAR-100: two real CIFAR-100 images side by side (32x64), captioned with both class names.

One seed of this study trained a ViT from scratch against a frozen CLIP text tower on such pairs; here the set
is built properly. :func:`build_paired_cifar` reads CIFAR-100 through :func:`vlnb.data.hub.load_cifar100`
(offline: the 916 real test images in ``../shared/data/cifar100-test-partial``; full profile: any CIFAR-100
source that function takes), then

1. splits the *source images* into a train and a test pool, stratified by class (every class with two or more
   images lands in both), so no test pair shows an image seen in training;
2. draws, within each pool, distinct ordered pairs of images of two different classes, from a generator
   seeded by ``seed`` (the same seed gives the same manifest, byte for byte);
3. writes each pair as a 32x64 PNG (left | right) with one caption, ``template`` filled with the two class
   names (underscores as spaces: "a photo of a maple tree and a pickup truck"), ``labels = [left, right]``
   (CIFAR's own names) and the provenance columns ``left_class, right_class, left_label_id,
   right_label_id, left_source_id, right_source_id``.

The pairs are twice as wide as tall, while the models here take square inputs after a center crop, which
would cut away half of each image: :func:`pair_preprocess` gives a model's preprocessing with the crop
replaced by a resize of the whole pair to the square input (each half stretched to it, both kept).
:func:`pair_prompts` lists every ordered class pair's prompt, for zero-shot classification among pairs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..models.transforms import ImagePreprocess
from ..paths import shared_data_dir
from .hub import load_cifar100
from .images import encode_png, open_rgb
from .manifest import make_manifest

DEFAULT_TEMPLATE = "a photo of a {a} and a {b}"
NAME = "paired-cifar100"


def default_source() -> Path:
    """The 916 real CIFAR-100 test images of the shared offline data."""

    return shared_data_dir(required=True) / "cifar100-test-partial" / "cifar100_test_first916.npz"


def class_phrase(name: str) -> str:
    """CIFAR class name as words: ``"aquarium_fish"`` -> ``"aquarium fish"``."""
    return str(name).replace("_", " ")


def _check_template(template: str) -> None:
    try:
        filled = template.format(a="\x00A", b="\x00B")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"template must use exactly the fields {{a}} and {{b}}, got {template!r} ({e})") from None
    if "\x00A" not in filled or "\x00B" not in filled:
        raise ValueError(f"template must name both classes with {{a}} and {{b}}, got {template!r}")


def _split_pools(labels: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of source rows: per class, ``round(test_fraction * n)`` rows to test, kept in ``[1, n-1]``
    when the class has two or more images (a single image goes to train)."""
    train, test = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        k = round(test_fraction * len(rows))
        k = min(max(k, 1), len(rows) - 1) if len(rows) >= 2 else 0
        test += rows[:k].tolist()
        train += rows[k:].tolist()
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


def _draw_pairs(pool: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator, split: str) -> list[tuple[int, int]]:
    """``n`` distinct ordered pairs (left, right) of pool rows with different classes."""
    counts = np.unique(labels[pool], return_counts=True)[1]
    possible = int(len(pool) ** 2 - (counts**2).sum())
    if n > possible:
        raise ValueError(f"{split}: {n} pairs requested but its pool of {len(pool)} images allows only {possible} "
                         "distinct pairs of two different classes")
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    while len(out) < n:
        m = 2 * (n - len(out)) + 16
        left, right = pool[rng.integers(0, len(pool), m)], pool[rng.integers(0, len(pool), m)]
        for a, b in zip(left.tolist(), right.tolist()):
            if labels[a] != labels[b] and (a, b) not in seen:
                seen.add((a, b))
                out.append((a, b))
                if len(out) == n:
                    break
    return out


def build_paired_cifar(
    n_train: int = 2000,
    n_test: int = 500,
    source: str | os.PathLike | None = None,
    split: str = "test",
    test_fraction: float = 0.25,
    seed: int = 0,
    template: str = DEFAULT_TEMPLATE,
) -> pd.DataFrame:
    """The paired-CIFAR-100 manifest: ``n_train`` pairs with ``split == "train"`` and ``n_test`` with ``"test"``.

    ``source``/``split``: what :func:`vlnb.data.hub.load_cifar100` reads (default: the shared 916-image npz);
    ``test_fraction``: share of each class's source images reserved for test pairs; ``seed``: everything
    random (pool split, pairs); ``template``: the caption, with ``{a}`` (left class) and ``{b}`` (right).
    """

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ValueError(f"n_train and n_test must be >= 0 and not both 0, got {n_train}, {n_test}")
    _check_template(template)
    source = default_source() if source is None else source
    base, _ = load_cifar100(source, split=split, check_images=False)
    if len(base) == 0:
        raise ValueError(f"{source}: no CIFAR-100 images")
    arrays = [np.asarray(open_rgb(b)) for b in base["image"]]
    labels = base["fine_label_id"].to_numpy(dtype=np.int64)
    names = [str(x[0]) for x in base["labels"]]
    ids = base["image_id"].tolist()

    rng = np.random.default_rng([int(seed), 0x9A12])
    pools = dict(zip(("train", "test"), _split_pools(labels, test_fraction, rng)))
    records = []
    for part, n in (("train", n_train), ("test", n_test)):
        for k, (a, b) in enumerate(_draw_pairs(pools[part], labels, n, rng, part)):
            records.append({
                "image_id": f"{part}-{k:05d}",
                "image": encode_png(np.concatenate([arrays[a], arrays[b]], axis=1)),
                "captions": [template.format(a=class_phrase(names[a]), b=class_phrase(names[b]))],
                "split": part,
                "labels": [names[a], names[b]],
                "left_class": names[a], "right_class": names[b],
                "left_label_id": int(labels[a]), "right_label_id": int(labels[b]),
                "left_source_id": ids[a], "right_source_id": ids[b],
            })
    meta = {"source": str(source), "source_split": split, "seed": int(seed), "template": template,
            "test_fraction": test_fraction, "n_source_train": len(pools["train"]), "n_source_test": len(pools["test"]),
            "class_names": list(base.attrs.get("vlnb", {}).get("class_names", [])), "annotations": None}
    return make_manifest(records, name=NAME, meta=meta)


def pair_prompts(class_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> tuple[list[str], list[tuple[int, int]]]:
    """Every ordered pair of two different classes: ``(prompts, [(a, b), ...])`` with ``prompts[i]`` the filled
    template of pair ``i`` (``len = C * (C - 1)``, 9,900 for CIFAR-100)."""
    _check_template(template)
    pairs = [(a, b) for a in range(len(class_names)) for b in range(len(class_names)) if a != b]
    return [template.format(a=class_phrase(class_names[a]), b=class_phrase(class_names[b])) for a, b in pairs], pairs


def pair_preprocess(preprocess):
    """``preprocess`` (an :class:`~vlnb.models.transforms.ImagePreprocess` with a square output) changed to resize
    the whole 32x64 pair to that square, no crop, so both images reach the model (same resampling and
    normalisation). Assign it to ``model.preprocess`` before training or evaluating on pairs."""

    size = getattr(preprocess, "output_size", None)
    if not isinstance(preprocess, ImagePreprocess) or size is None:
        raise TypeError(f"pair_preprocess needs an ImagePreprocess with a fixed output size, got {preprocess!r}")
    return ImagePreprocess(size, None, preprocess.resample, preprocess.mean, preprocess.std)
