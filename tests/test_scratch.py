"""The from-scratch dual encoder: shapes, preprocessing, attention masks, save/load, and that it learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vlnb.models.base import DualEncoder
from vlnb.models.scratch import (
    PRESETS,
    ScratchConfig,
    ScratchDualEncoder,
    WordTokenizer,
    clip_tokenizer,
    text_attention_mask,
)
from vlnb.paths import shared_data_dir
from vlnb.train.loss import clip_loss

CAPTIONS = [
    f"a {c} {s} on the {p}"
    for c in ("red", "blue", "green", "pink")
    for s in ("circle", "square")
    for p in ("left", "right")
]
SMALL = {
    "image_size": 16,
    "patch_size": 8,
    "width": 32,
    "layers": 2,
    "heads": 2,
    "text_width": 32,
    "text_layers": 2,
    "text_heads": 2,
    "embed_dim": 16,
    "context_length": 16,
}
HAS_CLIP_TOKENIZER = (shared_data_dir() / "clip-vit-base-patch32" / "tokenizer.json").is_file()


def small(**kw) -> ScratchDualEncoder:
    return ScratchDualEncoder.create("tiny", captions=CAPTIONS, seed=0, **{**SMALL, **kw}).eval()


def test_shapes_normalised_and_contract():
    m = small()
    assert isinstance(m, DualEncoder) and m.kind == "dual" and m.family == "scratch" and m.embed_dim == 16
    img = m.encode_image(torch.randn(5, 3, 16, 16))
    txt = m.encode_text(**m.tokenize(CAPTIONS[:3]))
    assert img.shape == (5, 16) and txt.shape == (3, 16)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    assert m.similarity(img, txt).shape == (5, 3)
    assert m.encode_texts(CAPTIONS, batch_size=4).shape == (len(CAPTIONS), 16)
    assert m.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        m.encode_image(torch.randn(2, 3, 32, 32))


def test_preprocess_resizes_crops_and_normalises_with_half():
    m = small()
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))  # 60 wide, 40 high
    unit = m.preprocess.to_unit([im])
    assert unit.shape == (1, 3, 16, 16) and 0.0 <= unit.min() and unit.max() <= 1.0
    x = m.preprocess([im])
    torch.testing.assert_close(x, (unit - 0.5) / 0.5)
    torch.testing.assert_close(x, m.preprocess.normalize(m.preprocess.to_unit([im])))
    white = Image.new("RGB", (16, 16), (255, 255, 255))
    torch.testing.assert_close(m.preprocess([white]), torch.ones(1, 3, 16, 16))


def test_word_tokenizer_fit_encode_truncate_roundtrip(tmp_path):
    tok = WordTokenizer.fit(["A red circle.", "a blue circle"])
    assert tok.vocab[:4] == list(WordTokenizer.SPECIALS)
    assert tok.vocab[4:6] == ["a", "circle"]  # most frequent first, ties alphabetical
    enc = tok(["a red circle.", "a purple circle"], max_length=5)
    ids = enc["input_ids"]
    assert ids.shape == (2, 5)
    assert ids[0].tolist() == [
        tok.BOS,
        tok.index["a"],
        tok.index["red"],
        tok.index["circle"],
        tok.EOS,
    ]  # '.' cut
    assert ids[1].tolist() == [tok.BOS, tok.index["a"], tok.UNK, tok.index["circle"], tok.EOS]
    short = tok(["red"], max_length=8)
    assert short["input_ids"].shape == (1, 3) and short["attention_mask"].tolist() == [[1, 1, 1]]
    padded = tok(["red", "a red circle"], max_length=8)
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    tok.save(tmp_path / "t.json")
    assert WordTokenizer.load(tmp_path / "t.json").vocab == tok.vocab
    with pytest.raises(ValueError, match="captions"):
        ScratchDualEncoder.create("tiny")


def _token_outputs(m, ids):
    return m.text.forward_tokens(ids, torch.ones_like(ids))


def test_causal_mask_position_t_ignores_later_tokens():
    m = small(causal=True)
    ids = torch.randint(4, len(m.tokenizer), (1, 10), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] + 1 - 4) % (len(m.tokenizer) - 4) + 4
    a, b = _token_outputs(m, ids), _token_outputs(m, changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-4)
    # a bidirectional encoder does let later tokens change earlier outputs (the check above can fail)
    bi = small(causal=False)
    assert not torch.allclose(_token_outputs(bi, ids)[:, :6], _token_outputs(bi, changed)[:, :6], atol=1e-4)


def test_local_attention_window_respected():
    w, layers = 2, 2  # receptive field after 2 layers: +-4 positions
    m = small(causal=False, text_attention="local", local_window=w, text_layers=layers)
    mask = text_attention_mask(torch.ones(1, 8, dtype=torch.long), causal=False, window=w)[0, 0]
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    assert torch.equal(mask, (i - j).abs() <= w)
    ids = torch.randint(4, len(m.tokenizer), (1, 14), generator=torch.Generator().manual_seed(1))
    far, near = ids.clone(), ids.clone()
    far[0, 0 + w * layers + 1] = 4 if far[0, 5] != 4 else 5
    near[0, 1] = 4 if near[0, 1] != 4 else 5
    base = _token_outputs(m, ids)
    torch.testing.assert_close(base[:, 0], _token_outputs(m, far)[:, 0], rtol=0, atol=1e-6)
    assert not torch.allclose(base[:, 0], _token_outputs(m, near)[:, 0], atol=1e-4)


def test_padding_never_changes_embeddings_for_every_variant():
    for kw in (
        {"causal": True},
        {"causal": False},
        {"causal": False, "text_pooling": "cls"},
        {"text_attention": "local", "local_window": 1},
        {"text_attention": "memory", "n_memory": 3},
    ):
        m = small(**kw)
        texts = ["a red circle", "a pink square on the left"]
        tight = m.tokenize(texts)
        wide = m.tokenizer(texts, padding="max_length", max_length=16)
        assert wide["input_ids"].shape[1] == 16 > tight["input_ids"].shape[1]
        torch.testing.assert_close(
            m.encode_text(**tight), m.encode_text(**wide), atol=1e-5, rtol=1e-5, msg=str(kw)
        )
        assert torch.isfinite(m.encode_text(**wide)).all()


def test_memory_variant_attends_to_learned_memory_not_the_image():
    m = small(text_attention="memory", n_memory=3)
    assert m.text.memory.shape == (3, 32) and all(b.cross_attn is not None for b in m.text.blocks)
    tokens = m.tokenize(CAPTIONS[:2])
    before = m.encode_text(**tokens)
    with torch.no_grad():
        m.text.memory.add_(1.0)
    assert not torch.allclose(before, m.encode_text(**tokens), atol=1e-4)


def test_memory_variant_was_called_cross():
    with pytest.raises(ValueError, match="now called 'memory'.*ScratchBLIP"):
        ScratchConfig(text_attention="cross")
    assert ScratchConfig.from_dict({"text_attention": "cross"}).text_attention == "memory"  # old saves load


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ScratchConfig(image_size=60, patch_size=8)
    with pytest.raises(ValueError, match="divisible by heads"):
        ScratchConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="unknown ScratchConfig field"):
        ScratchConfig.from_dict({"widht": 3})
    with pytest.raises(ValueError, match="unknown ScratchConfig preset"):
        ScratchConfig.preset("huge")
    b32 = PRESETS["vit_b32"]
    assert (b32.image_size, b32.patch_size, b32.width, b32.layers, b32.text_width, b32.embed_dim) == (
        224,
        32,
        768,
        12,
        512,
        512,
    )


@pytest.mark.skipif(not HAS_CLIP_TOKENIZER, reason="shared CLIP tokenizer files not present")
def test_vit_b32_matches_openai_clip_parameter_count():
    from transformers import CLIPConfig, CLIPModel

    path = shared_data_dir() / "clip-vit-base-patch32"
    with torch.device("meta"):
        ours = ScratchDualEncoder.create("vit_b32")
        ref = CLIPModel(CLIPConfig.from_pretrained(str(path)))
    count = lambda mod: sum(p.numel() for p in mod.parameters())
    assert count(ours) == count(ref)  # 151,277,313: same architecture shape as openai/clip-vit-base-patch32


def test_save_load_roundtrip_word_tokenizer(tmp_path):
    m = small(text_attention="local")
    m.save(tmp_path / "m")
    r = ScratchDualEncoder.load(tmp_path / "m")
    assert r.config == m.config and r.tokenizer.vocab == m.tokenizer.vocab
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(r.encode_image(x), m.encode_image(x), rtol=0, atol=0)
    torch.testing.assert_close(
        r.encode_text(**r.tokenize(CAPTIONS)), m.encode_text(**m.tokenize(CAPTIONS)), rtol=0, atol=0
    )
    assert r.fingerprint() == m.fingerprint()
    with torch.no_grad():
        r.log_logit_scale.add_(0.1)
    assert r.fingerprint() != m.fingerprint()
    with pytest.raises(FileNotFoundError, match="ScratchDualEncoder"):
        ScratchDualEncoder.load(tmp_path / "nothing")


@pytest.mark.skipif(not HAS_CLIP_TOKENIZER, reason="shared CLIP tokenizer files not present")
def test_save_load_roundtrip_clip_bpe_tokenizer(tmp_path):
    m = ScratchDualEncoder.create("tiny", seed=0, tokenizer=clip_tokenizer(), **SMALL).eval()
    assert len(m.tokenizer) == 49408 and m.text.token_embedding.num_embeddings == 49408
    long = m.tokenize(["word " * 40])["input_ids"]
    assert long.shape == (1, 16) and long[0, -1].item() == m.tokenizer.eos_token_id  # truncated, EOT kept
    m.save(tmp_path / "m")
    r = ScratchDualEncoder.load(tmp_path / "m")
    torch.testing.assert_close(
        r.encode_text(**r.tokenize(CAPTIONS)), m.encode_text(**m.tokenize(CAPTIONS)), rtol=0, atol=0
    )


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    m = small().train()
    images = torch.randn(8, 3, 16, 16)
    tokens = m.tokenize(CAPTIONS[:8])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(30):
        loss = clip_loss(m.encode_image(images), m.encode_text(**tokens), m.log_logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * math.log(8) and losses[-1] < 0.25 * losses[0], losses
    sim = m.similarity(m.encode_image(images), m.encode_text(**tokens))
    assert torch.equal(sim.argmax(dim=1), torch.arange(8))  # every image now finds its own caption
