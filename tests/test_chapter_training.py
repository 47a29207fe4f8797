"""Chapter 2 end to end (offline), as the session's offline book ran it (tests/conftest.py::offline_book): reference
models trained from scratch, results above chance, the fusion encoders and the side experiments."""

import itertools

import pytest

STEM = "02_clip_training"


@pytest.mark.slow
def test_chapter2_offline(offline_book):
    cfg = offline_book.config(STEM)  # the offline defaults
    res = offline_book.results(STEM, "results")
    assert set(res["model"]) == set(cfg.recipes) == {"scratch-world", "towers-coco"}
    r1 = res[res["k"] == 1]
    # held-out Recall@1 of the reference recipes (trained from scratch in this build): far above a random ranking
    assert (r1["recall"] > 5 * r1["chance"]).all(), r1[["model", "direction", "recall", "chance"]]
    # the fusion encoders (ViLT-, BLIP-, BLIP-2-like) trained on top of the world model
    fusion = offline_book.results(STEM, "fusion_results")
    assert set(fusion["model"]) == set(cfg.fusion_recipes)
    # text-encoder attention variants: one row per (variant, seed), in the order asked for
    var = offline_book.results(STEM, "attention_variants")
    assert list(var["variant"].unique()) == cfg.attention_variants and (var["train_time_s"] > 0).all()
    # the models read the small world at the size it was rendered (not upsampled: 4x the patches, same pixels)
    assert (var["image_size"] == cfg.variant_image_size).all()
    pairs = list(zip(var["variant"], var["seed"]))
    assert len(pairs) == len(set(pairs)) and set(pairs) == set(itertools.product(cfg.attention_variants,
                                                                                  cfg.variant_seeds))
    paired = offline_book.results(STEM, "paired_cifar")
    assert paired["metric"].str.startswith("t2i R@").sum() == 3 and (paired["train pairs"] == cfg.paired_n_train).all()
    assert (paired["test pairs"] == cfg.paired_n_test).all()
