"""The offline world: determinism, captions that are true for their image, exact masks, the knobs, the manifest."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from vlnb.data import get_annotations, load_manifest, open_rgb, save_manifest, validate_manifest
from vlnb.data.world import (
    BACKGROUND_PHRASES,
    COLOUR_RGB,
    NUMBER_WORDS,
    RELATION_PHRASES,
    SIZE_SCALE,
    WORLD_BACKGROUNDS,
    WORLD_COLOURS,
    WORLD_SHAPES,
    WorldConfig,
    build_world_manifest,
    generate,
    parse_image_id,
    plural,
    render,
    world_class_names,
)

CFG = WorldConfig()


def same_scene(a, b) -> bool:
    return (
        a.image.tobytes() == b.image.tobytes()
        and a.captions == b.captions
        and a.background == b.background
        and len(a.objects) == len(b.objects)
        and all(
            {k: v for k, v in o.items() if k != "mask"} == {k: v for k, v in p.items() if k != "mask"}
            and np.array_equal(o["mask"], p["mask"])
            for o, p in zip(a.objects, b.objects)
        )
    )


# ------------------------------------------------------------------ an independent parser of the caption grammar

_COUNT = {"a": 1, "an": 1, **{w: i for i, w in enumerate(NUMBER_WORDS)}}
_SINGULAR = {plural(s): s for s in WORLD_SHAPES}
_RELS = sorted(((p, rel) for rel, ps in RELATION_PHRASES.items() for p in ps), key=lambda t: -len(t[0]))


def parse_np(text: str) -> tuple[int, dict, bool]:
    """'two small red squares' -> (2, {size: small, colour: red, shape: square}, plural=True)."""
    det, *mods, noun = text.split(" ")
    assert det in _COUNT, f"unknown determiner in {text!r}"
    is_plural = noun in _SINGULAR
    shape = _SINGULAR.get(noun, noun)
    assert shape in WORLD_SHAPES, f"unknown shape in {text!r}"
    attrs = {"shape": shape}
    for w in mods:
        key = "size" if w in SIZE_SCALE else "colour" if w in COLOUR_RGB else None
        assert key and key not in attrs, f"bad modifier {w!r} in {text!r}"
        attrs[key] = w
    assert list(attrs) == [a for a in ("shape", "size", "colour") if a in attrs] and (
        not mods or mods == [attrs[a] for a in ("size", "colour") if a in attrs]
    ), f"size must precede colour in {text!r}"
    if det in ("a", "an"):
        assert det == ("an" if text.split(" ")[1][0] in "aeiou" else "a"), f"wrong article in {text!r}"
    return _COUNT[det], attrs, is_plural


def parse_caption(caption: str) -> dict:
    out: dict = {"background": None, "total": None, "relation": None, "nps": []}
    text = caption
    m = re.fullmatch(r"a (\w+) background with (.+)", text)
    if m:
        out["background"], text = m.group(1), m.group(2)
    else:
        for bg, phrases in BACKGROUND_PHRASES.items():
            for p in sorted(phrases, key=len, reverse=True):
                if text.endswith(" " + p):
                    out["background"], text = bg, text[: -len(p) - 1]
                    break
            if out["background"]:
                break
    m = re.fullmatch(r"(\w+) (shapes?)", text)
    if m:
        out["total"] = _COUNT[m.group(1)]
        assert (out["total"] == 1) == (m.group(2) == "shape"), caption
        return out
    for phrase, rel in _RELS:
        if f" {phrase} " in text:
            a, b = text.split(f" {phrase} ")
            out["relation"] = (rel, parse_np(a), parse_np(b))
            out["nps"] = [out["relation"][1], out["relation"][2]]
            return out
    out["nps"] = [parse_np(t) for t in re.split(r", | and ", text)]
    return out


def matching(objs, attrs) -> list[int]:
    return [i for i, o in enumerate(objs) if all(o[k] == v for k, v in attrs.items())]


def check_scene(sc, cfg=CFG):
    objs, s = sc.objects, cfg.image_size
    assert cfg.min_objects <= len(objs) <= cfg.max_objects
    assert sc.image.shape == (s, s, 3) and sc.image.dtype == np.uint8
    assert len(sc.captions) == cfg.n_captions == len(set(sc.captions))
    # masks: non-empty, tight inside their box, disjoint, flat in the object's named colour
    union = np.zeros((s, s), int)
    for o in objs:
        m = o["mask"]
        assert m.shape == (s, s) and m.dtype == bool and m.any()
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        x, y, w, h = o["bbox"]
        assert (x, y, w, h) == (cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
        assert o["centre"] == (x + w / 2, y + h / 2) and o["area"] == m.sum()
        px = sc.image[m].astype(int)
        assert (px == px[0]).all(), "object pixels are not one flat colour"
        nearest = min(COLOUR_RGB, key=lambda c: np.sum((np.array(COLOUR_RGB[c]) - px[0]) ** 2))
        assert nearest == o["colour"]
        union += m
    assert union.max() == 1, "masks overlap"
    # captions: every noun phrase names exactly the right number of objects
    parsed = [parse_caption(c) for c in sc.captions]
    for cap, p in zip(sc.captions, parsed):
        if p["background"] is not None:
            assert p["background"] == sc.background, cap
        if p["total"] is not None:
            assert p["total"] == len(objs), cap
        for count, attrs, is_plural in p["nps"]:
            assert len(matching(objs, attrs)) == count, f"{cap!r}: wrong count for {attrs}"
            assert is_plural == (count > 1), cap
        if p["relation"]:
            rel, (_, a, _), (_, b, _) = p["relation"]
            (ia,), (ib,) = matching(objs, a), matching(objs, b)
            dx = objs[ib]["centre"][0] - objs[ia]["centre"][0]
            dy = objs[ib]["centre"][1] - objs[ia]["centre"][1]
            axis_x = abs(dx) >= 1.25 * abs(dy)
            assert axis_x or abs(dy) >= 1.25 * abs(dx), f"{cap!r}: diagonal pair related"
            truth = ("left" if dx > 0 else "right") if axis_x else ("above" if dy > 0 else "below")
            assert rel == truth, f"{cap!r}: centres {objs[ia]['centre']} vs {objs[ib]['centre']}"
    # caption 0 lists every object with its colour and shape; some caption names the background
    first = parsed[0]
    assert first["total"] is None and first["relation"] is None
    assert sum(c for c, _, _ in first["nps"]) == len(objs) and all("colour" in a for _, a, _ in first["nps"])
    assert any(p["background"] for p in parsed)
    return parsed


# --------------------------------------------------------------------------------------------------- tests


def test_determinism_independent_of_batching():
    a, b = render(CFG, "train", 7), render(CFG, "train", 7)
    assert same_scene(a, b)
    batch = generate(CFG, "train", 10)
    assert same_scene(batch[7], a) and same_scene(generate(CFG, "train", 3, start=6)[1], a)
    other_seed = generate(replace(CFG, seed=1), "train", 10)
    assert all(x.image.tobytes() != y.image.tobytes() for x, y in zip(batch, other_seed))
    assert render(CFG, "test", 7).image.tobytes() != a.image.tobytes()
    assert a.image_id == "world-train-000007" and parse_image_id(a.image_id) == ("train", 7)


def test_same_bytes_in_a_fresh_process():
    code = (
        "import hashlib; from vlnb.data.world import WorldConfig, generate; h = hashlib.sha256()\n"
        "for sc in generate(WorldConfig(seed=3), 'test', 20): h.update(sc.image.tobytes()); "
        "h.update('|'.join(sc.captions).encode())\nprint(h.hexdigest())"
    )
    h = hashlib.sha256()
    for sc in generate(WorldConfig(seed=3), "test", 20):
        h.update(sc.image.tobytes())
        h.update("|".join(sc.captions).encode())
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == h.hexdigest()


@pytest.mark.parametrize(
    "cfg",
    [
        CFG,
        WorldConfig(image_size=48, seed=5, n_captions=7),
        WorldConfig(
            shapes=("circle", "square"),
            colours=("red", "blue"),
            max_objects=4,
            min_objects=2,
            sizes=("small",),
            seed=2,
        ),
    ],
)
def test_captions_and_masks_are_true(cfg):
    scenes = generate(cfg, "train", 150) + generate(cfg, "test", 50)
    parsed = [check_scene(sc, cfg) for sc in scenes]
    kinds = [p for ps in parsed for p in ps]
    # the grammar is exercised: relations, counts, plurals and background captions all occur
    assert sum(p["relation"] is not None for p in kinds) > 20
    assert sum(p["total"] is not None for p in kinds) > 5
    assert sum(any(c > 1 for c, _, _ in p["nps"]) for p in kinds) > 5
    assert {sc.background for sc in scenes} == set(cfg.backgrounds)
    assert {len(sc.objects) for sc in scenes} == set(range(cfg.min_objects, cfg.max_objects + 1))


def test_sizes_and_backgrounds_are_visible():
    scenes = generate(CFG, "train", 240)
    area = {(o["shape"], o["size"]): [] for sc in scenes for o in sc.objects}
    for sc in scenes:
        for o in sc.objects:
            area[(o["shape"], o["size"])].append(o["area"])
    for shape in WORLD_SHAPES:
        assert max(area[(shape, "small")]) < min(area[(shape, "large")]), shape
    # the background's name is recoverable from its pixels (nearest mean colour outside the objects)
    feats = np.array([sc.image[~np.any([o["mask"] for o in sc.objects], 0)].mean(0) for sc in scenes])
    names = np.array([sc.background for sc in scenes])
    fit, held = slice(0, 120), slice(120, None)
    cents = {b: feats[fit][names[fit] == b].mean(0) for b in WORLD_BACKGROUNDS}
    pred = [min(cents, key=lambda b: np.sum((f - cents[b]) ** 2)) for f in feats[held]]
    assert np.mean(np.array(pred) == names[held]) >= 0.95


def _contains(sc, attr, value):
    return sc.background == value if attr == "background" else any(o[attr] == value for o in sc.objects)


@pytest.mark.parametrize("attr,value,frac", [("colour", "purple", 0.25), ("background", "sky", 0.0)])
def test_rare_knob(attr, value, frac):
    n = 1200
    cfg = replace(CFG, rare_attribute=(attr, value), rare_fraction=frac)
    base, knob = generate(CFG, "train", n), generate(cfg, "train", n)
    had = [_contains(sc, attr, value) for sc in base]
    has = [_contains(sc, attr, value) for sc in knob]
    # scenes without the value are untouched; scenes with it keep it with probability rare_fraction
    assert all(same_scene(a, b) for a, b, h in zip(base, knob, had) if not h)
    assert not any(h for h, b in zip(has, had) if not b)
    kept = np.mean([h for h, b in zip(has, had) if b])
    assert abs(kept - frac) <= 4 * np.sqrt(frac * (1 - frac) / sum(had)) + 1e-9, (kept, frac)
    assert sum(had) / n > 0.1  # the value is common without the knob
    # the test split keeps the normal frequency: it is exactly the world without the knob
    assert all(same_scene(a, b) for a, b in zip(generate(CFG, "test", 200), generate(cfg, "test", 200)))


def test_spurious_knob():
    n, s, target = 1500, 0.8, "grass"
    cfg = replace(CFG, spurious=("colour", "red", target), spurious_strength=s)
    b = len(CFG.backgrounds)

    def rates(scenes):
        red = np.array([_contains(sc, "colour", "red") for sc in scenes])
        grass = np.array([sc.background == target for sc in scenes])
        return grass[red].mean(), grass[~red].mean(), red.sum(), (~red).sum()

    p_red, p_other, n_red, n_other = rates(generate(cfg, "train", n))
    for p, want, m in ((p_red, s + (1 - s) / b, n_red), (p_other, (1 - s) / b, n_other)):
        assert abs(p - want) <= 4 * np.sqrt(want * (1 - want) / m), (p, want)
    t_red, t_other, m_red, _ = rates(generate(cfg, "test", n))
    assert abs(t_red - 1 / b) <= 4 * np.sqrt((1 / b) * (1 - 1 / b) / m_red)
    assert abs(t_red - t_other) < 0.1


def test_manifest_and_annotations(tmp_path):
    kw = {
        "n_train": 12,
        "n_test": 6,
        "image_size": 48,
        "seed": 4,
        "rare_attribute": ("colour", "purple"),
        "rare_fraction": 0.5,
        "spurious": ("shape", "star", "sand"),
        "spurious_strength": 0.9,
    }
    df, report = build_world_manifest(**kw)
    validate_manifest(df)
    assert (
        len(report) == 0 and list(df["split"]).count("train") == 12 and list(df["split"]).count("test") == 6
    )
    assert df["image_id"].iloc[0] == "world-train-000000" and df["image_id"].iloc[12] == "world-test-000000"
    cfg = WorldConfig.from_dict(df.attrs["vlnb"]["config"])
    assert cfg.rare_attribute == ("colour", "purple") and cfg.spurious == ("shape", "star", "sand")
    for _, row in df.iterrows():
        sc = render(cfg, *parse_image_id(row["image_id"]))
        assert np.array_equal(np.asarray(open_rgb(row["image"])), sc.image)
        assert list(row["captions"]) == sc.captions and len(row["captions"]) == 5
        assert list(row["labels"]) == sorted({o["shape"] for o in sc.objects}) == list(row["shapes"])
        assert list(row["colours"]) == sorted({o["colour"] for o in sc.objects})
        assert (
            row["n_objects"] == len(sc.objects) == len(row["objects"]) and row["background"] == sc.background
        )
        big = max(sc.objects, key=lambda o: o["area"])
        assert (row["primary_shape"], row["primary_colour"], row["primary_size"]) == (
            big["shape"],
            big["colour"],
            big["size"],
        )
        assert row["contains_rare"] == ("purple" in row["colours"])
        assert row["contains_spurious"] == ("star" in row["shapes"])
    # the same call gives the same bytes
    from vlnb.data import fingerprint

    assert fingerprint(build_world_manifest(**kw)[0]) == fingerprint(df)
    # annotations survive a parquet round trip and re-render the exact masks
    save_manifest(df, tmp_path / "world.parquet")
    loaded = load_manifest(tmp_path / "world.parquet")
    iid = loaded["image_id"].iloc[14]
    objs, sc = get_annotations(loaded, iid), render(cfg, *parse_image_id(iid))
    assert [o.category for o in objs] == [f"{o['colour']} {o['shape']}" for o in sc.objects]
    for a, o in zip(objs, sc.objects):
        assert (
            np.array_equal(a.mask, o["mask"])
            and a.bbox == tuple(map(float, o["bbox"]))
            and a.area == o["area"]
        )
        assert a.attributes["size"] == o["size"]
    with pytest.raises(KeyError, match="not an offline-world image id"):
        get_annotations(loaded, "coco-123")


def test_builder_entry_point():
    from vlnb.data import build_manifest

    df, _ = build_manifest("world", n_train=3, n_test=2, seed=1)
    assert len(df) == 5 and df.attrs["vlnb"]["annotations"]["kind"] == "world"


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"shapes": ("circle", "hexagon")}, "shapes: unknown"),
        ({"colours": ()}, "colours must be a non-empty"),
        ({"rare_attribute": ("colour", "pink")}, "not one of this world's colour"),
        ({"rare_attribute": ("texture", "x")}, "unknown attribute 'texture'"),
        ({"rare_fraction": 1.5}, "rare_fraction must be in"),
        ({"spurious": ("colour", "red", "snow")}, "background 'snow'"),
        ({"spurious": ("colour", "red")}, "tuple of 3 str"),
        ({"max_objects": 6, "sizes": ("large",), "image_size": 48}, "do not fit"),
        ({"n_captions": 0}, "n_captions"),
    ],
)
def test_config_errors_name_the_problem(kw, match):
    with pytest.raises(ValueError, match=match):
        WorldConfig(**kw)


def test_other_errors():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        render(CFG, "dev", 0)
    with pytest.raises(ValueError, match="non-negative"):
        render(CFG, "train", -1)
    with pytest.raises(TypeError, match="unknown argument.*'colors'"):
        build_world_manifest(n_train=1, n_test=0, colors=("red",))
    assert WorldConfig(rare_attribute=("color", "red")).rare_attribute == ("colour", "red")
    assert WorldConfig.from_dict(CFG.to_dict()) == CFG


def test_class_names():
    assert world_class_names() == list(WORLD_SHAPES)
    assert world_class_names("colour") == list(WORLD_COLOURS)
    small = WorldConfig(shapes=("circle", "star"), colours=("red", "orange"))
    assert world_class_names("object", small) == ["red circle", "red star", "orange circle", "orange star"]
    with pytest.raises(ValueError, match="unknown world attribute"):
        world_class_names("texture")


def test_background_phrases_name_their_background_only():
    for bg, phrases in BACKGROUND_PHRASES.items():
        for p in phrases:
            words = set(re.findall(r"[a-z]+", p))
            assert any(w.startswith(bg) for w in words), (bg, p)
            assert not words & (set(WORLD_BACKGROUNDS) - {bg}) and not words & set(COLOUR_RGB), (bg, p)


def test_a_rendered_world_is_cached_and_read_back_identical(tmp_path, monkeypatch):
    import json
    import warnings

    from vlnb.data.world import build_world_manifest

    monkeypatch.setenv("VLNB_CACHE", str(tmp_path))
    kw = {"n_train": 12, "n_test": 5, "image_size": 32, "seed": 3}
    fresh, _ = build_world_manifest(**kw, cache=False)
    assert not (tmp_path / "worlds").exists()
    first, _ = build_world_manifest(**kw)  # renders and writes the cache
    (path,) = (tmp_path / "worlds").glob("*.json")
    second, _ = build_world_manifest(**kw)  # reads it back
    for df in (first, second):
        assert df.equals(fresh) and df.attrs == fresh.attrs
        assert [type(v) for v in df.iloc[0]] == [type(v) for v in fresh.iloc[0]]
    # read back, not rendered: a changed record in the file shows up
    saved = json.loads(path.read_text())
    saved["records"][0]["captions"] = ["edited in the cache"]
    path.write_text(json.dumps(saved))
    assert build_world_manifest(**kw)[0]["captions"][0] == ["edited in the cache"]
    # another world (config or size) has another file
    build_world_manifest(**{**kw, "seed": 4})
    build_world_manifest(**{**kw, "n_test": 6})
    assert len(list((tmp_path / "worlds").glob("*.json"))) == 3
    # an unreadable file, or one that belongs to another world, is rendered again and replaced
    for bad in ("{not json", json.dumps({"spec": {**saved["spec"], "n_train": 99}, "records": []})):
        path.write_text(bad)
        with pytest.warns(UserWarning, match="unreadable"):
            again, _ = build_world_manifest(**kw)
        assert again.equals(fresh)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert build_world_manifest(**kw)[0].equals(fresh)
