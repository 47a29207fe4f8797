"""Hard negative captions: the offline world's grammar-checked foils, and ARO-style word-order shuffles.

**World negatives** (:func:`world_negatives`). For each test image the probe writes a *true* caption in
the world's own grammar and foils of one kind at a time:

- ``attribute swap`` -- the colours of two noun phrases of the full listing are exchanged
  ("a red circle and a blue square" -> "a blue circle and a red square");
- ``relation swap`` -- the two arguments of a spatial relation are exchanged ("A left of B" -> "B left of A");
- ``count change`` -- one noun phrase's count goes one up or down ("two red squares" -> "three red squares");
- ``object replacement`` -- one shape is replaced by a shape the image does not hold (the easy control);
- ``colour replacement`` -- one colour is replaced by a colour the image does not hold (a second control:
  a model that sees colours but not shapes passes this one and fails the first).

Every caption -- true and foil -- is then *parsed back* from its text (:func:`parse_caption`) and checked
against the scene (:func:`caption_holds`), independently of how it was written. A foil is kept only when
its text differs from the true caption, the true caption holds, and the foil does not: swapping two equal
colours, or the arguments of a relation between two identically described objects, yields the same or a
true caption and is dropped. :func:`world_negatives` returns the kept pairs and a per-type report of what
was dropped and why.

Semantics (those of :mod:`vlnb.data.world`'s captions): a noun phrase "a small red circle" / "two red
squares" holds when *exactly* that many objects match all its attributes; a listing holds when each of
its phrases does; "A left of B" when A and B each name exactly one object and the relation of their box
centres (:func:`vlnb.data.world.relation`) is "left"; "three shapes" when there are three objects; a
background phrase when the background is that one. A foil is checked against this (non-exhaustive)
reading, so a kept foil is false under any stricter reading too.

**ARO word-order shuffles** (:func:`order_perturbations`), after Yuksekgonul et al. (ICLR 2023),
COCO-Order / Flickr30k-Order: shuffle the nouns and (separately) the adjectives; shuffle everything but
the nouns and adjectives; shuffle the words within each trigram; shuffle the trigrams. ARO tags words with
spaCy's ``en_core_web_sm``, a model download that is impossible offline; nltk's tagger needs data packages
that no wheel ships either. vlnb tags with a closed word list instead (:data:`ADJECTIVES`, function
words, and "everything else is a noun"), written for caption English: it is deterministic and offline,
and it errs in the same direction as a real tagger on captions (verbs such as "riding" count as nouns
here, as spaCy often tags gerunds in captions as NN). ARO tokenises with nltk's punkt for the trigram
shuffles; vlnb splits on whitespace after dropping punctuation, like ARO's ``pre_caption``. Every
perturbation keeps the word multiset; one equal to the original after ``max_tries`` reshuffles is
reported as such (``changed=False``) rather than silently kept.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .world import (
    BACKGROUND_PHRASES,
    COLOUR_RGB,
    NUMBER_WORDS,
    RELATION_PHRASES,
    SIZE_SCALE,
    WORLD_SHAPES,
    Scene,
    WorldConfig,
    parse_image_id,
    plural,
    relation,
    render,
)

#: The negative types of the world probe, in table order (object replacement is the easy control).
NEGATIVE_TYPES = ("attribute swap", "relation swap", "count change", "object replacement", "colour replacement")


class CaptionParseError(ValueError):
    """A caption that is not in the world's grammar."""


# --------------------------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class NounPhrase:
    """``count`` objects with the given attributes (``None`` = not named)."""

    count: int
    shape: str
    colour: str | None = None
    size: str | None = None

    def text(self) -> str:
        words = [w for w in (self.size, self.colour) if w] + [self.shape if self.count == 1 else plural(self.shape)]
        if self.count == 1:
            return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)
        return " ".join([NUMBER_WORDS[self.count], *words])

    def matches(self, obj: dict) -> bool:
        return (obj["shape"] == self.shape and (self.colour is None or obj["colour"] == self.colour)
                and (self.size is None or obj["size"] == self.size))

    def holds(self, objects: Sequence[dict]) -> bool:
        return sum(self.matches(o) for o in objects) == self.count


@dataclass(frozen=True)
class Claim:
    """What a world caption asserts (see the module docstring for the semantics)."""

    phrases: tuple[NounPhrase, ...] = ()
    relation: tuple[NounPhrase, str, NounPhrase] | None = None
    total: int | None = None
    background: str | None = None

    def holds(self, objects: Sequence[dict], background: str) -> bool:
        if self.background is not None and self.background != background:
            return False
        if self.total is not None and self.total != len(objects):
            return False
        if not all(p.holds(objects) for p in self.phrases):
            return False
        if self.relation is not None:
            a, rel, b = self.relation
            if a.count != 1 or b.count != 1 or not (a.holds(objects) and b.holds(objects)):
                return False
            oa = next(o for o in objects if a.matches(o))
            ob = next(o for o in objects if b.matches(o))
            return oa is not ob and relation(oa, ob) == rel
        return True


_SINGULAR = {plural(s): s for s in WORLD_SHAPES}
_REL_WORDS = {p: k for k, ps in RELATION_PHRASES.items() for p in ps}
_REL_RE = re.compile(r"^(.+?) (" + "|".join(sorted(map(re.escape, _REL_WORDS), key=len, reverse=True)) + r") (.+)$")
_BG_SUFFIX = sorted(((p, bg) for bg, ps in BACKGROUND_PHRASES.items() for p in ps), key=lambda t: -len(t[0]))


def _noun_phrase(text: str, caption: str) -> NounPhrase:
    words = text.split()
    if len(words) < 2:
        raise CaptionParseError(f"caption {caption!r}: {text!r} is not a noun phrase")
    head, *mods, noun = words
    if head in ("a", "an"):
        count, shape = 1, noun
    elif head in NUMBER_WORDS[2:]:
        count, shape = NUMBER_WORDS.index(head), _SINGULAR.get(noun)
    else:
        raise CaptionParseError(f"caption {caption!r}: noun phrase {text!r} starts with {head!r}, not a/an/a number")
    if shape not in WORLD_SHAPES:
        raise CaptionParseError(f"caption {caption!r}: {noun!r} is not a shape (in the right number) in {text!r}")
    size = colour = None
    for w in mods:
        if w in SIZE_SCALE and size is None and colour is None:
            size = w
        elif w in COLOUR_RGB and colour is None:
            colour = w
        else:
            raise CaptionParseError(f"caption {caption!r}: unexpected word {w!r} in noun phrase {text!r}")
    return NounPhrase(count, shape, colour, size)


def _listing(text: str, caption: str) -> tuple[NounPhrase, ...]:
    parts = text.split(", ")
    last = parts.pop().split(" and ")
    if len(last) > 2 or (parts and len(last) != 2):
        raise CaptionParseError(f"caption {caption!r}: cannot split {text!r} into noun phrases")
    return tuple(_noun_phrase(p, caption) for p in [*parts, *last])


def parse_caption(caption: str) -> Claim:
    """The :class:`Claim` of a world caption; :class:`CaptionParseError` (naming the caption) otherwise."""
    if not isinstance(caption, str) or not caption.strip():
        raise CaptionParseError(f"caption {caption!r}: not a non-empty string")
    text, bg = " ".join(caption.split()), None
    for phrase, name in _BG_SUFFIX:
        if text.endswith(" " + phrase):
            text, bg = text[: -len(phrase) - 1], name
            break
    m = re.fullmatch(r"a (\w+) background with (.+)", text)
    if m:
        if bg is not None or m.group(1) not in BACKGROUND_PHRASES:
            raise CaptionParseError(f"caption {caption!r}: unknown or repeated background {m.group(1)!r}")
        bg, text = m.group(1), m.group(2)
    m = re.fullmatch(r"(\w+) shapes?", text)
    if m:
        if m.group(1) not in NUMBER_WORDS:
            raise CaptionParseError(f"caption {caption!r}: {m.group(1)!r} is not a number word")
        return Claim(total=NUMBER_WORDS.index(m.group(1)), background=bg)
    m = _REL_RE.fullmatch(text)
    if m:
        a, b = _noun_phrase(m.group(1), caption), _noun_phrase(m.group(3), caption)
        return Claim(relation=(a, _REL_WORDS[m.group(2)], b), background=bg)
    return Claim(phrases=_listing(text, caption), background=bg)


def caption_holds(caption: str, objects: Sequence[dict], background: str) -> bool:
    """Whether the world caption is true of a scene's ``objects`` (dicts with shape, colour, size and
    centre, as :class:`vlnb.data.world.Scene`) on ``background``."""
    return parse_caption(caption).holds(objects, background)


# --------------------------------------------------------------------------------------------- world foils
def _groups(objects: Sequence[dict]) -> list[NounPhrase]:
    """The full listing at colour+shape level, one phrase per distinct (colour, shape), in object order."""
    counts = Counter((o["colour"], o["shape"]) for o in objects)
    return [NounPhrase(counts[k], k[1], k[0]) for k in dict.fromkeys((o["colour"], o["shape"]) for o in objects)]


def _join(phrases: Sequence[NounPhrase]) -> str:
    t = [p.text() for p in phrases]
    return t[0] if len(t) == 1 else ", ".join(t[:-1]) + " and " + t[-1]


def _mention(obj: dict, objects: Sequence[dict]) -> NounPhrase:
    """The shortest colour-first phrase naming ``obj`` alone; colour+shape when none does (then the caption
    is not true and the pair is dropped)."""
    for level in (("colour",), ("colour", "size"), (), ("size",)):
        p = NounPhrase(1, obj["shape"], obj["colour"] if "colour" in level else None,
                       obj["size"] if "size" in level else None)
        if p.holds(objects):
            return p
    return NounPhrase(1, obj["shape"], obj["colour"])


def _candidates(sc: Scene, kind: str, rng: random.Random) -> list[tuple[str, str]]:
    """(true caption, foil) candidates of one type for one scene, before checking."""
    objs, groups = sc.objects, _groups(sc.objects)
    true_listing = _join(groups)
    out = []
    if kind == "attribute swap":
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                g = list(groups)
                a, b = g[i], g[j]
                g[i], g[j] = NounPhrase(a.count, a.shape, b.colour), NounPhrase(b.count, b.shape, a.colour)
                out.append((true_listing, _join(g)))
    elif kind == "relation swap":
        for i, a in enumerate(objs):
            for j in range(i + 1, len(objs)):
                rel = relation(a, objs[j])
                if rel is None:
                    continue
                pa, pb = _mention(a, objs), _mention(objs[j], objs)
                words = RELATION_PHRASES[rel][0]
                out.append((f"{pa.text()} {words} {pb.text()}", f"{pb.text()} {words} {pa.text()}"))
    elif kind == "count change":
        for i, g in enumerate(groups):
            for c in (g.count - 1, g.count + 1):
                if 1 <= c < len(NUMBER_WORDS):
                    changed = list(groups)
                    changed[i] = NounPhrase(c, g.shape, g.colour)
                    out.append((true_listing, _join(changed)))
    elif kind == "object replacement":
        absent = [s for s in WORLD_SHAPES if s not in {o["shape"] for o in objs}]
        for i, g in enumerate(groups):
            if absent:
                changed = list(groups)
                changed[i] = NounPhrase(g.count, rng.choice(absent), g.colour)
                out.append((true_listing, _join(changed)))
    elif kind == "colour replacement":
        absent = [c for c in COLOUR_RGB if c not in {o["colour"] for o in objs}]
        for i, g in enumerate(groups):
            changed = list(groups)
            changed[i] = NounPhrase(g.count, g.shape, rng.choice(absent))
            out.append((true_listing, _join(changed)))
    else:
        raise ValueError(f"unknown negative type {kind!r}; choose from {NEGATIVE_TYPES}")
    return out


def world_negatives(
    scenes: Sequence[Scene], types: Sequence[str] = NEGATIVE_TYPES, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Checked (true caption, foil) pairs of the world probe and the report of dropped candidates.

    Returns ``items`` -- one row per kept pair: ``image_id, scene (position in scenes), type, true_caption,
    negative`` -- and ``report`` -- per type: ``images`` (with at least one kept pair), ``candidates``,
    ``dropped_identical`` (the foil's text equals the true caption), ``dropped_true_not_true`` (the true
    caption does not hold, e.g. two identical objects named as one), ``dropped_not_false`` (the foil
    holds), ``kept``.
    """
    unknown = [t for t in types if t not in NEGATIVE_TYPES]
    if unknown:
        raise ValueError(f"unknown negative type(s) {unknown}; choose from {NEGATIVE_TYPES}")
    rows, report = [], {t: Counter() for t in types}
    for pos, sc in enumerate(scenes):
        for kind in types:
            rng = random.Random(f"{seed}|{sc.image_id}|{kind}")
            kept_any = False
            for true, neg in _candidates(sc, kind, rng):
                r = report[kind]
                r["candidates"] += 1
                if neg == true:
                    r["dropped_identical"] += 1
                elif not caption_holds(true, sc.objects, sc.background):
                    r["dropped_true_not_true"] += 1
                elif caption_holds(neg, sc.objects, sc.background):
                    r["dropped_not_false"] += 1
                else:
                    r["kept"] += 1
                    kept_any = True
                    rows.append({"image_id": sc.image_id, "scene": pos, "type": kind, "true_caption": true,
                                 "negative": neg})
            report[kind]["images"] += int(kept_any)
    cols = ["images", "candidates", "dropped_identical", "dropped_true_not_true", "dropped_not_false", "kept"]
    rep = pd.DataFrame([{"type": t, **{c: int(report[t][c]) for c in cols}} for t in types])
    items = pd.DataFrame(rows, columns=["image_id", "scene", "type", "true_caption", "negative"])
    return items, rep


def _split_background(caption: str) -> tuple[str, str, str]:
    """``(prefix, core, suffix)``: a caption's background wording around its noun phrases / relation."""
    text = " ".join(caption.split())
    for phrase, _ in _BG_SUFFIX:
        if text.endswith(" " + phrase):
            return "", text[: -len(phrase) - 1], " " + phrase
    m = re.fullmatch(r"(a \w+ background with )(.+)", text)
    return (m.group(1), m.group(2), "") if m else ("", text, "")


def swap_foils(caption: str) -> list[str]:
    """Every swap foil of a world caption, in its own wording: the two arguments of its relation exchanged,
    or the colours (else the sizes) of two of its noun phrases exchanged. Unchecked -- see :func:`caption_foil`.
    """
    prefix, core, suffix = _split_background(caption)
    m = _REL_RE.fullmatch(core)
    if m:
        return [f"{prefix}{m.group(3)} {m.group(2)} {m.group(1)}{suffix}"]
    try:
        phrases = list(_listing(core, caption))
    except CaptionParseError:
        return []
    out = []
    for attr in ("colour", "size"):
        for i in range(len(phrases)):
            for j in range(i + 1, len(phrases)):
                a, b = phrases[i], phrases[j]
                va, vb = getattr(a, attr), getattr(b, attr)
                if va is None or vb is None or va == vb:
                    continue
                g = list(phrases)
                g[i], g[j] = (NounPhrase(a.count, a.shape, **{**_attrs(a), attr: vb}),
                              NounPhrase(b.count, b.shape, **{**_attrs(b), attr: va}))
                out.append(prefix + _join(g) + suffix)
        if out:
            break
    return out


def _attrs(p: NounPhrase) -> dict:
    return {"colour": p.colour, "size": p.size}


def caption_foil(caption: str, scene: Scene, rng: random.Random) -> str | None:
    """One swap foil of ``caption`` (:func:`swap_foils`) that is false for ``scene``, or None when it has none
    (NegCLIP's composition-aware hard negative, checked against the scene like the probe's)."""
    foils = [f for f in swap_foils(caption) if f != caption and not caption_holds(f, scene.objects, scene.background)]
    return rng.choice(foils) if foils else None


def world_scenes(manifest: pd.DataFrame) -> list[Scene]:
    """The scenes of a world manifest's images, re-rendered from the config in its metadata."""
    spec = dict(manifest.attrs.get("vlnb", {}).get("config") or {})
    if not spec:
        name = manifest.attrs.get("vlnb", {}).get("name", "?")
        raise ValueError(f"manifest '{name}' carries no world config (attrs['vlnb']['config']): not a world manifest")
    cfg = WorldConfig.from_dict(spec)
    return [render(cfg, *parse_image_id(i)) for i in manifest["image_id"]]


# --------------------------------------------------------------------------------------------- ARO order
#: ARO's four COCO-Order perturbations, in its order.
ORDER_PERTURBATIONS = ("shuffle nouns and adjectives", "shuffle all but nouns and adjectives",
                       "shuffle within trigrams", "shuffle trigrams")

#: Closed-class words of caption English (tagged neither noun nor adjective).
FUNCTION_WORDS = frozenset(re.findall(r"\S+", """
a an the this that these those some any each every no another other both all either neither its his her
their our my your one two three four five six seven eight nine ten several many few more most much
is are was were be been being has have had do does did will would can could may might shall should
and or but nor so yet if while as than then there here where when who whom whose which what how why
of in on at by for with without from to into onto over under above below behind beside besides between
among near next through across along around about against up down out off inside outside upon toward
towards during before after beneath underneath within like via per it they them he she we you i
not very too also just only still while
"""))

#: Adjectives common in captions (colours, sizes, qualities); everything not listed and not a function word
#: is tagged a noun.
ADJECTIVES = frozenset(re.findall(r"\S+", """
red green blue yellow purple orange white black brown grey gray pink tan silver golden gold dark light
bright colorful colourful large small big little tiny huge giant tall short long wide narrow thick thin
old new young empty full open closed clean dirty wet dry hot cold warm fresh wooden metal plastic glass
stone paper leather busy quiet crowded sunny cloudy snowy grassy sandy rocky muddy shiny fancy pretty
beautiful cute happy sad nice good great lush high low round square flat modern antique vintage
several various many different same other double single tan striped spotted plaid stuffed frosted
fried grilled baked sliced cooked raw ripe green-and-white black-and-white
"""))


def _words(caption: str) -> list[str]:
    """Lower-cased words without punctuation (ARO's ``pre_caption`` strips punctuation the same way)."""
    return re.sub(r"[^\w\s'-]", " ", str(caption).lower()).split()


def pos_tags(words: Sequence[str]) -> list[str]:
    """``"NOUN"``, ``"ADJ"`` or ``"OTHER"`` per word from the closed lists above (see the module docstring)."""
    return ["ADJ" if w in ADJECTIVES else "OTHER" if w in FUNCTION_WORDS or w.isdigit() else "NOUN" for w in words]


def _shuffle_at(words: list[str], idx: list[int], rng: np.random.Generator) -> list[str]:
    out = list(words)
    for j, k in zip(idx, rng.permutation(idx).tolist()):
        out[j] = words[k]
    return out


def _trigrams(words: list[str]) -> list[list[str]]:
    return [words[i : i + 3] for i in range(0, len(words), 3)]


def _perturb_once(kind: str, words: list[str], rng: np.random.Generator) -> list[str]:
    tags = pos_tags(words)
    if kind == "shuffle nouns and adjectives":  # nouns among nouns, adjectives among adjectives
        out = _shuffle_at(words, [i for i, t in enumerate(tags) if t == "NOUN"], rng)
        return _shuffle_at(out, [i for i, t in enumerate(tags) if t == "ADJ"], rng)
    if kind == "shuffle all but nouns and adjectives":
        return _shuffle_at(words, [i for i, t in enumerate(tags) if t == "OTHER"], rng)
    if kind == "shuffle within trigrams":
        return [w for tri in _trigrams(words) for w in (tri[k] for k in rng.permutation(len(tri)))]
    if kind == "shuffle trigrams":
        tris = _trigrams(words)
        return [w for k in rng.permutation(len(tris)) for w in tris[k]]
    raise ValueError(f"unknown perturbation {kind!r}; choose from {ORDER_PERTURBATIONS}")


def perturb_order(caption: str, kind: str, seed: int = 0, max_tries: int = 20) -> tuple[str, bool]:
    """``(perturbed caption, changed)``: one ARO-style shuffle of ``caption`` (lower-cased, no punctuation).

    Reshuffles (up to ``max_tries`` times) while the result equals the original; ``changed`` is False when
    it never differed (e.g. a caption with a single noun has nothing to shuffle among its nouns).
    """
    words = _words(caption)
    rng = np.random.default_rng([int(seed), *[ord(c) for c in kind[:12]]])
    out = words
    for _ in range(max(1, max_tries)):
        out = _perturb_once(kind, words, rng)
        if out != words:
            return " ".join(out), True
    return " ".join(out), False


def order_perturbations(captions: Sequence[str], image_ids: Sequence | None = None, seed: int = 0,
                        kinds: Sequence[str] = ORDER_PERTURBATIONS) -> pd.DataFrame:
    """ARO COCO-Order test cases: per caption, the (normalised) original and one perturbation of each kind.

    Columns ``case, image_id, caption (normalised original), type, perturbed, changed``; ``case`` numbers
    the captions. Seeds are ``(seed, case)``, so a caption's perturbations do not depend on the others.
    """
    bad = [k for k in kinds if k not in ORDER_PERTURBATIONS]
    if bad:
        raise ValueError(f"unknown perturbation(s) {bad}; choose from {ORDER_PERTURBATIONS}")
    ids = list(image_ids) if image_ids is not None else list(range(len(captions)))
    if len(ids) != len(captions):
        raise ValueError(f"{len(captions)} captions but {len(ids)} image ids")
    rows = []
    for case, (cap, iid) in enumerate(zip(captions, ids)):
        orig = " ".join(_words(cap))
        for kind in kinds:
            pert, changed = perturb_order(cap, kind, seed=int(seed) * 1_000_003 + case)
            rows.append({"case": case, "image_id": iid, "caption": orig, "type": kind, "perturbed": pert,
                         "changed": changed})
    return pd.DataFrame(rows, columns=["case", "image_id", "caption", "type", "perturbed", "changed"])


__all__ = [
    "ADJECTIVES",
    "FUNCTION_WORDS",
    "NEGATIVE_TYPES",
    "ORDER_PERTURBATIONS",
    "CaptionParseError",
    "Claim",
    "NounPhrase",
    "caption_holds",
    "order_perturbations",
    "parse_caption",
    "perturb_order",
    "pos_tags",
    "world_negatives",
    "world_scenes",
]
