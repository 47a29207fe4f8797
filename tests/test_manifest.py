"""The one manifest-subset helper: rows, order, index and provenance (attrs) kept apart from the original."""

from __future__ import annotations

import numpy as np
import pytest

from vlnb.data.manifest import make_manifest, subset, subset_ids


@pytest.fixture
def manifest():
    df = make_manifest([{"image_id": i, "image": f"img{i}.png", "captions": [f"c{i}"], "split": "test"}
                        for i in range(5)], name="world", meta={"source": "world", "config": {"seed": 3}})
    return df


def test_subset_takes_slices_positions_and_masks(manifest):
    assert subset(manifest, slice(0, 2))["image_id"].tolist() == [0, 1]
    assert subset(manifest, [4, 1])["image_id"].tolist() == [4, 1]  # the order given
    mask = manifest["image_id"].to_numpy() % 2 == 0
    part = subset(manifest, mask)
    assert part["image_id"].tolist() == [0, 2, 4] and part.index.tolist() == [0, 1, 2]
    assert subset_ids(manifest, [3, 0])["captions"].tolist() == [["c3"], ["c0"]]
    assert len(subset(manifest, [])) == 0


def test_subset_keeps_a_deep_copy_of_the_provenance(manifest):
    part = subset(manifest, [0, 1])
    assert part.attrs == manifest.attrs
    part.attrs["vlnb"]["config"]["seed"] = 99
    assert manifest.attrs["vlnb"]["config"]["seed"] == 3


def test_subset_rejects_bad_rows(manifest):
    with pytest.raises(ValueError, match="one entry per row"):
        subset(manifest, np.array([True, False]))
    with pytest.raises(ValueError, match="integer positions"):
        subset(manifest, np.array([0.5]))
    with pytest.raises(KeyError, match="not in the manifest"):
        subset_ids(manifest, [7])
