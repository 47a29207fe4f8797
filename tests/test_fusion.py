"""Fusion models from scratch (vlnb.models.fusion) and ITM with hard negatives (vlnb.train.itm), tiny configs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vlnb.models import load_model
from vlnb.models.base import CrossEncoder, DualEncoder
from vlnb.models.fusion import (
    FusionConfig,
    ScratchBLIP,
    ScratchQFormer,
    ScratchViLT,
    create_fusion,
    load_fusion,
    qformer_config,
)
from vlnb.models.scratch import ScratchConfig, VisionTransformer, WordTokenizer
from vlnb.train.itm import (
    FUSION_PROTOCOLS,
    _masked_softmax,
    evaluate_fusion,
    fusion_glue,
    fusion_results,
    hard_negative_itm_loss,
    itm_loss,
    itm_pairs,
    negatives_mask,
    query_max_similarity,
    sample_hard_negatives,
    sample_random_negatives,
    train_fusion,
)

CAPTIONS = ["a red circle", "a blue square", "two green stars", "a small yellow triangle on grass",
            "a red circle left of a blue square", "three objects"]
TINY = {"width": 16, "layers": 1, "text_layers": 1, "heads": 2, "embed_dim": 8, "image_size": 16, "patch_size": 8,
        "context_length": 16}


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.fit(CAPTIONS)


@pytest.fixture(scope="module")
def backbone():
    vc = ScratchConfig(image_size=16, patch_size=8, width=16, layers=1, heads=2, embed_dim=8, text_width=16,
                       text_layers=1, text_heads=2, context_length=16)
    torch.manual_seed(0)
    return VisionTransformer(vc), vc


def _model(arch, tok, backbone, seed=0):
    if arch == "qformer":
        vit, vc = backbone
        cfg = qformer_config(vc, width=16, layers=1, heads=2, embed_dim=8, n_queries=3)
        return create_fusion(cfg, tokenizer=tok, seed=seed, backbone=vit)
    return create_fusion(FusionConfig(arch=arch, **TINY), tokenizer=tok, seed=seed)


def _pixels(n, size=16, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- shapes
def test_shapes_and_interfaces(tok, backbone):
    px, texts = _pixels(4), CAPTIONS[:4]
    vilt = _model("vilt", tok, backbone)
    assert isinstance(vilt, CrossEncoder) and vilt.kind == "cross"
    assert vilt.score(px, texts).shape == (4,)
    tokens = vilt.tokenize(texts)
    assert vilt.itm_logits(px, **tokens).shape == (4, 2)

    blip = _model("blip", tok, backbone)
    assert isinstance(blip, DualEncoder)
    img, txt = blip.encode_image(px), blip.encode_text(**blip.tokenize(texts))
    assert img.shape == (4, 8) and txt.shape == (4, 8)
    assert torch.allclose(img.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert blip.image_tokens(px).shape == (4, 1 + 4, 16)  # CLS + (16/8)^2 patches
    assert blip.cross_encoder().score(px, texts).shape == (4,)

    qf = _model("qformer", tok, backbone)
    q = qf.encode_image(px)
    assert q.shape == (4, 3, 8) and torch.allclose(q.norm(dim=-1), torch.ones(4, 3), atol=1e-5)
    assert qf.encode_text(**qf.tokenize(texts)).shape == (4, 8)
    assert qf.cross_encoder().score(px, texts).shape == (4,)


def test_itm_scores_depend_on_the_image_and_the_text(tok, backbone):
    px = _pixels(2)
    for arch in ("vilt", "blip", "qformer"):
        m = _model(arch, tok, backbone).eval()
        cross = m if arch == "vilt" else m.cross_encoder()
        with torch.no_grad():
            a = cross.score(px[[0, 0]], [CAPTIONS[0], CAPTIONS[1]])
            b = cross.score(px[[0, 1]], [CAPTIONS[0], CAPTIONS[0]])
        assert a[0] != a[1] and b[0] != b[1], arch


def test_indexed_itm_scores_equal_per_pair(tok, backbone):
    """Each distinct image's cross-attention keys/values are projected once (IndexedContext), and the scores
    are those of one image copy per pair, to the bit."""
    px, texts = _pixels(2), CAPTIONS[:5]
    idx = torch.tensor([0, 1, 0, 0, 1])
    for arch in ("blip", "qformer"):
        m = _model(arch, tok, backbone).eval()
        cross = m.cross_encoder()
        blocks = m.text.blocks if arch == "blip" else m.blocks
        rows = []
        hook = blocks[0].cross_attn.kv.register_forward_hook(lambda mod, inp, out, rows=rows: rows.append(len(inp[0])))
        with torch.no_grad():
            indexed = cross.score_indexed(px, idx, texts)
            per_pair = cross.score(px[idx], texts)
        hook.remove()
        assert torch.equal(indexed, per_pair), arch
        assert rows == [2, 5], arch  # two distinct images projected once each; then one copy per pair


def test_qformer_itc_is_max_over_queries(tok, backbone):
    qf = _model("qformer", tok, backbone).eval()
    with torch.no_grad():
        img = qf.encode_image(_pixels(3))
        txt = qf.encode_text(**qf.tokenize(CAPTIONS[:5]))
        sim = qf.similarity(img, txt)
    per_query = torch.stack([img[:, k] @ txt.T for k in range(img.shape[1])])  # (Q, N, M) by hand
    torch.testing.assert_close(sim, per_query.max(dim=0).values)
    torch.testing.assert_close(query_max_similarity(img, txt), sim)
    assert not torch.allclose(sim, per_query.mean(dim=0))


def test_qformer_backbone_is_frozen_and_copied(tok, backbone):
    vit, _ = backbone
    qf = _model("qformer", tok, backbone)
    assert not any(p.requires_grad for p in qf.backbone.parameters())
    for (n, a), b in zip(qf.backbone.state_dict().items(), vit.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    qf.train()
    assert not qf.backbone.training
    with pytest.raises(ValueError, match="backbone"):
        create_fusion(qformer_config(backbone[1], width=16, heads=2), tokenizer=tok)


# ---------------------------------------------------------------------------------------------- ITM loss
def test_itm_loss_with_hard_negatives_against_hand_computed_case():
    # two images, one caption each: the only valid negative of each is the other pair's, so every draw
    # (hard text, hard image, random) is forced and the loss can be written down by hand
    sim = torch.tensor([[0.9, 0.1], [0.3, 0.8]])
    valid = negatives_mask(["a red circle", "a blue square"], [["a red circle"], ["a blue square"]])
    assert valid.tolist() == [[False, True], [True, False]]
    table = {(0, 0): (0.0, 2.0), (1, 1): (1.0, 1.0), (0, 1): (0.5, -0.5), (1, 0): (-1.0, 0.0)}
    seen = []

    def score(ii, tt):
        seen.extend(zip(ii.tolist(), tt.tolist()))
        return torch.tensor([table[(i, t)] for i, t in zip(ii.tolist(), tt.tolist())])

    loss = hard_negative_itm_loss(score, sim, valid, scale=10.0, generator=torch.Generator().manual_seed(0))
    # positives (0,0), (1,1); hard text per image (0,1), (1,0); hard image per text (1,0), (0,1); random (0,1), (1,0)
    assert seen == [(0, 0), (1, 1), (0, 1), (1, 0), (1, 0), (0, 1), (0, 1), (1, 0)]
    def sp(z):  # CE of a 2-way softmax: log(1 + e^(wrong - right))
        return math.log1p(math.exp(z))

    by_hand = (sp(0.0 - 2.0) + sp(1.0 - 1.0) + 3 * sp(-0.5 - 0.5) + 3 * sp(0.0 - (-1.0))) / 8
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    # without random negatives: 2 positives, 4 negatives
    loss2 = hard_negative_itm_loss(score, sim, valid, random_negatives=False)
    assert loss2.item() == pytest.approx((sp(-2.0) + sp(0.0) + 2 * sp(-1.0) + 2 * sp(1.0)) / 6, rel=1e-6)


def test_itm_loss_is_cross_entropy():
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-2.0))) / 2
    assert itm_loss(logits, torch.tensor([1, 0])).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="itm logits"):
        itm_loss(torch.zeros(3, 3), torch.zeros(3))


def test_hard_negatives_follow_softmax_of_similarity():
    # image 0 may pair with texts 1 and 2 only; softmax(scale * sim) gives them 3:1
    sim = torch.tensor([[5.0, math.log(3.0), 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    valid = ~torch.eye(3, dtype=torch.bool)
    w = _masked_softmax(sim, valid)
    torch.testing.assert_close(w[0] / w[0].sum(), torch.tensor([0.0, 0.75, 0.25]))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_hard_negatives(sim, valid, 1.0, g)[0][0] for _ in range(600)])
    assert set(draws.tolist()) == {1, 2}
    assert (draws == 1).float().mean().item() == pytest.approx(0.75, abs=0.06)


def test_mining_never_picks_the_positive_nor_a_caption_of_the_same_image():
    # 5 captions per image; batch rows hold one of them, and some rows repeat a caption another image also has
    caption_sets = [[f"img{i} cap{c}" for c in range(5)] for i in range(6)]
    caption_sets[3].append("img0 cap1")  # image 3 also has a caption of image 0 (identical wording)
    caption_sets[5].append("img4 cap0")
    batch = ["img0 cap1", "img1 cap0", "img2 cap4", "img3 cap2", "img4 cap0", "img5 cap3"]
    valid = negatives_mask(batch, caption_sets)
    assert not valid.diagonal().any()
    assert not valid[3, 0] and not valid[5, 4]  # true captions of images 3 and 5, though from other rows
    assert valid.sum() == 36 - 6 - 2
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        sim = torch.randn(6, 6, generator=g) * 5
        sim.diagonal().add_(10)  # the positive is by far the most similar: must still never be drawn
        t_for_i, i_for_t = sample_hard_negatives(sim, valid, 5.0, g)
        for i, j in enumerate(t_for_i.tolist()):
            assert j >= 0 and batch[j] not in caption_sets[i], (trial, i, j)
        for j, i in enumerate(i_for_t.tolist()):
            assert i >= 0 and batch[j] not in caption_sets[i], (trial, i, j)
        for i, j in enumerate(sample_random_negatives(valid, g).tolist()):
            assert batch[j] not in caption_sets[i]
    img, txt, labels = itm_pairs(sim, valid, 5.0, generator=g)
    for i, t, y in zip(img.tolist(), txt.tolist(), labels.tolist()):
        assert (batch[t] in caption_sets[i]) == bool(y)


def test_a_row_without_valid_negative_gets_none():
    valid = torch.tensor([[False, False], [True, False]])
    t_for_i, i_for_t = sample_hard_negatives(torch.zeros(2, 2), valid)
    assert t_for_i.tolist() == [-1, 0] and i_for_t.tolist() == [1, -1]
    img, txt, labels = itm_pairs(torch.zeros(2, 2), valid, random_negatives=False)
    assert labels.tolist() == [1, 1, 0, 0] and img.tolist() == [0, 1, 1, 1] and txt.tolist() == [0, 1, 0, 0]
    with pytest.raises(ValueError, match="not among its image's captions"):
        negatives_mask(["x"], [["y"]])


# ---------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("arch", ["vilt", "blip", "qformer"])
def test_save_load_round_trip_gives_identical_scores(arch, tok, backbone, tmp_path):
    m = _model(arch, tok, backbone, seed=3).eval()
    m.save(tmp_path / arch)
    cfg = json.loads((tmp_path / arch / "config.json").read_text())
    assert cfg["family"] == "fusion" and cfg["arch"] == arch
    back = load_model(str(tmp_path / arch))
    assert type(back) is type(m) and back.fingerprint() == m.fingerprint()
    px, texts = _pixels(3, seed=1), CAPTIONS[:3]
    with torch.no_grad():
        if arch == "vilt":
            torch.testing.assert_close(back.score(px, texts), m.score(px, texts), rtol=0, atol=0)
        else:
            torch.testing.assert_close(back.encode_image(px), m.encode_image(px), rtol=0, atol=0)
            torch.testing.assert_close(back.cross_encoder().score(px, texts), m.cross_encoder().score(px, texts),
                                       rtol=0, atol=0)


def test_load_rejects_bad_folders(tmp_path, tok, backbone):
    with pytest.raises(FileNotFoundError, match="fusion model"):
        load_fusion(tmp_path)
    m = _model("blip", tok, backbone)
    m.save(tmp_path / "m")
    f = tmp_path / "m" / "config.json"
    meta = json.loads(f.read_text())
    meta["config"]["arch"] = "vilt"
    f.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="arch"):
        load_fusion(tmp_path / "m")
    meta["config"] = {"arch": "blip", "bogus": 1}
    f.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="bogus"):
        load_fusion(tmp_path / "m")
    with pytest.raises(ValueError, match="arch must be one of"):
        FusionConfig(arch="exec")


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def tiny_world():
    from vlnb.data import build_manifest

    df, _ = build_manifest("world", n_train=32, n_test=8, image_size=32, seed=0)  # models resize to 16
    return df[df["split"] == "train"].reset_index(drop=True), df[df["split"] == "test"].reset_index(drop=True)


def test_train_and_evaluate_each_fusion_model(tiny_world):
    from vlnb.models.scratch import ScratchDualEncoder

    train, test = tiny_world
    caps = [c for cs in train["captions"] for c in cs]
    tok = WordTokenizer.fit(caps)
    dual = ScratchDualEncoder.create(ScratchConfig(image_size=16, patch_size=8, width=16, layers=1, heads=2,
                                                   embed_dim=8, text_width=16, text_layers=1, text_heads=2,
                                                   context_length=24), tokenizer=tok, seed=0)
    cfg = {"epochs": 2, "batch_size": 16, "warmup_steps": 1, "lr": 1e-3}
    models = {"vilt": create_fusion(FusionConfig(arch="vilt", **{**TINY, "context_length": 24}), tokenizer=tok, seed=0),
              "blip": create_fusion(FusionConfig(arch="blip", **{**TINY, "context_length": 24}), tokenizer=tok, seed=0),
              "qformer": create_fusion(qformer_config(dual.config, width=16, layers=1, heads=2, embed_dim=8,
                                                      n_queries=2), tokenizer=tok, seed=0, backbone=dual.visual)}
    frozen = {k: v.clone() for k, v in models["qformer"].backbone.state_dict().items()}
    histories = {}
    for arch, m in models.items():
        h = histories[arch] = train_fusion(m, train, cfg, miner=dual, val_data=test, rerank_k=5, progress=False)
        last = h.epochs[-1]
        assert len(h.epochs) == 2 and len(h.steps) == 4 and math.isfinite(last["train_loss"]), arch
        assert ("train_itc_loss" in last) == (arch != "vilt")
        n_img, n_txt = len(test), int(test["captions"].map(len).sum())
        assert 0 < last["n_pairs"] <= (n_img + n_txt) * 5
        for key in ("itc_t2i_R@1", "t2i_R@1", "itm_t2i_R@1", "i2t_R@5", "itc_i2t_R@10"):
            assert 0 <= last[key] <= 100, (arch, key)
        assert "t2i_R@10" not in last  # deeper than the re-ranked list
    for k, v in models["qformer"].backbone.state_dict().items():
        assert torch.equal(v, frozen[k]), f"the frozen tower changed while training: {k}"
    table = fusion_results(histories, dict.fromkeys(histories, test), first_stage={"vilt": "dual"})
    assert set(table["model"]) == set(models) and set(table["protocol"]) == {p for _, p in FUSION_PROTOCOLS}
    r1 = table[(table["k"] == 1) & (table["direction"] == "t2i")]
    assert np.allclose(r1["chance"], 100 / len(test))  # one right image among the test images
    assert (table.loc[table["model"] == "vilt", "first stage"] == "dual").all()
    row = r1[(r1["model"] == "blip") & (r1["protocol"] == FUSION_PROTOCOLS[1][1])].iloc[0]
    assert row["recall"] == histories["blip"].epochs[-1]["t2i_R@1"] and row["ITM pairs"] > 0
    glue = fusion_glue(table)
    assert glue["blip_rerank_t2i_r1"] == f"{row['recall']:.1f}" and "qformer_itc_i2t_r1" in glue
    assert float(glue["fusion_train_s"]) >= 0
    itc_blip = r1[(r1["model"] == "blip") & (r1["protocol"] == FUSION_PROTOCOLS[0][1])]["recall"].iloc[0]
    assert "blip: " in glue["fusion_rerank_verdict"] and f"{itc_blip:.1f} → {row['recall']:.1f}" in glue["fusion_rerank_verdict"]
    with pytest.raises(ValueError, match="miner"):
        train_fusion(models["vilt"], train, cfg, progress=False)
    with pytest.raises(ValueError, match="first_stage"):
        evaluate_fusion(models["vilt"], test)


def test_train_fusion_rejects_other_models(tiny_world):
    with pytest.raises(TypeError, match="fusion"):
        train_fusion(torch.nn.Linear(2, 2), tiny_world[0])


def test_isinstance_contract():
    assert issubclass(ScratchViLT, CrossEncoder) and issubclass(ScratchBLIP, DualEncoder)
    assert issubclass(ScratchQFormer, DualEncoder)


def test_saliency_maps_of_every_fusion_model(tok, backbone):
    """Attention maps and Chefer relevancy run through each fusion model's own forward pass (chapter 6)."""
    from vlnb.interpret.explain import explain, supported_methods
    from vlnb.interpret.trace import trace_attention

    px, texts = _pixels(2), CAPTIONS[:2]
    for arch in ("vilt", "blip", "qformer"):
        m = _model(arch, tok, backbone).eval()
        methods = supported_methods(m)
        assert "chefer" in methods
        maps = explain(m, px, texts, methods=methods)
        for name, sal in maps.items():
            assert sal.grid.shape == (2, 2, 2) and sal.pixels.shape == (2, 16, 16), (arch, name)
            assert torch.isfinite(sal.grid).all(), (arch, name)
        tr = trace_attention(m, px, texts)
        n_special = m.tokenize(texts)["input_ids"].shape[1] if arch == "vilt" else 1
        assert tr.n_tokens == n_special + 4 and tr.grid == (2, 2)
        with torch.no_grad():
            want = m.itm_logits(px, **m.tokenize(texts))[:, 1] if arch == "vilt" else \
                m.similarity(m.encode_image(px), m.encode_text(**m.tokenize(texts))).diagonal()
        torch.testing.assert_close(tr.score, want)


# ---------------------------------------------------------------------------------------------- zoo
def test_zoo_trains_saves_and_reloads_fusion_recipes(tmp_path, monkeypatch):
    """Fusion recipes go through vlnb.zoo like the dual encoders: trained when missing (after the recipe they
    use), saved, reloaded with identical scores, retrained when the used recipe changes, and left out of
    ``include_cross=False`` lists when they are cross encoders."""
    from vlnb import zoo

    monkeypatch.setenv("VLNB_ARTIFACTS", str(tmp_path))
    data = {"n_train": 32, "n_test": 8, "image_size": 32, "seed": 0}
    small = {"width": 16, "layers": 1, "heads": 2, "embed_dim": 8, "seed": 0}
    recipes = {
        "t-scratch": zoo.Recipe("t-scratch", "scratch", "world", {"config": "tiny", "seed": 0, "image_size": 16,
                                                                  "width": 16, "layers": 1, "heads": 2,
                                                                  "text_width": 16, "text_layers": 1, "text_heads": 2,
                                                                  "embed_dim": 8},
                                {"epochs": 1, "batch_size": 16, "warmup_steps": 1}, data),
        "t-vilt": zoo.Recipe("t-vilt", "fusion", "world", {"arch": "vilt", "image_size": 16, **small},
                             {"epochs": 1, "batch_size": 16, "warmup_steps": 1}, data, uses="t-scratch"),
        "t-qformer": zoo.Recipe("t-qformer", "fusion", "world", {"arch": "qformer", "n_queries": 2, "rerank_k": 4,
                                                                  **small},
                                {"epochs": 1, "batch_size": 16, "warmup_steps": 1}, data, uses="t-scratch"),
    }
    for name, r in recipes.items():  # into the one registry dict (zoo.RECIPES is zoo.recipes.RECIPES)
        monkeypatch.setitem(zoo.RECIPES, name, r)
    assert recipes["t-vilt"].key()["uses"]["name"] == "t-scratch"
    assert recipes["t-vilt"].key()["uses"]["model"] == recipes["t-scratch"].model
    assert "uses" not in zoo.RECIPES["scratch-world"].key()  # older recipes keep their keys

    models = zoo.profile_models("offline", models=dict.fromkeys(["t-vilt", "t-qformer"]), device="cpu",
                                progress=False)
    assert isinstance(models["t-vilt"], ScratchViLT) and isinstance(models["t-qformer"], ScratchQFormer)
    assert all(zoo.is_trained(n) for n in ("t-scratch", "t-vilt", "t-qformer"))
    hist = zoo.reference_history("t-qformer")
    assert hist.epochs[-1]["rerank_k"] == 4 and "itc_t2i_R@1" in hist.epochs[-1]
    again = zoo.reference_model("t-qformer", device="cpu", train_if_missing=False)
    assert again.fingerprint() == models["t-qformer"].fingerprint()
    # the Q-Former's frozen tower is the trained t-scratch ViT
    scratch = zoo.reference_model("t-scratch", device="cpu", train_if_missing=False)
    for (k, a), b in zip(again.backbone.state_dict().items(), scratch.visual.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert list(zoo.profile_models("offline", models=dict.fromkeys(["t-vilt", "t-qformer"]), device="cpu",
                                   progress=False, include_cross=False)) == ["t-qformer"]
    # a changed used recipe makes the fusion model stale
    monkeypatch.setitem(zoo.RECIPES, "t-scratch", zoo.Recipe(**{**recipes["t-scratch"].__dict__,
                                                                "train": {"epochs": 2, "batch_size": 16}}))
    assert not zoo.is_trained("t-vilt") and not zoo.is_trained("t-qformer")


def test_offline_profile_lists_the_fusion_recipes():
    from vlnb import zoo

    for name in ("vilt-world", "blip-world", "qformer-world"):
        assert name in zoo.PROFILE_RECIPES["offline"] and zoo.RECIPES[name].kind == "fusion"
    assert zoo.RECIPES["vilt-world"].uses == zoo.RECIPES["qformer-world"].uses == "scratch-world"


def test_chapter4_comparison_evaluates_fusion_models(tiny_world):
    """run_comparison (chapter 4) takes the fusion models as they come from the zoo: BLIP-/Q-Former-like get an
    ITC row and an own-ITM re-ranked row, the ViLT-like model re-ranks the first stage, zero-shot runs on ITC."""
    from vlnb.comparison.experiment import run_comparison
    from vlnb.models.scratch import ScratchDualEncoder

    train, test = tiny_world
    tok = WordTokenizer.fit([c for cs in train["captions"] for c in cs])
    dual = ScratchDualEncoder.create(ScratchConfig(image_size=16, patch_size=8, width=16, layers=1, heads=2,
                                                   embed_dim=8, text_width=16, text_layers=1, text_heads=2,
                                                   context_length=24), tokenizer=tok, seed=0).eval()
    kw = {**TINY, "context_length": 24}
    models = {"dual": dual,
              "blip": create_fusion(FusionConfig(arch="blip", **kw), tokenizer=tok, seed=0).eval(),
              "qformer": create_fusion(qformer_config(dual.config, width=16, layers=1, heads=2, embed_dim=8,
                                                      n_queries=2), tokenizer=tok, seed=0, backbone=dual.visual).eval(),
              "vilt": create_fusion(FusionConfig(arch="vilt", **kw), tokenizer=tok, seed=0).eval()}
    ret, zs, _, cover = run_comparison(models, {"world": test}, first_stage="dual", rerank_k=4, progress=False)
    assert cover["evaluated"].all()
    protocols = ret.groupby("model")["protocol"].unique().map(set).to_dict()
    assert set(protocols) == set(models)  # the ViLT-like model has rows too: it re-ranks dual's top-k
    assert len(protocols["blip"]) == len(protocols["qformer"]) == 2  # ITC, and ITC top-k re-ranked by own ITM
    assert {"blip", "qformer", "dual"} <= set(zs["model"])


def test_chapter4_reads_back_the_pairs_chapter2_scored(tiny_world, tmp_path, monkeypatch):
    """evaluate_fusion (chapter 2's last evaluation) caches the ITM scores of its re-ranked pairs; chapter 4's
    evaluate_retrieval of the same model on the same test set re-ranks the same pairs: it reads them back (no pair
    is scored again) and reports the same recall as scoring them does."""
    from vlnb.eval import rerank
    from vlnb.eval.compare import add_rerank, evaluate_retrieval
    from vlnb.models.scratch import ScratchDualEncoder

    train, test = tiny_world
    tok = WordTokenizer.fit([c for cs in train["captions"] for c in cs])
    dual = ScratchDualEncoder.create(ScratchConfig(image_size=16, patch_size=8, width=16, layers=1, heads=2,
                                                   embed_dim=8, text_width=16, text_layers=1, text_heads=2,
                                                   context_length=24), tokenizer=tok, seed=0).eval()
    scored = []
    real = rerank.score_pixel_text_pairs

    def counting(cross, load, texts, img_idx, txt_idx, *args):
        scored.append(len(img_idx))
        return real(cross, load, texts, img_idx, txt_idx, *args)

    monkeypatch.setattr(rerank, "score_pixel_text_pairs", counting)
    kw = {**TINY, "context_length": 24}
    for arch in ("blip", "vilt"):
        model = create_fusion(FusionConfig(arch=arch, **kw), tokenizer=tok, seed=0).eval()
        dual_encoder, cross = (dual, model) if arch == "vilt" else (model, model.cross_encoder())
        scored.clear()
        ch2 = evaluate_fusion(model, test, first_stage=dual if arch == "vilt" else None, k=4, cache_dir=tmp_path / "a")
        assert scored == [ch2["n_pairs"]]
        for cache, expected in ((tmp_path / "a", []), (tmp_path / "b", [ch2["n_pairs"]])):  # read back / scored
            scored.clear()
            run = evaluate_retrieval(dual_encoder, test, "world", cache_dir=cache, progress=False)
            row = add_rerank(run, cross, test, arch, "p", k=4, progress=False, cache_dir=cache,
                             combine="itm" if arch == "vilt" else "itm+itc")
            assert scored == expected, (arch, cache.name)
            prefix = "itm_" if arch == "vilt" else ""
            for key in ("t2i_R@1", "i2t_R@1"):  # R@K for K <= k = 4 only
                assert row[key] == ch2[prefix + key], (arch, key)
            assert row["n_pairs"] == ch2["n_pairs"]
