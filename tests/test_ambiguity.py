"""The ambiguity ceiling of world captions (vlnb.eval.ambiguity): the grammar enumeration covers every caption
the world writes, counts are exact on hand-made scenes, and the ceiling is the mean of min(1, K/m)."""

from __future__ import annotations

import pandas as pd
import pytest

from vlnb.data import build_manifest
from vlnb.eval.ambiguity import ambiguity_glue, caption_ambiguity, is_world, retrieval_ceiling, true_captions


def obj(shape, colour, size, x, y):
    return {"shape": shape, "colour": colour, "size": size, "centre": (x, y)}


def test_true_captions_of_hand_made_scenes():
    one = true_captions([obj("square", "red", "large", 30, 30)], "grass")
    assert {"a square", "a red square", "a large red square"} <= one
    assert "two squares" not in one and "a blue square" not in one
    two = true_captions([obj("square", "red", "large", 10, 30), obj("square", "blue", "small", 50, 30)], "grass")
    assert "two squares" in two and "a red square and a blue square" in two and "a blue square and a red square" in two
    assert "a square" not in two  # two squares: "a square" is not what the grammar would say


def test_every_generated_caption_is_enumerated_and_ceiling_is_exact():
    df, _ = build_manifest("world", n_train=4, n_test=80, seed=3)
    test = df[df["split"] == "test"]
    assert is_world(test)
    amb = caption_ambiguity(test)  # raises if a generated caption is missing from the enumeration
    assert len(amb) == int(test["captions"].map(len).sum()) and (amb["true_of"] >= 1).all()
    # a caption shared verbatim by several images is true of at least that many
    shared = amb.groupby("caption")["image_id"].nunique()
    assert (amb.set_index("caption")["true_of"] >= shared.reindex(amb["caption"]).to_numpy()).all()
    ceil = retrieval_ceiling(amb, ks=(1, 5))
    m = amb["true_of"].to_numpy(dtype=float)
    assert ceil["t2i_R@1"] == pytest.approx(100 * (1 / m).mean())
    assert ceil["t2i_R@1"] <= ceil["t2i_R@5"] <= 100
    glue = ambiguity_glue({"w": ceil}, ["w"], {"w": amb})
    assert glue["ceiling_t2i_r1"] == f"{ceil['t2i_R@1']:.1f}" and glue["ceiling_model"] == "w"


def test_ceiling_by_hand():
    amb = pd.DataFrame({"true_of": [1, 2, 4, 10]})
    c = retrieval_ceiling(amb, ks=(1, 5))
    assert c["t2i_R@1"] == pytest.approx(100 * (1 + 0.5 + 0.25 + 0.1) / 4)
    assert c["t2i_R@5"] == pytest.approx(100 * (1 + 1 + 1 + 0.5) / 4)
    assert "nan" not in str(ambiguity_glue({}, []))


def test_ambiguity_is_computed_once_per_manifest_and_handed_out_as_copies(monkeypatch):
    import vlnb.eval.ambiguity as A

    df, _ = build_manifest("world", n_train=4, n_test=20, seed=4)
    test, other = df[df["split"] == "test"], df[df["split"] == "train"]
    calls = []
    real = A.scenes_of
    monkeypatch.setattr(A, "scenes_of", lambda m: calls.append(len(m)) or real(m))
    monkeypatch.setattr(A, "_AMBIGUITY", {})
    first = caption_ambiguity(test)
    first.loc[:, "true_of"] = -1  # the caller's copy: the next call is not affected
    second = caption_ambiguity(test.copy())  # the same content in another frame: not computed again
    assert calls == [len(test)] and (second["true_of"] >= 1).all()
    pd.testing.assert_frame_equal(second, A._caption_ambiguity(test))
    caption_ambiguity(other)  # another manifest is computed
    assert calls[-1] == len(other) and len(calls) == 3
