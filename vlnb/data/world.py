"""The offline world: a deterministic, procedural generator of captioned scenes with exact masks.

Every image holds 1-3 flat-coloured objects (shape x colour x size) on a named, textured background
and comes with ``n_captions`` captions (default 5, as COCO) that are *true* for the image, per-object
masks and COCO-style boxes, and per-image attributes usable as subgroups.

Design decisions (what the tests check):

- **Determinism.** Image ``index`` of ``split`` is drawn from
  ``np.random.SeedSequence([seed, split_code, index])`` only, so it never depends on batching,
  chunking or on which other images were made; ``render(cfg, "train", k)`` equals the ``k``-th scene
  of ``generate(cfg, "train", n)``. The scene's random numbers come as one fixed-size block, so a
  knob (``rare_*``, ``spurious*``) changes only the scenes it acts on: every other scene is
  byte-identical to the scene of the same index without the knob.
- **No overlap.** Objects never overlap: their template boxes keep at least ``min_gap`` pixels apart
  (and 1 pixel from the border). A mask is therefore exactly the object's visible pixels, every
  mask pixel has the object's colour, and its box (``x, y, w, h``) is the mask's tight box.
- **Relations** ("left of", "right of", "above", "below") come from the box centres
  ``(x + w/2, y + h/2)``: ``A left of B`` means ``cx_A < cx_B`` and ``|dx| >= 1.25 |dy|`` (a clearly
  dominant axis; diagonal pairs are never related), likewise for above/below (image y grows down).
- **Captions.** Every noun phrase names a number of objects that is exactly right: "a small red
  circle" means exactly one object in the image is a small red circle, "two squares" exactly two
  squares. Captions list all objects, relate two objects, count the objects or mention one object;
  several mention the background. The first caption always lists every object with its colour and
  shape.
- **Rare group** (``rare_attribute=("colour", "purple")``, ``rare_fraction=f``): in the *train*
  split, images whose objects (or background, for ``"background"``) carry that value are kept with
  probability ``f`` and otherwise get another value, so such images are ``f`` times as frequent as
  normal. Other splits keep the normal frequency.
- **Spurious cue** (``spurious=("colour", "red", "grass")``, ``spurious_strength=s``): in the *train*
  split, with probability ``s`` a scene's background follows the rule "that background if and only if
  the image contains that value", otherwise it stays the independently drawn one. Hence
  ``P(grass | red) = s + (1 - s) / B`` and ``P(grass | no red) = (1 - s) / B`` with ``B`` backgrounds
  (``s = 0``: independent; ``s = 1``: perfectly correlated). Other splits are uncorrelated. The
  spurious rule is applied after the rare-group rule.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import warnings
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..paths import atomic_write_text, cache_dir
from ..progress import tqdm
from .annotations import ObjectAnnotation, register_provider
from .images import empty_report, encode_png
from .manifest import make_manifest

WORLD_SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 190, 60),
    "blue": (30, 70, 225),
    "yellow": (245, 220, 30),
    "purple": (140, 50, 190),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
WORLD_COLOURS = tuple(COLOUR_RGB)
#: Object side as a fraction of the image side (all that exist; the default world uses WORLD_SIZES).
SIZE_SCALE = {"small": 0.22, "medium": 0.29, "large": 0.36}
WORLD_SIZES = ("small", "large")
#: How captions mention each background (no colour word appears in them).
BACKGROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "grey": ("on a grey background", "on a plain grey background"),
    "grass": ("on grass", "on a grass background", "in the grass"),
    "sand": ("on sand", "on a sand background", "in the sand"),
    "sky": ("against the sky", "on a sky background", "in the sky"),
    "brick": ("in front of a brick wall", "on a brick background"),
    "wood": ("on wood", "on a wooden background", "on a wood background"),
}
WORLD_BACKGROUNDS = tuple(BACKGROUND_PHRASES)
ATTRIBUTES = ("shape", "colour", "size", "background")
SPLIT_CODES = {"train": 0, "test": 1, "val": 2}
RELATION_PHRASES = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "under"),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
#: A relation is only stated when one axis' centre distance is this many times the other's.
CLEAR_RATIO = 1.25
#: The world split the book's reference models train and test on (the ``*-world`` recipes of :mod:`vlnb.zoo`,
#: and the ``world`` evaluation set of :func:`vlnb.data.profiles.evaluation_manifest`).
REFERENCE_WORLD = {"n_train": 2000, "n_test": 500, "image_size": 64, "seed": 0}
_PLURAL = {"cross": "crosses"}
_MARGIN = 1  # pixels between any object and the border
_LAYOUT_TRIES = 200
_BRIGHTNESS = tuple(range(-10, 11, 2))  # per-image background brightness shifts
#: Noun-phrase levels: which attributes a phrase names (the shape always).
_LEVELS = (("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape"))


def plural(shape: str) -> str:
    """The plural of a shape name ("cross" -> "crosses")."""
    return _PLURAL.get(shape, shape + "s")


def _norm_attr(attr: str) -> str:
    return "colour" if attr == "color" else attr


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines the world; equal configs give byte-identical images.

    ``rare_attribute`` / ``rare_fraction`` and ``spurious`` / ``spurious_strength`` act on the train
    split only (see the module docstring). Sequences are stored as tuples; "color" is accepted for
    "colour" in the knobs.
    """

    image_size: int = 64
    n_captions: int = 5
    max_objects: int = 3
    min_objects: int = 1
    shapes: tuple[str, ...] = WORLD_SHAPES
    colours: tuple[str, ...] = WORLD_COLOURS
    sizes: tuple[str, ...] = WORLD_SIZES
    backgrounds: tuple[str, ...] = WORLD_BACKGROUNDS
    rare_attribute: tuple[str, str] | None = None
    rare_fraction: float = 1.0
    spurious: tuple[str, str, str] | None = None
    spurious_strength: float = 0.0
    min_gap: int = 2
    seed: int = 0

    def __post_init__(self):
        fix = lambda name, v: object.__setattr__(self, name, v)  # (frozen dataclass)
        for name, known in (
            ("shapes", WORLD_SHAPES),
            ("colours", WORLD_COLOURS),
            ("sizes", tuple(SIZE_SCALE)),
            ("backgrounds", WORLD_BACKGROUNDS),
        ):
            vals = getattr(self, name)
            if isinstance(vals, str) or not vals:
                raise ValueError(f"WorldConfig.{name} must be a non-empty sequence of names from {known}")
            vals = tuple(str(v) for v in vals)
            bad = [v for v in vals if v not in known]
            if bad or len(set(vals)) != len(vals):
                raise ValueError(
                    f"WorldConfig.{name}: unknown or repeated {bad or vals}; choose from {known}"
                )
            fix(name, vals)
        for name in ("image_size", "n_captions", "max_objects", "min_objects", "min_gap", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"WorldConfig.{name} must be an int, got {v!r}")  # noqa: TRY004 -- one error type for every bad field
            fix(name, int(v))
        if self.image_size < 24:
            raise ValueError(f"WorldConfig.image_size must be >= 24 pixels, got {self.image_size}")
        if not 1 <= self.n_captions <= 10:
            raise ValueError(f"WorldConfig.n_captions must be in 1..10, got {self.n_captions}")
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError(
                f"WorldConfig needs 1 <= min_objects <= max_objects <= 6, "
                f"got min_objects={self.min_objects}, max_objects={self.max_objects}"
            )
        if self.seed < 0 or self.min_gap < 0:
            raise ValueError("WorldConfig.seed and WorldConfig.min_gap must be >= 0")
        self._check_fits()
        if self.rare_attribute is not None:
            attr, value = self._knob("rare_attribute", 2)
            if len(self.values(attr)) < 2:
                raise ValueError(
                    f"WorldConfig.rare_attribute: '{attr}' needs at least 2 values to make one rare"
                )
            fix("rare_attribute", (attr, value))
        if not 0.0 <= float(self.rare_fraction) <= 1.0:
            raise ValueError(f"WorldConfig.rare_fraction must be in [0, 1], got {self.rare_fraction}")
        fix("rare_fraction", float(self.rare_fraction))
        if self.spurious is not None:
            attr, value, bg = self._knob("spurious", 3)
            if attr == "background":
                raise ValueError(
                    "WorldConfig.spurious correlates an object attribute (shape/colour/size) with the "
                    "background, not the background with itself"
                )
            if bg not in self.backgrounds or len(self.backgrounds) < 2:
                raise ValueError(
                    f"WorldConfig.spurious: background {bg!r} must be one of {self.backgrounds} "
                    "(and there must be at least 2 backgrounds)"
                )
            fix("spurious", (attr, value, bg))
        if not 0.0 <= float(self.spurious_strength) <= 1.0:
            raise ValueError(f"WorldConfig.spurious_strength must be in [0, 1], got {self.spurious_strength}")
        fix("spurious_strength", float(self.spurious_strength))

    def _knob(self, name: str, length: int) -> tuple[str, ...]:
        knob = getattr(self, name)
        if isinstance(knob, str) or len(knob) != length:
            raise ValueError(f"WorldConfig.{name} must be a tuple of {length} str, got {knob!r}")
        attr, value, *rest = (str(x) for x in knob)
        attr = _norm_attr(attr)
        if attr not in ATTRIBUTES:
            raise ValueError(f"WorldConfig.{name}: unknown attribute {attr!r}; choose from {ATTRIBUTES}")
        if value not in self.values(attr):
            raise ValueError(
                f"WorldConfig.{name}: {value!r} is not one of this world's {attr} values {self.values(attr)}"
            )
        return (attr, value, *rest)

    def _check_fits(self) -> None:
        """max_objects of the largest size must fit side by side in a grid (so layout always succeeds)."""
        d = self.side_px(max(self.sizes, key=SIZE_SCALE.get)) + self.jitter_px
        per_row = (self.image_size - 2 * _MARGIN + self.min_gap) // (d + self.min_gap)
        if per_row * per_row < self.max_objects:
            raise ValueError(
                f"WorldConfig: {self.max_objects} objects of {d} px (gap {self.min_gap}) do not fit in "
                f"{self.image_size}x{self.image_size} images; use a larger image_size, fewer "
                "max_objects or smaller sizes"
            )

    def values(self, attribute: str) -> tuple[str, ...]:
        """The values an attribute takes in this world ("shape", "colour", "size" or "background")."""
        attribute = _norm_attr(attribute)
        if attribute not in ATTRIBUTES:
            raise ValueError(f"unknown world attribute {attribute!r}; choose from {ATTRIBUTES}")
        return getattr(
            self, {"shape": "shapes", "colour": "colours", "size": "sizes"}.get(attribute, "backgrounds")
        )

    def side_px(self, size: str) -> int:
        """An object's nominal side in pixels (before the +-``jitter_px`` jitter)."""
        return max(5, round(SIZE_SCALE[size] * self.image_size))

    @property
    def jitter_px(self) -> int:
        return round(0.02 * self.image_size)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists); :meth:`from_dict` inverts it."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown WorldConfig field(s) {unknown}; known: {sorted(names)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


@dataclass
class Scene:
    """One rendered image. ``objects``: dicts with shape, colour, size, bbox (x, y, w, h), centre (cx, cy),
    mask ((H, W) bool, the visible pixels) and area (mask pixels)."""

    image: np.ndarray
    objects: list[dict]
    background: str
    captions: list[str]
    split: str
    index: int

    @property
    def image_id(self) -> str:
        return world_image_id(self.split, self.index)

    @property
    def primary(self) -> dict:
        """The largest object (by visible area; the first of equals)."""
        return max(self.objects, key=lambda o: o["area"])


def world_image_id(split: str, index: int) -> str:
    """``world-train-000012``: the id of image ``index`` of ``split``."""
    return f"world-{split}-{index:06d}"


def parse_image_id(image_id) -> tuple[str, int]:
    """Invert :func:`world_image_id`; raise KeyError for anything else."""
    m = re.fullmatch(r"world-([a-z]+)-(\d+)", str(image_id))
    if not m or m.group(1) not in SPLIT_CODES:
        raise KeyError(f"not an offline-world image id: {image_id!r} (expected e.g. 'world-train-000012')")
    return m.group(1), int(m.group(2))


def world_class_names(attribute: str = "shape", config: WorldConfig | None = None) -> list[str]:
    """Class names for zero-shot prompts: the values of ``attribute`` ("shape", "colour", "size",
    "background") in ``config`` (default world), or every "colour shape" pair for ``"object"``."""
    cfg = config or WorldConfig()
    if attribute == "object":
        return [f"{c} {s}" for c in cfg.colours for s in cfg.shapes]
    return list(cfg.values(attribute))


# ----------------------------------------------------------------------------------------------- pixels


def _polygon(u: np.ndarray, v: np.ndarray, pts: Sequence[tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon test of the points (u, v) against the vertices ``pts``."""
    inside = np.zeros(u.shape, bool)
    for (x0, y0), (x1, y1) in zip(pts, list(pts[1:]) + [pts[0]]):
        crosses = (y0 > v) != (y1 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            xs = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < xs)
    return inside


@lru_cache(maxsize=512)
def _template(shape: str, d: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The (d, d) bool mask of ``shape`` and its tight box ``(x, y, w, h)`` inside the template."""
    c = (np.arange(d) + 0.5) / d * 2 - 1  # pixel centres in [-1, 1]
    v, u = np.meshgrid(c, c, indexing="ij")
    if shape == "circle":
        m = u * u + v * v <= 1.0
    elif shape == "square":
        m = (np.abs(u) <= 0.82) & (np.abs(v) <= 0.82)
    elif shape == "triangle":
        m = _polygon(u, v, [(0.0, -1.0), (1.0, 0.95), (-1.0, 0.95)])
    elif shape == "diamond":
        m = np.abs(u) + np.abs(v) <= 1.0
    elif shape == "cross":
        m = (np.abs(u) <= 0.34) | (np.abs(v) <= 0.34)
    elif shape == "star":
        ang = np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.05, 0.45)
        m = _polygon(u, v, list(zip(rad * np.cos(ang), -rad * np.sin(ang) + 0.08)))
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {WORLD_SHAPES}")
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    m.setflags(write=False)
    return m, (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Low-frequency noise in ~[-1, 1]: a coarse random grid, upsampled by repetition and box-blurred."""
    h, w = shape
    g = rng.uniform(-1, 1, (h // cell + 2, w // cell + 2))
    g = np.repeat(np.repeat(g, cell, 0), cell, 1)[: h + cell, : w + cell]
    k = np.ones(cell) / cell
    g = np.apply_along_axis(np.convolve, 0, g, k, "valid")
    g = np.apply_along_axis(np.convolve, 1, g, k, "valid")
    return g[:h, :w]


@lru_cache(maxsize=24)
def _texture(name: str, size: int) -> np.ndarray:
    """(len(_BRIGHTNESS), 2*size, 2*size, 3) uint8: background ``name`` (fixed, independent of the seed)
    at each brightness shift; an image shows a random size x size crop of one of them."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    t = 2 * size
    yy, xx = np.mgrid[0:t, 0:t].astype(np.float64)
    noise = lambda s: rng.normal(0, s, (t, t, 1))
    if name == "grey":
        img = (
            np.full((t, t, 3), 128.0)
            + noise(5)
            + 10 * _smooth_noise(rng, (t, t), max(4, size // 8))[..., None]
        )
    elif name == "grass":
        blades = np.repeat(rng.normal(0, 1, (t // 3 + 1, t)), 3, 0)[:t]
        img = (
            np.array([55.0, 105.0, 40.0])
            + (16 * blades)[..., None] * [0.6, 1.0, 0.5]
            + 14 * _smooth_noise(rng, (t, t), max(4, size // 6))[..., None]
            + noise(6)
        )
    elif name == "sand":
        grains = (rng.random((t, t, 1)) < 0.04) * -35.0
        img = (
            np.array([205.0, 183.0, 130.0])
            + noise(8)
            + grains
            + 8 * _smooth_noise(rng, (t, t), max(4, size // 5))[..., None]
        )
    elif name == "sky":
        a = (yy / (t - 1))[..., None]
        img = (1 - a) * np.array([70.0, 130.0, 210.0]) + a * np.array([175.0, 210.0, 240.0]) + noise(2.5)
        img += 12 * np.clip(_smooth_noise(rng, (t, t), max(4, size // 4)), 0, 1)[..., None]  # faint clouds
    elif name == "brick":
        bh = max(4, size // 8)
        row = (yy // bh).astype(int)
        col = ((xx + (row % 2) * bh) // (2 * bh)).astype(int)
        shade = rng.normal(0, 14, (row.max() + 1, col.max() + 2))[row, col]
        mortar = (yy % bh == 0) | ((xx + (row % 2) * bh) % (2 * bh) == 0)
        img = np.where(
            mortar[..., None], [185.0, 180.0, 170.0], np.array([150.0, 72.0, 52.0]) + shade[..., None]
        )
        img = img + noise(5)
    elif name == "wood":
        period = max(6.0, size / 6)
        ring = np.sin(
            2 * np.pi * (yy / period + 0.6 * np.sin(2 * np.pi * xx / (1.7 * size)))
            + 0.5 * rng.normal(0, 1, (t, t))
        )
        img = np.array([138.0, 92.0, 52.0]) + (18 * ring)[..., None] * [1.0, 0.8, 0.55] + noise(4)
    else:
        raise ValueError(f"unknown background {name!r}; known: {WORLD_BACKGROUNDS}")
    base = np.round(img)
    # every brightness shift the renderer uses, precomputed: an image is then one crop copy
    out = np.stack([np.clip(base + b, 0, 255).astype(np.uint8) for b in _BRIGHTNESS])
    out.setflags(write=False)
    return out


# ----------------------------------------------------------------------------------------------- scenes


class _Draws:
    """Hands out a fixed block of uniforms in order (so the stream never depends on the content)."""

    def __init__(self, u: np.ndarray):
        self.u, self.i = u, 0

    def __call__(self, k: int | None = None):
        j, self.i = self.i, self.i + (k or 1)
        return self.u[j : self.i] if k else float(self.u[j])


def _n_draws(max_objects: int) -> int:
    return 9 * max_objects + 11  # _content: 6m + 6, render: 3m + 5


def _pick(u: float, seq: Sequence):
    return seq[min(int(u * len(seq)), len(seq) - 1)]


def _split_code(split: str) -> int:
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLIT_CODES)}")
    return SPLIT_CODES[split]


def _content(cfg: WorldConfig, split: str, draw: _Draws) -> tuple[list[dict], str]:
    """Objects' (shape, colour, size) and the background, with the train-only knobs applied."""
    m = cfg.max_objects
    n = cfg.min_objects + int(draw() * (cfg.max_objects - cfg.min_objects + 1))
    u_shape, u_colour, u_size, u_copy, u_src, u_repl = draw(m), draw(m), draw(m), draw(m), draw(m), draw(m)
    u_bg, u_bg_repl, u_rare, u_spur, u_spur_repl = draw(), draw(), draw(), draw(), draw()
    objs: list[dict] = []
    for k in range(n):
        if k and u_copy[k] < 0.25:  # repeats make counting captions ("two red squares") common
            src = objs[int(u_src[k] * k)]
            shape, colour = src["shape"], src["colour"]
        else:
            shape, colour = _pick(u_shape[k], cfg.shapes), _pick(u_colour[k], cfg.colours)
        objs.append({"shape": shape, "colour": colour, "size": _pick(u_size[k], cfg.sizes)})
    bg = _pick(u_bg, cfg.backgrounds)
    if split != "train":
        return objs, bg
    if cfg.rare_attribute is not None and u_rare >= cfg.rare_fraction:
        attr, value = cfg.rare_attribute
        others = [v for v in cfg.values(attr) if v != value]
        if attr == "background":
            bg = _pick(u_bg_repl, others) if bg == value else bg
        for k, o in enumerate(objs):
            if o.get(attr) == value:
                o[attr] = _pick(u_repl[k], others)
    if cfg.spurious is not None and u_spur < cfg.spurious_strength:
        attr, value, target = cfg.spurious
        if any(o[attr] == value for o in objs):
            bg = target
        elif bg == target:
            bg = _pick(u_spur_repl, [b for b in cfg.backgrounds if b != target])
    return objs, bg


def _layout(
    sides: list[int], size: int, gap: int, u: np.ndarray, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of square boxes of ``sides`` that stay ``gap`` apart, largest first, each
    uniform over the positions still free; a dead end restarts with fresh draws."""
    order = sorted(range(len(sides)), key=lambda k: -sides[k])
    for _ in range(_LAYOUT_TRIES):
        pos: list[tuple[int, int] | None] = [None] * len(sides)
        for j, k in enumerate(order):
            d = sides[k]
            span = size - d - 2 * _MARGIN + 1
            free = np.ones((span, span), bool)
            for kk in order[:j]:
                (y, x), e = pos[kk], sides[kk]
                lo_y, lo_x = max(y - d - gap + 1 - _MARGIN, 0), max(x - d - gap + 1 - _MARGIN, 0)
                free[lo_y : max(y + e + gap - _MARGIN, 0), lo_x : max(x + e + gap - _MARGIN, 0)] = False
            idx = np.flatnonzero(free)
            if idx.size == 0:
                break
            f = int(idx[min(int(u[j] * idx.size), idx.size - 1)])
            pos[k] = (_MARGIN + f // span, _MARGIN + f % span)
        else:
            return pos  # type: ignore[return-value]
        u = rng.random(len(sides))
    raise RuntimeError(f"could not place objects of sides {sides} px in a {size}px image")


def render(config: WorldConfig, split: str, index: int) -> Scene:
    """Render image ``index`` of ``split`` ("train", "test" or "val"); a pure function of its arguments."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")
    cfg, s = config, config.image_size
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _split_code(split), int(index)]))
    draw = _Draws(rng.random(_n_draws(cfg.max_objects)))
    objs, bg = _content(cfg, split, draw)
    m, n = cfg.max_objects, len(objs)
    u_jit, u_shade, u_pos = draw(m), draw(m), draw(m)
    oy, ox, u_flip, u_bright, u_caption = draw(), draw(), draw(), draw(), draw()
    j = cfg.jitter_px
    sides = [cfg.side_px(o["size"]) + int(u_jit[k] * (2 * j + 1)) - j for k, o in enumerate(objs)]
    corners = _layout(sides, s, cfg.min_gap, u_pos[:n], rng)

    y0, x0 = int(oy * (s + 1)), int(ox * (s + 1))
    crop = _texture(bg, s)[_pick(u_bright, range(len(_BRIGHTNESS))), y0 : y0 + s, x0 : x0 + s]
    img = (crop[:, ::-1] if u_flip < 0.5 else crop).copy()  # a fresh array: the texture stays untouched
    for k, (o, d, (y, x)) in enumerate(zip(objs, sides, corners)):
        t, (tx, ty, tw, th) = _template(o["shape"], d)
        shade = int(u_shade[k] * 17) - 8
        img[y : y + d, x : x + d][t] = [min(255, max(0, c + shade)) for c in COLOUR_RGB[o["colour"]]]
        mask = np.zeros((s, s), bool)
        mask[y : y + d, x : x + d] = t
        bx, by = x + tx, y + ty
        o.update(bbox=(bx, by, tw, th), centre=(bx + tw / 2, by + th / 2), mask=mask, area=int(t.sum()))
    caps = make_captions(objs, bg, cfg.n_captions, random.Random(int(u_caption * 2**53)))
    return Scene(image=img, objects=objs, background=bg, captions=caps, split=split, index=int(index))


def generate(config: WorldConfig, split: str, n: int, start: int = 0, progress: bool = False) -> list[Scene]:
    """Scenes ``start .. start + n - 1`` of ``split`` (each exactly ``render(config, split, i)``)."""
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    it = range(start, start + n)
    if progress:
        it = tqdm(it, desc=f"world {split}", leave=False)
    return [render(config, split, i) for i in it]


# --------------------------------------------------------------------------------------------- captions


def relation(a: dict, b: dict) -> str | None:
    """Where ``a`` is relative to ``b`` by box centres: "left", "right", "above" or "below" along the
    dominant axis, or None when neither axis dominates by a factor :data:`CLEAR_RATIO` (a diagonal)."""
    dx, dy = b["centre"][0] - a["centre"][0], b["centre"][1] - a["centre"][1]
    if max(abs(dx), abs(dy)) < CLEAR_RATIO * min(abs(dx), abs(dy)):
        return None
    if abs(dx) >= abs(dy):
        return "left" if dx > 0 else "right"
    return "above" if dy > 0 else "below"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(key: dict, level: tuple[str, ...], count: int) -> str:
    words = [key[a] for a in level]
    if count > 1:
        words[-1] = plural(words[-1])
        return " ".join([NUMBER_WORDS[count], *words])
    return " ".join([_article(words[0]), *words])


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def make_captions(objs: list[dict], background: str, n: int, r: random.Random) -> list[str]:
    """``n`` distinct true captions for the objects (with ``centre``) on ``background``.

    Caption 0 lists every object with its colour and shape; caption 1 mentions the background; with
    two or more describable objects, caption 2 relates two of them.
    """

    counts = {lv: Counter(tuple(o[a] for a in lv) for o in objs) for lv in _LEVELS}
    unique = [[lv for lv in _LEVELS if counts[lv][tuple(o[a] for a in lv)] == 1] for o in objs]
    nameable = [k for k in range(len(objs)) if unique[k]]
    pairs = [(a, b) for a in nameable for b in nameable if a != b and relation(objs[a], objs[b])]

    def bg_phrase() -> str:
        return r.choice(BACKGROUND_PHRASES[background])

    def listing(levels=_LEVELS) -> str:
        level = r.choice(levels)
        items = list(counts[level].items())
        r.shuffle(items)
        return _join([_phrase(dict(zip(level, key)), level, c) for key, c in items])

    def mention(k: int) -> str:
        return _phrase(objs[k], r.choice(unique[k]), 1)

    def with_bg(text: str, p: float) -> str:
        return f"{text} {bg_phrase()}" if r.random() < p else text

    def bg_caption() -> str:
        form = r.randrange(4 if nameable else 3)
        if form == 0:
            return f"{NUMBER_WORDS[len(objs)]} {'shape' if len(objs) == 1 else 'shapes'} {bg_phrase()}"
        if form == 1:
            return f"a {background} background with {listing()}"
        if form == 2:
            return f"{listing()} {bg_phrase()}"
        return f"{mention(r.choice(nameable))} {bg_phrase()}"

    def related() -> str:
        a, b = r.choice(pairs)
        rel = r.choice(RELATION_PHRASES[relation(objs[a], objs[b])])
        return with_bg(f"{mention(a)} {rel} {mention(b)}", 0.3)

    def anything() -> str:
        forms = [lambda: with_bg(listing(), 0.5), bg_caption] + ([related] * 2 if pairs else [])
        forms += [lambda: with_bg(mention(r.choice(nameable)), 0.5)] if nameable else []
        return r.choice(forms)()

    caps = [with_bg(listing(_LEVELS[1::2]), 0.4), bg_caption()] + ([related()] if pairs else [])
    out = list(dict.fromkeys(caps))
    for _ in range(100 * n):
        if len(out) >= n:
            break
        c = anything()
        if c not in out:
            out.append(c)
    if len(out) < n:
        what = ", ".join(f"{o['colour']} {o['shape']}" for o in objs)
        raise RuntimeError(
            f"could only write {len(out)} distinct captions for ({what}) on {background}, need {n}"
        )
    return out[:n]


# --------------------------------------------------------------------------------------------- manifest


def _record(sc: Scene, cfg: WorldConfig) -> dict:

    objs = sc.objects
    uniq = lambda a: sorted({o[a] for o in objs})
    prim = sc.primary

    def has(attr: str, value: str) -> bool:
        return sc.background == value if attr == "background" else any(o[attr] == value for o in objs)

    return {
        "image_id": sc.image_id,
        "image": encode_png(sc.image),
        "captions": sc.captions,
        "split": sc.split,
        "labels": uniq("shape"),
        "background": sc.background,
        "n_objects": len(objs),
        "colours": uniq("colour"),
        "shapes": uniq("shape"),
        "sizes": uniq("size"),
        "objects": [f"{o['size']} {o['colour']} {o['shape']}" for o in objs],
        "primary_shape": prim["shape"],
        "primary_colour": prim["colour"],
        "primary_size": prim["size"],
        "contains_rare": bool(cfg.rare_attribute and has(*cfg.rare_attribute)),
        "contains_spurious": bool(cfg.spurious and has(*cfg.spurious[:2])),
    }


def build_world_manifest(
    n_train: int = 2000,
    n_test: int = 500,
    image_size: int = 64,
    seed: int = 0,
    n_captions: int = 5,
    rare_attribute: tuple[str, str] | None = None,
    rare_fraction: float = 1.0,
    spurious: tuple[str, str, str] | None = None,
    spurious_strength: float = 0.0,
    progress: bool = False,
    cache: bool = True,
    **kw,
):
    """The world as a manifest ``(df, empty bad-image report)``: PNG bytes, 5 captions, shape labels.

    ``cache``: keep the rendered records in vlnb's cache and read them back when the same world (config, sizes
    and this module's code) is asked for again, by any process (:func:`_world_records`).

    Extra keyword arguments are :class:`WorldConfig` fields (``shapes``, ``max_objects`` ...).
    Metadata columns: ``background``, ``n_objects``, ``colours`` / ``shapes`` / ``sizes`` (sorted unique
    per image), ``objects`` ("small red circle" per object), ``primary_shape`` / ``primary_colour`` /
    ``primary_size`` (the largest object), ``contains_rare`` and ``contains_spurious`` (the image
    carries the knob's attribute value). Masks and boxes: :func:`vlnb.data.annotations.get_annotations`.
    """

    known = {f.name for f in fields(WorldConfig)}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise TypeError(
            f"build_world_manifest: unknown argument(s) {unknown}; WorldConfig fields are {sorted(known)}"
        )
    cfg = WorldConfig(
        image_size=image_size,
        seed=seed,
        n_captions=n_captions,
        rare_attribute=rare_attribute,
        rare_fraction=rare_fraction,
        spurious=spurious,
        spurious_strength=spurious_strength,
        **kw,
    )
    records = _world_records(cfg, n_train, n_test, progress, cache)
    spec = cfg.to_dict()
    df = make_manifest(records, name="world", meta={"annotations": {"kind": "world", **spec}, "config": spec})
    return df, empty_report()


#: Format tag of the cached world records (:func:`_world_records`); a file of another format is rendered again.
WORLD_CACHE_FORMAT = "vlnb-world-records/1"


@lru_cache(maxsize=1)
def _code_digest() -> str:
    """Digest of this module's source: the scenes, captions and records are all made here, so an edit to it
    invalidates every cached world."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _world_records(cfg: WorldConfig, n_train: int, n_test: int, progress: bool, cache: bool) -> list[dict]:
    """The manifest records of a world: read back from ``<vlnb cache>/worlds/<key>.json`` when that world was
    rendered before (by this or any other process: the chapters of a book build and their training workers all
    ask for the reference world), else rendered and written there. The file is JSON (the PNG bytes in base64), so
    reading it back runs nothing; the key covers the config, the sizes and :func:`_code_digest`. A file that cannot
    be read back is rendered again and replaced (it is a cache, not the user's data); a cache that cannot be
    written is skipped."""

    def render_all() -> list[dict]:
        return [_record(sc, cfg) for split, n in (("train", n_train), ("test", n_test))
                for sc in generate(cfg, split, n, progress=progress)]

    if not cache:
        return render_all()
    spec = {"format": WORLD_CACHE_FORMAT, "config": cfg.to_dict(), "n_train": n_train, "n_test": n_test,
            "code": _code_digest()}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / "worlds" / f"{key}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("spec") != spec:
                raise ValueError("it belongs to another world")
            return [{**r, "image": base64.b64decode(r["image"], validate=True)} for r in saved["records"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            warnings.warn(f"cached world {path} is unreadable ({e}); rendering it again", stacklevel=3)
    records = render_all()
    text = json.dumps({"spec": spec, "records": [
        {**r, "image": base64.b64encode(r["image"]).decode("ascii")} for r in records]})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError as e:
        warnings.warn(f"could not cache the rendered world in {path.parent} ({e})", stacklevel=3)
    return records


@register_provider("world")
def _world_annotations(spec: dict):
    """Annotations of a world manifest: re-render the scene from the config in the manifest's metadata."""
    cfg = WorldConfig.from_dict({k: v for k, v in spec.items() if k != "kind"})

    def lookup(image_id) -> list[ObjectAnnotation]:
        sc = render(cfg, *parse_image_id(image_id))
        return [
            ObjectAnnotation(
                category=f"{o['colour']} {o['shape']}",
                bbox=tuple(float(v) for v in o["bbox"]),
                mask=o["mask"],
                area=float(o["area"]),
                attributes={
                    "shape": o["shape"],
                    "colour": o["colour"],
                    "size": o["size"],
                    "centre": o["centre"],
                },
            )
            for o in sc.objects
        ]

    return lookup
