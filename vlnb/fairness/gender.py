"""Perceived gender of the people in an image, read off its human captions (the COCO bias literature's method).

COCO has no demographic annotation, and an image cannot tell anyone's gender. What the captions *do*
record is how the annotators described the people they saw. Following Zhao et al. 2017 ("Men also like
shopping") and Hendricks et al. 2018 ("Women also snowboard"), an image is labelled

- ``"man"``   when at least ``min_captions`` of its captions use a word of :data:`MAN_WORDS` and **none** of
  its captions uses a word of :data:`WOMAN_WORDS`;
- ``"woman"`` symmetrically;
- ``"unlabelled"`` otherwise: either the captions use words of both lists (``reason="mixed"``, e.g. "a man
  and a woman", or annotators who disagree) or of neither (``reason="neutral"``: "a person", "people",
  or no person at all).

This is *perceived* gender as written by annotators, binary by construction of the method, and blind to
everybody the captions call "person", "child" or "skier": a statement about the data set's language, not
about the people in the photos. The counts of all three labels are always reported.

**Word lists.** They extend the synonym lists of Hendricks et al.'s code (``man_word_list_synonyms`` /
``woman_word_list_synonyms``: man, men, boy, guy, male, father, son, brother, husband, groom, dude,
policeman, fireman, actor, gentleman, boyfriend, his ... and their counterparts) with the pronouns
(he/him/his/himself, she/her/hers/herself) and explicit plural forms, as in the lists of later work
(Hirota et al. 2022). Left out on purpose, because COCO captions use them mostly for other things:
``king``/``queen`` ("a queen size bed"), ``prince``/``princess`` (names of boats, trains, cakes),
``mr``/``mrs``/``sir`` (rare, mostly brand names), ``mans`` (a typo Hendricks et al. keep).

**Matching** is on whole words: captions are lower-cased, a possessive ``'s`` is dropped ("woman's" ->
"woman") and the text is split into letter runs, keeping hyphenated compounds whole. So "woman" never
matches "man", "snowman", "human", "Manhattan" and "man-made" are not "man", and every plural that counts
is listed explicitly (there is no stemming, so "mans" or "boyz" do not count).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

#: Words that make a caption mention a man (whole words, lower case; plurals listed explicitly).
MAN_WORDS: frozenset[str] = frozenset(
    """
    man men male males boy boys guy guys gentleman gentlemen dude dudes
    father fathers dad dads daddy son sons brother brothers husband husbands uncle uncles nephew nephews
    grandfather grandfathers grandpa grandpas boyfriend boyfriends groom grooms
    actor actors waiter waiters policeman policemen fireman firemen businessman businessmen
    cowboy cowboys sportsman sportsmen
    he him his himself
    """.split()  # noqa: SIM905 -- a word list reads best as text
)
#: Words that make a caption mention a woman.
WOMAN_WORDS: frozenset[str] = frozenset(
    """
    woman women female females girl girls lady ladies gal gals
    mother mothers mom moms mommy mum daughter daughters sister sisters wife wives aunt aunts niece nieces
    grandmother grandmothers grandma grandmas girlfriend girlfriends bride brides
    actress actresses waitress waitresses policewoman policewomen businesswoman businesswomen
    cowgirl cowgirls nun nuns
    she her hers herself
    """.split()  # noqa: SIM905 -- a word list reads best as text
)
GENDER_LABELS = ("man", "woman", "unlabelled")
REASONS = ("man", "woman", "mixed", "neutral")

_POSSESSIVE = re.compile(r"['’]s\b")
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def caption_words(caption: str) -> list[str]:
    """The whole words of a caption as the labelling sees them (lower case, possessive 's dropped,
    hyphenated compounds kept whole)."""
    if not isinstance(caption, str):
        raise TypeError(f"a caption must be a str, got {type(caption).__name__}: {caption!r}")
    return _WORD.findall(_POSSESSIVE.sub("", caption.lower()))


def caption_mentions(caption: str, man_words=MAN_WORDS, woman_words=WOMAN_WORDS) -> tuple[bool, bool]:
    """``(mentions a man word, mentions a woman word)`` for one caption."""
    words = set(caption_words(caption))
    return bool(words & man_words), bool(words & woman_words)


def label_captions(
    captions: Sequence[str], min_captions: int = 1, man_words=MAN_WORDS, woman_words=WOMAN_WORDS
) -> tuple[str, str, int, int]:
    """``(label, reason, n_man_captions, n_woman_captions)`` of one image from all of its captions.

    ``label`` is ``"man"``/``"woman"``/``"unlabelled"``; ``reason`` is ``"man"``/``"woman"``/``"mixed"``
    (both genders' words occur) / ``"neutral"`` (neither, or fewer than ``min_captions`` captions mention
    the one gender that occurs).
    """
    if isinstance(captions, str):
        raise TypeError("label_captions takes the list of an image's captions, not one caption string")
    if min_captions < 1:
        raise ValueError(f"min_captions must be >= 1, got {min_captions}")
    n_m = n_w = 0
    for c in captions:
        m, w = caption_mentions(c, man_words, woman_words)
        n_m += m
        n_w += w
    if n_m and n_w:
        return "unlabelled", "mixed", n_m, n_w
    if n_m >= min_captions:
        return "man", "man", n_m, n_w
    if n_w >= min_captions:
        return "woman", "woman", n_m, n_w
    return "unlabelled", "neutral", n_m, n_w


def gender_labels(data, min_captions: int = 1, man_words=MAN_WORDS, woman_words=WOMAN_WORDS) -> pd.DataFrame:
    """Caption-derived perceived gender of every image.

    ``data``: a manifest (columns ``image_id`` and ``captions``), or a mapping ``image_id -> captions``.
    Returns one row per image: ``image_id, gender, reason, n_captions, n_man_captions, n_woman_captions``
    (``gender`` is one of :data:`GENDER_LABELS`; see the module docstring for the rule).
    """
    if isinstance(data, pd.DataFrame):
        missing = [c for c in ("image_id", "captions") if c not in data.columns]
        if missing:
            raise ValueError(f"gender_labels needs columns image_id and captions; missing {missing}")
        items: Iterable = zip(data["image_id"], data["captions"])
    elif hasattr(data, "items"):
        items = data.items()
    else:
        raise TypeError(f"gender_labels takes a manifest or a mapping image_id -> captions, got {type(data).__name__}")
    rows = []
    for iid, caps in items:
        caps = list(caps)
        label, reason, n_m, n_w = label_captions(caps, min_captions, man_words, woman_words)
        rows.append({"image_id": iid, "gender": label, "reason": reason, "n_captions": len(caps),
                     "n_man_captions": n_m, "n_woman_captions": n_w})
    return pd.DataFrame(rows, columns=["image_id", "gender", "reason", "n_captions", "n_man_captions",
                                       "n_woman_captions"])


def gender_counts(labels: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    """Images per label and reason: ``[source,] gender, reason, images, share`` (share of all images, in [0, 1]),
    every label and reason listed even when it has no image."""
    if "gender" not in labels.columns or "reason" not in labels.columns:
        raise ValueError("gender_counts takes the output of gender_labels (columns gender, reason)")
    n = len(labels)
    rows = []
    for reason in REASONS:
        gender = reason if reason in ("man", "woman") else "unlabelled"
        k = int((labels["reason"] == reason).sum())
        rows.append({"gender": gender, "reason": reason, "images": k, "share": k / n if n else float("nan")})
    out = pd.DataFrame(rows)
    if source is not None:
        out.insert(0, "source", source)
    return out


def source_counts(sources: Mapping[str, pd.DataFrame], min_captions: int = 1) -> pd.DataFrame:
    """:func:`gender_counts` of every caption source (``{name: frame with image_id, captions}``), one table."""
    return pd.concat([gender_counts(gender_labels(df, min_captions=min_captions), name) for name, df in sources.items()],
                     ignore_index=True)


def counts_table(counts: pd.DataFrame) -> pd.DataFrame:
    """Images per source (rows) and reason (columns ``man, woman, mixed, neutral``) of :func:`source_counts`."""
    return counts.pivot_table(index="source", columns="reason", values="images", sort=False)[list(REASONS)]


def gender_examples(data: pd.DataFrame, per_reason: int = 1) -> pd.DataFrame:
    """A few images per reason with the caption that decided it and the gender words found in it.

    ``data``: a frame with ``image_id`` and ``captions``. Columns: ``reason, image_id, caption, man_words,
    woman_words`` (for neutral images the first caption, with no words).
    """
    labels = gender_labels(data)
    caps = dict(zip(data["image_id"], data["captions"]))
    rows = []
    for reason in REASONS:
        for iid in labels.loc[labels["reason"] == reason, "image_id"].head(per_reason):
            found = [(c, sorted(set(caption_words(c)) & MAN_WORDS), sorted(set(caption_words(c)) & WOMAN_WORDS))
                     for c in caps[iid]]
            if reason == "mixed":  # show one caption of each side (or the one holding both)
                pick = [f for f in found if f[1] and f[2]][:1] or [next(f for f in found if f[1]),
                                                                   next(f for f in found if f[2])]
            else:
                pick = [f for f in found if f[1] or f[2]][:1] or found[:1]
            for c, m, w in pick:
                rows.append({"reason": reason, "image_id": iid, "caption": c, "man_words": ", ".join(m),
                             "woman_words": ", ".join(w)})
    return pd.DataFrame(rows, columns=["reason", "image_id", "caption", "man_words", "woman_words"])


def read_coco_captions(path: str | os.PathLike) -> pd.DataFrame:
    """An official COCO ``captions_*.json`` as ``image_id, captions`` (all captions of each image, file order).

    Only the captions are read (no images, no pycocotools), which is all the gender labelling needs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO captions file not found: {path}")
    with open(path) as f:
        data = json.load(f)
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list) or (anns and not {"image_id", "caption"} <= set(anns[0])):
        raise ValueError(f"{path} is not a COCO captions file: no 'annotations' list of {{image_id, caption}}")
    caps: dict = {int(im["id"]): [] for im in data.get("images", [])}
    for a in anns:
        caps.setdefault(int(a["image_id"]), []).append(str(a["caption"]).strip())
    return pd.DataFrame({"image_id": list(caps), "captions": list(caps.values())})


__all__ = [
    "GENDER_LABELS", "MAN_WORDS", "REASONS", "WOMAN_WORDS", "caption_mentions", "caption_words", "gender_counts",
    "gender_examples",
    "gender_labels", "label_captions", "read_coco_captions",
]
