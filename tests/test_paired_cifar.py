"""Paired CIFAR-100 on the real 916 CIFAR-100 test images: pixels, captions, leakage-free splits, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlnb.data.hub import cifar100_class_names, load_cifar100
from vlnb.data.images import open_rgb
from vlnb.data.manifest import fingerprint
from vlnb.data.paired_cifar import (
    build_paired_cifar,
    class_phrase,
    default_source,
    pair_preprocess,
    pair_prompts,
)
from vlnb.paths import shared_data_dir

NPZ = shared_data_dir() / "cifar100-test-partial" / "cifar100_test_first916.npz"
pytestmark = pytest.mark.skipif(not NPZ.is_file(), reason="shared CIFAR-100 npz not available")


@pytest.fixture(scope="module")
def base():
    return load_cifar100(NPZ, check_images=False)[0]


@pytest.fixture(scope="module")
def paired():
    return build_paired_cifar(n_train=300, n_test=80, seed=3)


def test_pairs_are_two_real_images_side_by_side_with_both_names(paired, base):
    assert default_source() == NPZ
    assert (paired["split"] == "train").sum() == 300 and (paired["split"] == "test").sum() == 80
    src = dict(zip(base["image_id"], base["image"]))
    for _, row in paired.sample(25, random_state=0).iterrows():
        pix = np.asarray(open_rgb(row["image"]))
        assert pix.shape == (32, 64, 3)
        assert np.array_equal(pix[:, :32], np.asarray(open_rgb(src[row["left_source_id"]])))
        assert np.array_equal(pix[:, 32:], np.asarray(open_rgb(src[row["right_source_id"]])))
        a, b = row["left_class"], row["right_class"]
        assert a != b and row["labels"] == [a, b]
        assert row["captions"] == [f"a photo of a {class_phrase(a)} and a {class_phrase(b)}"]
        assert "_" not in row["captions"][0]
    names = cifar100_class_names(NPZ)
    assert all(names[i] == c for i, c in zip(paired["left_label_id"], paired["left_class"]))
    assert paired.attrs["vlnb"]["name"] == "paired-cifar100" and paired.attrs["vlnb"]["class_names"] == names


def test_train_and_test_never_share_a_source_image(paired, base):
    def used(split):
        part = paired[paired["split"] == split]
        return set(part["left_source_id"]) | set(part["right_source_id"])

    assert not used("train") & used("test")
    meta = paired.attrs["vlnb"]
    assert meta["n_source_train"] + meta["n_source_test"] == len(base) == 916
    assert 0.2 < meta["n_source_test"] / 916 < 0.3  # test_fraction 0.25, per class
    pairs = list(zip(paired["left_source_id"], paired["right_source_id"]))
    assert len(set(pairs)) == len(pairs)  # distinct ordered pairs
    assert paired["image_id"].is_unique


def test_deterministic_by_seed():
    a, b = build_paired_cifar(n_train=40, n_test=10, seed=1), build_paired_cifar(n_train=40, n_test=10, seed=1)
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(build_paired_cifar(n_train=40, n_test=10, seed=2)) != fingerprint(a)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="template"):
        build_paired_cifar(10, 5, template="a photo of a {a}")
    with pytest.raises(ValueError, match="template"):
        build_paired_cifar(10, 5, template="a photo of a {a} and a {c}")
    with pytest.raises(ValueError, match="test_fraction"):
        build_paired_cifar(10, 5, test_fraction=1.0)
    with pytest.raises(ValueError, match="allows only"):
        build_paired_cifar(10, 10**6)


def test_prompts_and_pair_preprocess_keep_both_halves():
    prompts, pairs = pair_prompts(["apple", "aquarium_fish", "bear"], "{a} next to {b}")
    assert len(prompts) == len(pairs) == 6 and prompts[pairs.index((1, 2))] == "aquarium fish next to bear"
    from vlnb.models.transforms import ImagePreprocess

    model_pre = ImagePreprocess(16, crop=16, resample="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    pre = pair_preprocess(model_pre)
    img = np.zeros((32, 64, 3), np.uint8)  # four bands: outer left 60, inner left 0, inner right 255, outer right 200
    img[:, :16], img[:, 32:48], img[:, 48:] = 60, 255, 200
    x = pre([Image.fromarray(img)])
    assert x.shape == (1, 3, 16, 16)

    def norm(v):
        return v / 255 * 2 - 1

    torch.testing.assert_close(x[..., 0], torch.full_like(x[..., 0], norm(60)), atol=0.1, rtol=0)
    torch.testing.assert_close(x[..., -1], torch.full_like(x[..., -1], norm(200)), atol=0.1, rtol=0)
    cropped = model_pre([Image.fromarray(img)])  # the square center crop keeps only the inner halves
    torch.testing.assert_close(cropped[..., 0], torch.full_like(x[..., 0], -1.0), atol=0.1, rtol=0)
    torch.testing.assert_close(cropped[..., -1], torch.full_like(x[..., 0], 1.0), atol=0.1, rtol=0)
    with pytest.raises(TypeError, match="fixed output size"):
        pair_preprocess(ImagePreprocess(16))
