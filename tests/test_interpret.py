"""Interpretability: map math by hand, shapes/grids/normalisation per family, ViLT's shuffled tokens, Grad-CAM,
and the pointing game on synthetic models whose attention is known (forced onto the object, or uniform)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vlnb.interpret import (
    attention_entropy,
    chefer_bimodal,
    chefer_relevance,
    entropy_table,
    explain,
    handle_residual,
    normalise_maps,
    rollout,
    supported_methods,
    tokens_to_grid,
    trace_attention,
    upsample_maps,
)
from vlnb.interpret.pointing import (
    PointingPair,
    coco_pairs,
    energy_share,
    mask_in_frame,
    mentions,
    pointing_hit,
    score_pairs,
    size_batches,
    summarise,
    world_pairs,
)
from vlnb.models import PatchGridError, load_model
from vlnb.models.scratch import Attention, ScratchDualEncoder
from vlnb.models.transforms import ImagePreprocess
from vlnb.paths import REPO_ROOT

CAPTIONS = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square", "star")]


def scratch(image_size=16, patch_size=8, **kw) -> ScratchDualEncoder:
    cfg = {"image_size": image_size, "patch_size": patch_size, "width": 32, "layers": 2, "heads": 2, "text_width": 32,
           "text_layers": 1, "text_heads": 2, "embed_dim": 16, "context_length": 16}
    return ScratchDualEncoder.create("tiny", captions=CAPTIONS, seed=0, **{**cfg, **kw}).eval()


def rand_images(n, w=80, h=60, seed=0):
    rng = np.random.RandomState(seed)
    return [Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")) for _ in range(n)]


# ------------------------------------------------------------------------------------------- map math
def two_layer_case():
    """3 tokens (CLS + a 1x2 grid), 2 heads, 2 layers; numbers chosen to be checked by hand."""
    a1 = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                       [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])[None]
    a2 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).expand(2, 3, 3)[None]
    return [a1, a2]


def test_rollout_matches_hand_computation():
    layers = two_layer_case()
    # mean: Â1 = 0.5 * mean(A1) + 0.5 I = [[.75, .125, .125], I rows], Â2 = [[.5, .5, 0], I rows]
    # CLS row of Â2 Â1 = .5 * [.75, .125, .125] + .5 * [0, 1, 0] = [.375, .5625, .0625]
    r = rollout(layers, "mean")
    assert torch.allclose(r[0, 0], torch.tensor([0.375, 0.5625, 0.0625]))
    # max: fuse -> [[.5, .5, .5], ...]; + I -> [1.5, .5, .5] / 2.5 = [.6, .2, .2]; CLS row = .5 * that + .5 * [0, 1, 0]
    r = rollout(layers, "max")
    assert torch.allclose(r[0, 0], torch.tensor([0.3, 0.6, 0.1]))
    # without the residual: CLS row of A2 A1 = row 1 of A1 = [0, 1, 0]
    r = rollout(layers, "mean", residual=False)
    assert torch.allclose(r[0, 0], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(rollout(layers, "mean").sum(-1), torch.ones(1, 3))  # rows stay distributions
    grid = tokens_to_grid(rollout(layers, "mean")[:, 0], torch.tensor([[1, 2]]), (1, 2))
    assert torch.allclose(grid, torch.tensor([[[0.5625, 0.0625]]]))
    with pytest.raises(ValueError, match="head_fusion"):
        rollout(layers, "median")


def test_chefer_rules_by_hand():
    layers = two_layer_case()
    grads = [torch.ones_like(a) for a in layers]
    # R = I; R += mean_h(A1) R; R += A2 R
    a1, a2 = layers[0][0].mean(0), layers[1][0].mean(0)
    r1 = torch.eye(3) + a1
    expected = r1 + a2 @ r1
    assert torch.allclose(chefer_relevance(layers, grads)[0], expected)
    # negative gradients are clipped, missing ones count as zero, start_layer skips layers
    assert torch.allclose(chefer_relevance(layers, [-g for g in grads])[0], torch.eye(3))
    assert torch.allclose(chefer_relevance(layers, [None, grads[1]])[0], torch.eye(3) + a2)
    assert torch.allclose(chefer_relevance(layers, grads, start_layer=1)[0], torch.eye(3) + a2)
    # handle_residual: (R - I) / rowsum + I; R - I = [[1, 1], [0, 0]] -> [[.5, .5], [0, 0]] (zero row kept) + I
    r = torch.tensor([[[2.0, 1.0], [0.0, 1.0]]])
    assert torch.allclose(handle_residual(r), torch.tensor([[[1.5, 0.5], [0.0, 1.0]]]))
    # bi-modal: self event then cross event with unit gradients and R^ii = I
    s = torch.tensor([[0.5, 0.5], [0.0, 1.0]])[None, None]            # (1, 1, Q=2, Q=2)
    c = torch.tensor([[0.2, 0.8, 0.0], [0.0, 0.0, 1.0]])[None, None]  # (1, 1, Q=2, N=3)
    r_qi = chefer_bimodal([("self", s, torch.ones_like(s)), ("cross", c, torch.ones_like(c))], torch.eye(3)[None])
    # R^qq = I + S = [[1.5, .5], [0, 2]]; R^qq - I = [[.5, .5], [0, 1]] has unit row sums, so R̄^qq = R^qq
    # (the self event also updates R^qi, still 0); cross: R^qi += (R̄^qq)^T C R̄^ii = [[1.5, 0], [.5, 2]] C
    expected = torch.tensor([[1.5, 0.0], [0.5, 2.0]]) @ c[0, 0]
    assert torch.allclose(r_qi[0], expected)


def test_entropy_bounds_and_key_mask():
    n = 5
    uniform = torch.full((2, 3, 4, n), 1 / n)
    e = attention_entropy(uniform)
    assert torch.allclose(e["entropy"], torch.full((3,), math.log(n)))
    assert torch.allclose(e["max_entropy"], torch.full((3,), math.log(n)))
    assert torch.allclose(e["normalised"], torch.ones(3))
    onehot = torch.zeros(1, 2, 4, n)
    onehot[..., 0] = 1
    assert torch.allclose(attention_entropy(onehot)["normalised"], torch.zeros(2))
    # only 2 real keys, attended uniformly: maximal for that row
    two = torch.zeros(1, 1, 1, n)
    two[..., :2] = 0.5
    mask = torch.tensor([[True, True, False, False, False]])
    e = attention_entropy(two, key_mask=mask)
    assert torch.allclose(e["max_entropy"], torch.tensor([math.log(2)]))
    assert torch.allclose(e["normalised"], torch.ones(1))


def test_normalise_and_upsample():
    m = torch.tensor([[[0.0, 2.0], [1.0, -1e-9]]])
    n = normalise_maps(m)
    assert n.max() == 1 and n.min() == 0 and torch.allclose(n, torch.tensor([[[0, 1.0], [0.5, 0]]]))
    assert torch.equal(normalise_maps(torch.zeros(1, 2, 2)), torch.zeros(1, 2, 2))
    up = upsample_maps(n, (8, 8), "nearest")
    assert up.shape == (1, 8, 8) and torch.equal(up[0, :4, 4:], torch.ones(4, 4))
    up = upsample_maps(n, (8, 8), "bilinear")
    assert up.shape == (1, 8, 8) and float(up.max()) == 1 and float(up.min()) >= 0


# ------------------------------------------------------------------------------------------- extraction
def test_scratch_keep_weights_is_the_same_attention():
    torch.manual_seed(0)
    att = Attention(16, 2).eval()
    x = torch.randn(2, 5, 16)
    mask = torch.tril(torch.ones(5, 5, dtype=torch.bool))[None, None]
    ref = att(x, mask=mask)
    att.keep_weights = True
    out = att(x, mask=mask)
    assert torch.allclose(out, ref, atol=1e-6)
    w = att.weights
    assert w.shape == (2, 2, 5, 5) and torch.allclose(w.sum(-1), torch.ones(2, 2, 5))
    assert float(w.detach()[..., ~mask[0, 0]].abs().max()) == 0  # masked keys get no weight


def _expected(family):
    return {"clip": ((7, 7), 1, (224, 224)), "blip": ((4, 4), 1, (64, 64)), "blip2": ((4, 4), 1, (32, 32)),
            "vilt": ((4, 5), None, (64, 80))}[family]  # ViLT keeps the 80x60 images' aspect, as its processor


@pytest.mark.parametrize("family", ["clip", "blip", "blip2", "vilt"])
def test_maps_shapes_grids_and_normalisation(family, request):
    model = load_model(str(request.getfixturevalue(f"tiny_{family}_dir")), attn_implementation="eager")
    pixels = model.preprocess(rand_images(2))
    texts = ["a dog on the grass", "a red bus"]
    maps, trace = explain(model, pixels, texts, return_trace=True)
    grid, special, size = _expected(family)
    assert set(maps) == set(supported_methods(model))
    assert trace.grid == grid and tuple(pixels.shape[-2:]) == size
    if special is not None:
        assert trace.n_special == special
    assert trace.n_tokens == trace.n_special + grid[0] * grid[1]
    for m, s in maps.items():
        assert s.grid.shape == (2, *grid), m
        assert s.pixels.shape == (2, *size), m
        assert torch.allclose(s.grid.amax(dim=(1, 2)), torch.ones(2)), m
        assert torch.allclose(s.pixels.amax(dim=(1, 2)), torch.ones(2)), m
        assert float(s.grid.min()) >= 0 and float(s.pixels.min()) >= 0, m
    ent = entropy_table(trace)
    assert (ent["entropy"] <= ent["max_entropy"] + 1e-5).all() and (ent["normalised"] <= 1 + 1e-6).all()
    assert np.allclose(ent["max_entropy"][ent["block"] != "joint"], np.log(ent["n_tokens"][ent["block"] != "joint"]))
    if family == "blip2":
        assert "qformer-cross" in set(ent["block"])


def test_chefer_depends_on_the_text(tiny_clip_dir):
    model = load_model(str(tiny_clip_dir), attn_implementation="eager")
    pixels = model.preprocess(rand_images(1)).expand(2, -1, -1, -1)
    maps = explain(model, pixels, ["a dog on the grass", "two red buses in a city street"],
                   methods=["chefer", "cls_attention"])
    assert torch.allclose(maps["cls_attention"].grid[0], maps["cls_attention"].grid[1])
    assert not torch.allclose(maps["chefer"].grid[0], maps["chefer"].grid[1])


def test_sdpa_model_is_refused(tiny_clip_dir):
    model = load_model(str(tiny_clip_dir), attn_implementation="sdpa")
    with pytest.raises(ValueError, match="eager"):
        trace_attention(model, model.preprocess(rand_images(1)))


def test_vilt_token_permutation_is_undone(tiny_vilt_dir):
    """ViLT shuffles its image tokens on every call: maps on the grid must not depend on the shuffle."""
    model = load_model(str(tiny_vilt_dir), attn_implementation="eager")
    pixels = model.preprocess(rand_images(1))
    texts = ["a dog on the grass"]
    torch.manual_seed(1)
    t1 = trace_attention(model, pixels, texts)
    torch.manual_seed(2)
    t2 = trace_attention(model, pixels, texts)
    assert not torch.equal(t1.positions, t2.positions)  # two different shuffles...
    n_text = t1.n_special - 1
    assert sorted(t1.positions[0].tolist()) == list(range(n_text + 1, t1.n_tokens))
    for m in ("cls_attention", "rollout_mean"):
        from vlnb.interpret import attention_grid_maps

        assert torch.allclose(attention_grid_maps(t1, m), attention_grid_maps(t2, m), atol=1e-5), m  # ...one map
    # the raw token order differs between the calls, so reading it in sequence order would give two maps
    raw1 = t1.attentions[-1].mean(1)[0, 0, n_text + 1:]
    raw2 = t2.attentions[-1].mean(1)[0, 0, n_text + 1:]
    assert not torch.allclose(raw1, raw2, atol=1e-4)


def test_grid_mismatch_and_bad_inputs_raise():
    from vlnb.interpret.trace import _check_grid

    with pytest.raises(PatchGridError, match="81 tokens"):
        _check_grid(81, 1, (14, 14), "model")
    m = scratch()
    with pytest.raises(ValueError, match="texts"):
        explain(m, torch.zeros(1, 3, 16, 16), methods=["chefer"])
    with pytest.raises(ValueError, match="supports"):
        explain(m, torch.zeros(1, 3, 16, 16), ["a red circle"], methods=["gradcam"])
    with pytest.raises(ValueError, match="aligned"):
        trace_attention(m, torch.zeros(2, 3, 16, 16), ["a red circle"])


def test_scratch_family_and_mean_pooling():
    for pooling in ("cls", "mean"):
        m = scratch(image_size=24, pooling=pooling)
        maps, trace = explain(m, torch.randn(2, 3, 24, 24), ["a red circle", "a blue star"], return_trace=True)
        assert trace.grid == (3, 3) and trace.n_tokens == 10
        assert trace.readout == ([0] if pooling == "cls" else list(range(1, 10)))
        assert all(s.pixels.shape == (2, 24, 24) for s in maps.values())
        assert all(a.keep_weights is False and a.weights is None for a in (b.attn for b in m.visual.blocks))


# ------------------------------------------------------------------------------------------- Grad-CAM
def test_gradcam_towers_shape_and_non_negative():
    pytest.importorskip("efficientnet_lite_pytorch")
    from vlnb.models.towers import TowersDualEncoder

    torch.manual_seed(0)
    model = TowersDualEncoder(embed_dim=32).eval()
    pixels = model.preprocess(rand_images(2, w=300, h=250))
    maps = explain(model, pixels, ["a dog on a couch", "a red bus"])
    assert list(maps) == ["gradcam"]
    g = maps["gradcam"]
    assert g.grid.shape == (2, 7, 7) and g.pixels.shape == (2, 224, 224)
    assert float(g.grid.min()) >= 0 and float(g.pixels.min()) >= 0
    assert torch.allclose(g.pixels.amax(dim=(1, 2)), torch.ones(2))
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())  # no weight gradients left


# ------------------------------------------------------------------------------------------- pointing game
class FixedAttention(Attention):
    """Attention whose weights are a fixed pattern (every query row = ``row``), whatever the input."""

    def __init__(self, width, heads, row: torch.Tensor):
        super().__init__(width, heads)
        self.row = row

    def forward(self, x, context=None, mask=None):
        b, n, w = x.shape
        v = self.kv(x).view(b, n, 2, self.heads, -1).permute(2, 0, 3, 1, 4)[1]
        weights = self.row.to(x.dtype).expand(b, self.heads, n, n)
        if self.keep_weights:
            self.weights = weights
        return self.out((weights @ v).transpose(1, 2).reshape(b, n, w))


def synthetic(row: torch.Tensor, image_size: int = 48) -> ScratchDualEncoder:
    m = scratch(image_size=image_size)
    for blk in m.visual.blocks:
        fixed = FixedAttention(32, 2, row)
        fixed.load_state_dict(blk.attn.state_dict())
        blk.attn = fixed
    return m.eval()


def block_mask(size, rows, cols, patch=8):
    m = np.zeros((size, size), bool)
    m[rows[0] * patch: rows[1] * patch, cols[0] * patch: cols[1] * patch] = True
    return m


def test_forced_attention_scores_one_on_the_pointing_game():
    size, g = 48, 6  # 6x6 grid of 8-px patches
    target = block_mask(size, (1, 3), (1, 3))
    distractor = block_mask(size, (4, 6), (4, 6))
    cells = [r * g + c for r in range(1, 3) for c in range(1, 3)]
    row = torch.zeros(1 + g * g)
    row[[1 + c for c in cells]] = 1 / len(cells)
    model = synthetic(row)
    img = rand_images(1, size, size)[0]
    pairs = [PointingPair("synthetic", f"im{i}", img, "a red circle", "red circle", "blue star", target, distractor)
             for i in range(3)]
    methods = ["cls_attention", "rollout_mean", "rollout_max"]
    exact, _ = score_pairs(model, "forced", pairs, methods, upsample="nearest")
    assert np.allclose(exact["energy_target"], 1.0) and np.allclose(exact["energy_distractor"], 0.0)
    assert exact["hit_target"].all() and not exact["hit_distractor"].any()
    smooth, _ = score_pairs(model, "forced", pairs, methods, upsample="bilinear")
    # bilinear spreads each 2x2-patch block over half a patch around it: (14 / 16)^2 of the energy stays inside
    assert np.allclose(smooth["energy_target"], (14 / 16) ** 2, atol=1e-4)
    assert np.allclose(smooth["energy_distractor"], 0.0) and smooth["hit_target"].all()
    s = summarise(exact, n_boot=50)
    assert np.allclose(s["energy_target"], 1.0) and np.allclose(s["excess"], 1.0 - (target.mean() - distractor.mean()))
    from vlnb.interpret.study import headlines

    h = headlines(s.assign(dataset="world"))
    assert h["best"].startswith("forced with") and h["agnostic_gap"] == f"{1.0:.1e}"


def test_uniform_attention_scores_the_area_share():
    from vlnb.data import build_manifest

    df, _ = build_manifest("world", n_train=0, n_test=12, image_size=48, seed=0)
    pairs = world_pairs(df, n_images=4)
    assert pairs, "no world image with two unique objects"
    model = synthetic(torch.full((1 + 36,), 1 / 37))
    for mode in ("bilinear", "nearest"):
        rec, examples = score_pairs(model, "uniform", pairs, ["cls_attention", "rollout_mean"], upsample=mode, keep=2)
        assert np.allclose(rec["energy_target"], rec["area_target"], atol=1e-6)
        assert np.allclose(rec["energy_distractor"], rec["area_distractor"], atol=1e-6)
        assert len(examples) == 2 and examples[0].maps["cls_attention"].shape == (48, 48)


def test_world_pairs_are_symmetric_and_named():
    from vlnb.data import build_manifest, get_annotations

    df, _ = build_manifest("world", n_train=0, n_test=30, image_size=64, seed=0)
    pairs = world_pairs(df, n_images=5)
    assert len(pairs) == 10
    for a, b in zip(pairs[::2], pairs[1::2]):
        assert a.image_id == b.image_id and (a.target, a.distractor) == (b.distractor, b.target)
        assert a.text == f"a {a.target}" and a.target != a.distractor
        cats = [o.category for o in get_annotations(df, a.image_id)]
        assert cats.count(a.target) == 1 and cats.count(a.distractor) == 1
        assert a.target_mask.any() and not (a.target_mask & a.distractor_mask).any()


def test_coco_pairs_use_captions_and_real_masks():
    from vlnb.zoo import reference_data

    assert mentions("A man riding a bike down the street.", "person")
    assert mentions("Two dining tables.", "dining table") and not mentions("A woman with a cat", "dog")
    df = reference_data("towers-coco")["test"]
    pairs = coco_pairs(df, n_images=8)
    assert len(pairs) >= 8
    for p in pairs:
        assert mentions(p.text, p.target) and not mentions(p.text, p.distractor)
        assert p.text in df.loc[df["image_id"] == int(p.image_id), "captions"].iloc[0]
        assert p.target_mask.shape == (p.image.height, p.image.width) and p.target_mask.mean() >= 0.01


def test_mask_in_frame_follows_resize_and_crop():
    mask = np.zeros((60, 100), bool)
    mask[10:30, 40:60] = True
    pre = ImagePreprocess(30, 30, "bicubic")  # shortest edge 60 -> 30 (x0.5), width 100 -> 50, center crop 30
    m = mask_in_frame(mask, pre)
    assert m.shape == (30, 30)
    expected = np.zeros((30, 30), bool)
    expected[5:15, 10:20] = True  # rows 10..30 -> 5..15; cols 40..60 -> 20..30 minus the 10-px crop offset
    assert np.array_equal(m, expected)


def test_mask_in_frame_is_the_vilt_input_frame(tiny_vilt_dir):
    """ViLT keeps the aspect ratio and floors both sides to whole patches: the masks must follow, or every
    map and mask of a COCO photo differ in shape (a 640x427 photo is 64x96 here; a plain resize gives 64x95)."""
    pre = load_model(str(tiny_vilt_dir), attn_implementation="eager").preprocess
    for w, h in ((640, 427), (427, 640), (500, 333), (80, 60)):
        mask = np.zeros((h, w), bool)
        mask[h // 4: h // 2, w // 3: w // 2] = True
        m = mask_in_frame(mask, pre)
        img = Image.new("RGB", (w, h))
        assert m.shape == tuple(pre([img]).shape[-2:]) == pre.output_hw(h, w), (w, h)
        assert 0 < m.mean() < 0.2
    plain = ImagePreprocess(30, 30)
    for w, h in ((100, 60), (60, 100)):
        assert plain.output_hw(h, w) == tuple(plain([Image.new("RGB", (w, h))]).shape[-2:]) == (30, 30)
    aspect = ImagePreprocess(30)  # shortest edge only: the aspect ratio is kept
    for w, h in ((100, 60), (60, 100), (61, 61)):
        assert aspect.output_hw(h, w) == tuple(aspect([Image.new("RGB", (w, h))]).shape[-2:]), (w, h)


def test_vilt_pairs_of_different_sizes_are_batched_by_size(tiny_vilt_dir):
    """A ViLT batch of different aspect ratios is padded, and HF fills each image up with padding patches:
    the tracer refuses such a batch, the pointing game and the entropies group images by input size."""
    import pandas as pd

    from vlnb.interpret.study import entropy_of

    model = load_model(str(tiny_vilt_dir), attn_implementation="eager")
    wide, tall = rand_images(2, 96, 64, seed=1), rand_images(2, 64, 96, seed=2)
    images = [wide[0], tall[0], wide[1], tall[1]]
    assert size_batches(model.preprocess, images, 8) == [[0, 2], [1, 3]]
    assert size_batches(model.preprocess, images, 1) == [[0], [2], [1], [3]]
    assert size_batches(ImagePreprocess(32, 32), images, 3) == [[0, 1, 2], [3]]
    mixed = model.preprocess(images)
    assert torch.isnan(mixed).any()  # padded to 96x96
    with pytest.raises(PatchGridError, match="mixes input sizes"):
        trace_attention(model, mixed, ["a dog"] * 4)

    target = np.zeros((64, 96), bool)
    target[:32, :48] = True
    pairs = []
    for i, im in enumerate(images):
        t = target if im.width > im.height else target.T
        pairs.append(PointingPair("synthetic", f"im{i}", im, "a dog on the grass", "dog", "cat", t, ~t))
    methods = ["cls_attention", "rollout_mean", "chefer"]
    batched, ex = score_pairs(model, "vilt", pairs, methods, batch_size=4, keep=3)
    single, _ = score_pairs(model, "vilt", pairs, methods, batch_size=1)
    assert list(batched["pair"]) == [j for j in range(4) for _ in methods]  # pair order, not batch order
    assert not batched["dropped"].any() and batched["energy_target"].between(0, 1).all()
    assert np.allclose(batched["energy_target"], single["energy_target"], atol=1e-4)  # maps do not see the batch
    assert [e.pair_index for e in ex] == [0, 1, 2]
    assert ex[0].maps["chefer"].shape == (64, 96) and ex[1].maps["chefer"].shape == (96, 64)

    pooled = entropy_of(model, "vilt", pairs, n=4)
    per_image = pd.concat([entropy_of(model, "vilt", [p], n=1) for p in pairs])
    keys = ["block", "layer", "head", "rows"]
    expect = per_image.groupby(keys, sort=False)[["entropy", "max_entropy", "normalised"]].mean().reset_index()
    assert len(pooled) == len(expect)
    for c in ("entropy", "max_entropy", "normalised"):
        assert np.allclose(pooled[c], expect[c], atol=1e-5), c


def test_a_relative_coco_root_is_relative_to_the_repository(tmp_path, monkeypatch):
    """The full profile's coco_root is "data/coco": a chapter runs in its run folder, so it must not be read
    relative to the working folder."""
    import os

    from vlnb.interpret.study import load_pairs
    from vlnb.paths import shared_data_dir

    rel = os.path.relpath(shared_data_dir(required=True) / "coco-mini", REPO_ROOT)
    monkeypatch.chdir(tmp_path)  # like a run folder
    assert not (tmp_path / rel).exists()
    pairs = load_pairs(["coco"], 2, coco_root=rel, coco_split="val2017")["coco"]
    assert pairs and all(p.dataset == "coco" for p in pairs)


def test_energy_share_and_hit():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    assert energy_share(np.ones((4, 4)), mask)[0] == pytest.approx(0.25)
    assert np.isnan(energy_share(np.zeros((4, 4)), mask)[0])
    peak = np.zeros((4, 4))
    peak[3, 3] = 1
    assert not pointing_hit(peak, mask) and pointing_hit(peak, mask, tolerance=2)
    with pytest.raises(ValueError, match="non-negative"):
        energy_share(-np.ones((4, 4)), mask)


def test_params_registered():
    from vlnb.config import ParameterError, resolve

    cfg = resolve("06_interpretability", profile="full", n_images=3)
    assert cfg.n_images == 3 and cfg.coco_root == "data/coco"
    with pytest.raises(ParameterError, match="methods"):
        resolve("06_interpretability", methods=["saliency"])


# ------------------------------------------------------------------------------------------- the chapter
NOTEBOOK = REPO_ROOT / "notebooks" / "06_interpretability.ipynb"


@pytest.mark.slow
def test_chapter_offline(offline_book):
    """Chapter 6 as the session's offline book ran it (tests/conftest.py::offline_book): the reference models it
    loads are the ones chapter 2 trained (and saved) in that build."""
    stem = NOTEBOOK.stem
    s = offline_book.results(stem, "pointing_game")
    assert {"scratch-world", "towers-coco"} <= set(s["model"])  # plus the fusion recipes of the offline profile
    assert set(s.loc[s["model"] == "towers-coco", "method"]) == {"gradcam"}
    assert {"cls_attention", "rollout_mean", "rollout_max", "chefer"} <= set(s.loc[s["model"] == "scratch-world", "method"])
    assert s["energy_target"].between(0, 1).all()
    grids = offline_book.results(stem, "patch_grids")
    assert {"8x8", "7x7"} <= set(grids["grid"])
    for fig in ("overlays_world", "overlays_coco", "pointing_game", "entropy_all_rows"):
        assert offline_book.figure(stem, fig).stat().st_size > 1000, fig


@pytest.mark.slow
def test_chapter_full_profile_with_tiny_checkpoints(tmp_path, tiny_hub_models):
    import pandas as pd

    from vlnb.paths import shared_data_dir
    from vlnb.runs import run_notebook

    models = tiny_hub_models
    names = list(models)  # CLIP, BLIP, BLIP-2, ViLT display names
    out = tmp_path / "run"
    run_notebook(NOTEBOOK, {"models": models, "n_images": 3, "n_overlays": 1, "n_entropy": 2, "n_bootstrap": 20,
                            "coco_root": str(shared_data_dir() / "coco-mini"), "coco_split": "val2017", "batch_size": 4, "device": "cpu",
                            "progress": False},
                 profile="full", out_dir=out, progress=False)
    s = pd.read_csv(out / "results" / "pointing_game.csv")
    assert set(s["model"]) == set(names) and set(s["dataset"]) == {"world", "coco"}
    assert "qformer_attention" in set(s.loc[s["model"] == names[2], "method"])
    grids = pd.read_csv(out / "results" / "patch_grids.csv").drop_duplicates("model").set_index("model")
    assert grids.loc[names[0], "grid"] == "7x7" and grids.loc[names[3], "grid"] == "4x4"
