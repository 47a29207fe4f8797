"""Shared fixtures: tiny, architecture-faithful HF checkpoints built once per test session.

Each fixture builds its model with :mod:`vlnb.models.tiny` (real model classes, shrunken configs,
``save_pretrained`` + tokenizer/processor files) into a session temp folder, so tests load them through
exactly the ``from_pretrained`` path the full profile uses for hub checkpoints.
"""

from __future__ import annotations

import pytest
import torch

from vlnb.paths import shared_data_dir

CLIP_SHARED = shared_data_dir() / "clip-vit-base-patch32"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models: one thread is fastest, and far faster than two on a busy shared 2-core CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_clip_dir(tiny_models_root):
    if not (CLIP_SHARED / "tokenizer.json").is_file():
        pytest.skip("shared clip-vit-base-patch32 tokenizer/config files not available")
    from vlnb.models.tiny import make_tiny_clip

    return make_tiny_clip(tiny_models_root / "clip")


@pytest.fixture(scope="session")
def tiny_blip_dir(tiny_models_root):
    from vlnb.models.tiny import make_tiny_blip

    return make_tiny_blip(tiny_models_root / "blip")


@pytest.fixture(scope="session")
def tiny_blip2_dir(tiny_models_root):
    from vlnb.models.tiny import make_tiny_blip2

    return make_tiny_blip2(tiny_models_root / "blip2")


@pytest.fixture(scope="session")
def tiny_vilt_dir(tiny_models_root):
    from vlnb.models.tiny import make_tiny_vilt

    return make_tiny_vilt(tiny_models_root / "vilt")


@pytest.fixture(scope="session")
def tiny_hub_models(tiny_clip_dir, tiny_blip_dir, tiny_blip2_dir, tiny_vilt_dir):
    """``{display name: folder}`` with a tiny checkpoint standing in for each hub model of vlnb.zoo.HUB_MODELS
    (CLIP, BLIP, BLIP-2, ViLT): the ``models`` parameter of a chapter's full-profile test."""
    from vlnb.zoo import HUB_MODELS

    return dict(zip(HUB_MODELS, map(str, (tiny_clip_dir, tiny_blip_dir, tiny_blip2_dir, tiny_vilt_dir))))


@pytest.fixture()
def make_tiny_recipe(monkeypatch, tmp_path):
    """``make(epochs)`` registers the reference recipe ``"tiny-world"`` (a tiny scratch model on a 32 + 16 image
    world, trained for ``epochs`` epochs) with its artifacts under ``tmp_path``, and returns it."""
    from vlnb import zoo

    def make(epochs: int):
        monkeypatch.setenv("VLNB_ARTIFACTS", str(tmp_path / "art"))
        r = zoo.Recipe(name="tiny-world", kind="scratch", data="world", model={"config": "tiny", "seed": 0},
                       train={"epochs": epochs, "batch_size": 16, "lr": 1e-3, "warmup_steps": 1, "seed": 0},
                       data_kwargs={"n_train": 32, "n_test": 16, "image_size": 32, "seed": 0})
        monkeypatch.setitem(zoo.RECIPES, "tiny-world", r)
        return r

    return make
