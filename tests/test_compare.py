"""The comparison evaluation: retrieval rows with protocols and chance, re-ranking rows, zero-shot tasks."""

import numpy as np
import pytest

from vlnb.data import build_manifest
from vlnb.eval.chance import recall_chance
from vlnb.eval.compare import (
    captions_table,
    evaluate_retrieval,
    evaluate_zeroshot,
    tidy_retrieval,
    zeroshot_task,
)
from vlnb.eval.published import published_for, published_retrieval
from vlnb.models import load_model


@pytest.fixture(scope="module")
def world():
    df, _ = build_manifest("world", n_train=0, n_test=12, image_size=32, seed=3)
    return df


def test_captions_table_follows_image_order(world):
    ids = list(world["image_id"])[::-1]
    texts, owner = captions_table(world, ids)
    assert len(texts) == sum(len(c) for c in world["captions"])
    first = world.set_index("image_id").loc[ids[0], "captions"]
    assert texts[: len(first)] == list(first) and (owner[: len(first)] == 0).all()


def test_retrieval_rows_and_rerank(world, tiny_clip_dir, tiny_blip_dir, tmp_path):
    clip = load_model(str(tiny_clip_dir))
    run = evaluate_retrieval(clip, world, "world", protocol="zero-shot, ITC", cache_dir=tmp_path, progress=False)
    assert run.similarity.shape == (12, 60) and len(run.results) == 1
    blip = load_model(str(tiny_blip_dir))
    run2 = evaluate_retrieval(blip, world, "world", cross_encoder=blip.cross_encoder(), rerank_k=4,
                              cache_dir=tmp_path, progress=False)
    assert [r["protocol"] for r in run2.results] == ["ITC", f"ITC top-4 → {blip.name} rerank (ITM + ITC)"]
    assert 0 < run2.results[1]["n_pairs"] <= 12 * 4 + 60 * 4
    df = tidy_retrieval([run, run2])
    assert len(df) == 3 * 2 * 3 and {"chance", "protocol", "n_images"} <= set(df.columns)
    assert df["recall"].between(0, 100).all()
    # the one exact chance level of these 12 images and their 60 captions, on every protocol's rows
    exact = recall_chance(np.repeat(np.arange(12), 5), 12)
    assert df.apply(lambda r: r["chance"] == exact[f"{r['direction']}_R@{r['k']}"], axis=1).all()
    assert df.query("direction == 't2i' and k == 1")["chance"].eq(100 / 12).all()


def test_zeroshot_tasks(world, tiny_clip_dir, tmp_path):
    task = zeroshot_task("world", world)
    assert set(task.targets) == {"any object", "primary"} and task.targets["any object"].shape[0] == 12
    coco, _ = build_manifest("coco")
    ctask = zeroshot_task("coco-mini", coco)
    assert len(ctask.class_names) == 80 and "person" in ctask.class_names
    rows = evaluate_zeroshot(load_model(str(tiny_clip_dir)), world, "world", cache_dir=tmp_path, progress=False)
    assert {r["variant"] for r in rows} == {"any object", "primary"}
    assert all(0 <= r["top1"] <= 1 and 0 < r["chance_top1"] < 1 for r in rows)


def test_published_numbers_carry_protocol():
    df = published_retrieval()
    row = published_for("openai/clip-vit-base-patch32", "coco")
    assert len(row) == 6 and row.set_index(["direction", "k"]).loc[("i2t", 1), "recall"] == 50.1
    assert df["protocol"].str.len().gt(0).all()


def test_cifar_labels_all_map_to_prompt_names():
    cifar, _ = build_manifest("cifar100")
    task = zeroshot_task("cifar100", cifar)
    assert (task.targets["label"] >= 0).all()  # underscores in CIFAR's names must not drop images


def test_split_manifest_is_a_deterministic_disjoint_image_split(world):
    from vlnb.comparison import split_manifest

    train, test = split_manifest(world, test_fraction=0.25, seed=1)
    assert (len(train), len(test)) == (9, 3) and not set(train["image_id"]) & set(test["image_id"])
    assert train.attrs == world.attrs and test.attrs == world.attrs
    again = split_manifest(world, test_fraction=0.25, seed=1)[1]
    assert again["image_id"].tolist() == test["image_id"].tolist()
    with pytest.raises(ValueError, match="test_fraction"):
        split_manifest(world, test_fraction=1.0)
