"""The CLIP trainer: loss, accumulation, data parallelism, schedule, checkpoints and exact resume."""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlnb.data.images import encode_png
from vlnb.data.manifest import make_manifest
from vlnb.models.scratch import ScratchDualEncoder, WordTokenizer
from vlnb.train import (
    PairDataset,
    TrainConfig,
    clip_loss,
    epoch_batches,
    load_checkpoint,
    lr_curve,
    param_groups,
    save_checkpoint,
    train_contrastive,
)
from vlnb.train.distributed import DistInfo, average_gradients
from vlnb.train.loss import MAX_LOGIT_SCALE
from vlnb.train.trainer import CHECKPOINT_NAME, _Trainer, adamw, load_optimizer_state

COLORS = ("red", "blue", "green", "pink", "gray", "black")
SMALL = {
    "image_size": 16,
    "patch_size": 8,
    "width": 32,
    "layers": 1,
    "heads": 2,
    "text_width": 32,
    "text_layers": 1,
    "text_heads": 2,
    "embed_dim": 16,
    "context_length": 16,
}


def captions(n: int) -> list[str]:
    return [f"the {COLORS[i % 6]} thing number {i}" for i in range(n)]


def scratch(seed: int = 0) -> ScratchDualEncoder:
    return ScratchDualEncoder.create("tiny", captions=captions(64), seed=seed, **SMALL)


def tensor_pairs(n: int, seed: int = 0) -> list[tuple[torch.Tensor, str]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, 16, 16, generator=g), c) for c in captions(n)]


def png_manifest(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        {
            "image_id": i,
            "image": encode_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)),
            "captions": [c, c.replace("thing", "object")],
            "split": "train",
            "labels": [],
        }
        for i, c in enumerate(captions(n))
    ]
    return make_manifest(rows, name="synthetic")


class FakeDual(nn.Module):
    """A minimal dual encoder with dropout (to check that gradient caching replays random states)."""

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        torch.manual_seed(0)
        self.tokenizer = WordTokenizer.fit(captions(64))
        self.image = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(3 * 16 * 16, 16))
        self.emb = nn.Embedding(len(self.tokenizer), 16)
        self.text = nn.Sequential(nn.Dropout(dropout), nn.Linear(16, 16))
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def tokenize(self, texts):
        return self.tokenizer(texts)

    def encode_image(self, x):
        return F.normalize(self.image(x), dim=-1)

    def encode_text(self, input_ids, attention_mask):
        m = attention_mask[..., None].float()
        return F.normalize(self.text((self.emb(input_ids) * m).sum(1) / m.sum(1)), dim=-1)


def step_grads(model, pixels, tokens, batch_size, accum, **cfg):
    tr = _Trainer(
        model, TrainConfig(batch_size=batch_size, accum_steps=accum, **cfg), DistInfo(), torch.device("cpu")
    )
    model.zero_grad(set_to_none=True)
    loss = tr.backward_step(pixels, tokens)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(a: dict, b: dict, atol=2e-5, rtol=1e-4):  # grads here reach ~10
    assert a.keys() == b.keys()
    for k, value in a.items():
        torch.testing.assert_close(value, b[k], atol=atol, rtol=rtol, msg=k)


# ---------------------------------------------------------------------------------------------- loss
def test_clip_loss_matches_hand_computation():
    # 2x2, orthogonal pairs, scale exp(log 2) = 2: logits [[2, 0], [0, 2]] -> each CE = log(1 + e^-2)
    eye = torch.eye(2)
    assert clip_loss(eye, eye, math.log(2.0)).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    # 3x3, not symmetric: rows and columns differ, computed by hand with plain python
    u = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
    v = [[0.8, 0.6], [1.0, 0.0], [-0.6, 0.8]]
    s = 5.0
    logits = [[s * sum(a * b for a, b in zip(ui, vj)) for vj in v] for ui in u]

    def ce(row, target):
        return -row[target] + math.log(sum(math.exp(x) for x in row))

    rows = sum(ce(logits[i], i) for i in range(3)) / 3
    cols = sum(ce([logits[j][i] for j in range(3)], i) for i in range(3)) / 3
    got = clip_loss(torch.tensor(u), torch.tensor(v), torch.tensor(math.log(s)))
    assert got.item() == pytest.approx((rows + cols) / 2, rel=1e-6)
    assert rows != pytest.approx(cols)  # the case does exercise both directions


def test_clip_loss_matches_open_clip_reference():
    # open_clip's ClipLoss output and gradients on fixed inputs, checked in by benchmarks/open_clip_reference.py
    # (open_clip needs torchvision, which cannot be a test dependency here)
    ref = json.loads((Path(__file__).parent / "reference" / "open_clip_loss.json").read_text())
    assert ref["function"].startswith("open_clip.ClipLoss") and len(ref["cases"]) == 4
    for case in ref["cases"]:
        img = torch.tensor(case["image"], requires_grad=True)
        txt = torch.tensor(case["text"], requires_grad=True)
        ls = torch.tensor(case["log_scale"], requires_grad=True)
        loss = clip_loss(img, txt, ls)
        loss.backward()
        assert loss.item() == pytest.approx(case["loss"], rel=1e-6, abs=0), case["batch"]
        torch.testing.assert_close(img.grad, torch.tensor(case["grad_image"]), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(txt.grad, torch.tensor(case["grad_text"]), atol=1e-6, rtol=1e-5)
        if torch.tensor(case["log_scale"]).exp() < MAX_LOGIT_SCALE:
            assert ls.grad.item() == pytest.approx(case["grad_log_scale"], rel=1e-5)
        else:  # at the cap vlnb clamps the scale in the loss (no gradient past 100); open_clip_train clamps
            # the parameter after each step instead, so its gradient there is not zero: the one difference
            assert ls.grad.item() == 0.0 and case["grad_log_scale"] != 0.0


def test_logit_scale_is_clamped_at_100():
    x = F.normalize(torch.randn(4, 8), dim=-1)
    y = F.normalize(torch.randn(4, 8), dim=-1)
    big = torch.tensor(math.log(1000.0), requires_grad=True)
    torch.testing.assert_close(clip_loss(x, y, big), clip_loss(x, y, math.log(100.0)))
    clip_loss(x, y, big).backward()
    assert big.grad.item() == 0.0
    with pytest.raises(ValueError, match="as many texts as images"):
        clip_loss(x, y[:3], 0.0)


# ---------------------------------------------------------------------------------------------- optimizer
def test_no_weight_decay_on_norms_biases_embeddings_and_logit_scale():
    m = scratch()
    groups = {g["name"]: g for g in param_groups(m, 0.1)}
    names = {id(p): n for n, p in m.named_parameters()}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert {
        "log_logit_scale",
        "visual.cls_token",
        "visual.pos_emb",
        "text.pos_emb",
        "text.token_embedding.weight",
        "visual.ln_post.weight",
        "visual.ln_post.bias",
    } <= no_decay
    assert all(
        n.endswith(".bias") or "ln" in n
        for n in no_decay
        - {
            "log_logit_scale",
            "visual.cls_token",
            "visual.pos_emb",
            "text.pos_emb",
            "text.token_embedding.weight",
        }
    )
    assert decay and all(
        n.endswith("weight") and m.get_parameter(n).ndim >= 2 and "ln" not in n for n in decay
    )
    assert "visual.blocks.0.attn.q.weight" in decay and "visual.patch_embed.weight" in decay
    assert len(decay) + len(no_decay) == len(list(m.parameters()))
    # frozen tower: its parameters are not optimised at all
    m.visual.requires_grad_(False)
    kept = {id(p) for g in param_groups(m, 0.1) for p in g["params"]}
    assert not kept & {id(p) for p in m.visual.parameters()} and kept == {
        id(p) for p in m.parameters() if p.requires_grad
    }


def test_adamw_is_the_fused_kernel_and_steps_like_the_default_one():
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1)
    a, b = scratch(), scratch()
    fused = adamw(a, cfg)
    plain = torch.optim.AdamW(param_groups(b, 0.1), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    assert all(g["fused"] for g in fused.param_groups) and not any(g["fused"] for g in plain.param_groups)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(4, 20, (4, 6), generator=torch.Generator().manual_seed(1))
    for m, opt in ((a, fused), (b, plain)):  # one step: equal weights, so equal gradients
        img, txt = m(x, ids)
        (img @ txt.T).pow(2).mean().backward()
        opt.step()
    # the same update rule (decoupled weight decay, bias correction): equal up to float rounding
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=n)
    # a state saved by the default kernel (an older checkpoint) loads into the fused optimizer, which stays fused
    again = adamw(scratch(), cfg)
    load_optimizer_state(again, plain.state_dict())
    assert all(g["fused"] for g in again.param_groups)
    assert again.state_dict()["state"][0]["exp_avg"].equal(plain.state_dict()["state"][0]["exp_avg"])


def test_lr_schedule_warmup_then_cosine():
    lrs = lr_curve(1.0, warmup_steps=5, total_steps=26)
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:])) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[15] == pytest.approx(0.5)  # halfway through the cosine (steps 5..25)
    assert lr_curve(1.0, 0, 11, min_ratio=0.1)[-1] == pytest.approx(0.1)


def test_lr_schedule_warmup_that_does_not_fit_is_an_error():
    """warmup_steps >= total_steps would leave the model mistrained (never at its peak rate): refuse it."""
    with pytest.raises(ValueError, match="warmup_steps=50 >= total_steps=45"):
        lr_curve(1.0, warmup_steps=50, total_steps=45)
    with pytest.raises(ValueError, match="does not fit"):
        lr_curve(1.0, warmup_steps=10, total_steps=10)
    assert len(lr_curve(1.0, warmup_steps=9, total_steps=10)) == 10  # the largest warmup that fits


# ---------------------------------------------------------------------------------------------- accumulation
def test_gradient_caching_equals_the_full_batch():
    m = scratch()
    data = tensor_pairs(8)
    pixels = torch.stack([x for x, _ in data])
    tokens = m.tokenize([c for _, c in data])
    loss_full, g_full = step_grads(m, pixels, tokens, batch_size=8, accum=1)
    loss_acc, g_acc = step_grads(m, pixels, tokens, batch_size=2, accum=4)
    assert loss_acc == pytest.approx(loss_full, rel=1e-6)
    assert_grads_close(g_full, g_acc)
    # naive accumulation (4 separate losses of 2 pairs) is a different objective: the check can fail
    m.zero_grad()
    for a in range(0, 8, 2):
        chunk = {k: v[a : a + 2] for k, v in tokens.items()}
        (
            clip_loss(m.encode_image(pixels[a : a + 2]), m.encode_text(**chunk), m.log_logit_scale) / 4
        ).backward()
    assert not torch.allclose(m.visual.proj.weight.grad, g_full["visual.proj.weight"], atol=1e-4)


@pytest.mark.parametrize("freeze_image", [False, True])
def test_gradient_caching_replays_dropout_masks(freeze_image):
    m = FakeDual(dropout=0.5).train()
    m.image.requires_grad_(not freeze_image)
    data = tensor_pairs(8)
    pixels = torch.stack([x for x, _ in data])
    tokens = m.tokenize([c for _, c in data])
    # reference: every micro-batch embedded with gradient, in the same order, one loss, one backward
    torch.manual_seed(1)
    imgs, txts = [], []
    for a in range(0, 8, 2):
        imgs.append(m.encode_image(pixels[a : a + 2]))
        txts.append(m.encode_text(**{k: v[a : a + 2] for k, v in tokens.items()}))
    m.zero_grad()
    ref_loss = clip_loss(torch.cat(imgs), torch.cat(txts), m.log_logit_scale)
    ref_loss.backward()
    ref = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    ref_next = torch.rand(1)
    torch.manual_seed(1)
    loss, got = step_grads(m, pixels, tokens, batch_size=2, accum=4)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-6)
    assert_grads_close(ref, got)
    assert torch.equal(torch.rand(1), ref_next)  # the global random stream continues as without caching
    assert ("image.2.weight" in got) is not freeze_image


def test_frozen_image_tower_is_not_trained(tmp_path):
    m = scratch()
    m.visual.requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=4, accum_steps=2, warmup_steps=1)
    with pytest.warns(UserWarning, match="negative"):
        train_contrastive(m, tensor_pairs(16), config=cfg, progress=False)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))
    assert not torch.equal(before["text.proj.weight"], after["text.proj.weight"])


# ---------------------------------------------------------------------------------------------- data
def test_pair_dataset_caption_sampling_is_deterministic_per_epoch():
    man = png_manifest(12)
    pre = scratch().preprocess
    a, b = PairDataset(man, pre, "random", seed=3), PairDataset(man, pre, "random", seed=3)
    picks = []
    for epoch in range(4):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        picks.append([a.caption(i) for i in range(12)])
        assert picks[-1] == [b.caption(i) for i in range(12)]
    assert len({tuple(p) for p in picks}) > 1  # a new choice each epoch
    assert all(p[i] in man["captions"][i] for p in picks for i in range(12))
    first = PairDataset(man, pre, "first")
    first.set_epoch(5)
    x, c = first[3]
    assert x.shape == (3, 16, 16) and c == man["captions"][3][0]
    with pytest.raises(ValueError, match="no image with a caption"):
        PairDataset(man.assign(captions=[[] for _ in range(12)]), pre)


def test_epoch_batches_split_global_batches_across_ranks():
    single = epoch_batches(21, 4, seed=0, epoch=2)
    ranks = [epoch_batches(21, 2, seed=0, epoch=2, rank=r, world_size=2) for r in range(2)]
    assert len(single) == 5 and all(len(b) == 4 for b in single)  # 21 // 4, last partial batch dropped
    assert [r0 + r1 for r0, r1 in zip(*ranks)] == single
    assert epoch_batches(21, 4, 0, 3) != single


# ---------------------------------------------------------------------------------------------- checkpoints
def test_resume_after_a_crash_is_exact(tmp_path):
    man, val = png_manifest(24), png_manifest(8, seed=1)
    cfg = TrainConfig(epochs=3, batch_size=4, accum_steps=2, warmup_steps=2, lr=2e-3, seed=7)
    straight = scratch()
    with pytest.warns(UserWarning, match="negative"):
        h1 = train_contrastive(straight, man, val, cfg, out_dir=tmp_path / "a", progress=False)

    def crash(history):
        raise RuntimeError("simulated crash")

    crashed = scratch()
    with pytest.raises(RuntimeError, match="simulated crash"), pytest.warns(UserWarning):
        train_contrastive(crashed, man, val, cfg, out_dir=tmp_path / "b", progress=False, on_epoch_end=crash)
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["epoch"] == 1
    resumed = scratch(seed=123)  # whatever the fresh weights, the checkpoint restores them
    with pytest.warns(UserWarning):
        h2 = train_contrastive(resumed, man, val, cfg, out_dir=tmp_path / "b", progress=False)
    s1, s2 = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert h1.steps_df[["step", "loss", "lr", "logit_scale"]].equals(
        h2.steps_df[["step", "loss", "lr", "logit_scale"]]
    )
    cols = ["epoch", "train_loss", "i2t_R@1", "t2i_R@1", "t2i_R@10"]
    assert h1.epochs_df[cols].equals(h2.epochs_df[cols]) and len(h2.epochs) == 3
    # a changed hyper-parameter refuses to resume, naming it
    with pytest.raises(ValueError, match="lr"), pytest.warns(UserWarning):
        train_contrastive(
            scratch(), man, None, cfg.model_copy(update={"lr": 1e-3}), out_dir=tmp_path / "b", progress=False
        )


def test_resume_restores_random_states(tmp_path):
    """With dropout the trajectory depends on the global random stream, which the checkpoint must restore."""
    cfg = TrainConfig(epochs=3, batch_size=8, warmup_steps=1, lr=1e-2, seed=3)
    data = tensor_pairs(24)
    straight = FakeDual(dropout=0.3).train()
    with pytest.warns(UserWarning):
        train_contrastive(straight, data, config=cfg, out_dir=tmp_path / "a", progress=False)

    def crash(history):
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError), pytest.warns(UserWarning):
        train_contrastive(
            FakeDual(dropout=0.3),
            data,
            config=cfg,
            out_dir=tmp_path / "b",
            progress=False,
            on_epoch_end=crash,
        )
    resumed = FakeDual(dropout=0.3)
    torch.rand(100)  # the new process's random stream is elsewhere
    with pytest.warns(UserWarning):
        train_contrastive(resumed, data, config=cfg, out_dir=tmp_path / "b", progress=False)
    s1, s2 = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_checkpoint_loads_weights_only_and_writes_atomically(tmp_path):
    m = scratch()
    cfg = TrainConfig(epochs=1, batch_size=8, warmup_steps=1)
    with pytest.warns(UserWarning):
        train_contrastive(m, tensor_pairs(16), config=cfg, out_dir=tmp_path, progress=False)
    path = tmp_path / CHECKPOINT_NAME
    ck = torch.load(path, weights_only=True)  # no arbitrary unpickling needed
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "history", "config"} <= set(
        ck
    )
    assert ck["epoch"] == 1 and ck["step"] == 2 and isinstance(ck["rng"]["numpy"]["keys"], torch.Tensor)
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]  # no temporary file left behind
    with pytest.raises(TypeError, match="pickle"):
        save_checkpoint({"bad": (i for i in range(3))}, path)  # fails while writing...
    assert load_checkpoint(path)["step"] == 2  # ...and the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="weights_only"):
        load_checkpoint(path)


def test_trainer_clamps_logit_scale_and_logs_the_schedule(tmp_path):
    m = scratch()
    with torch.no_grad():
        m.log_logit_scale.fill_(math.log(500.0))
    cfg = TrainConfig(epochs=2, batch_size=8, warmup_steps=2, lr=1e-3)
    with pytest.warns(UserWarning):
        h = train_contrastive(m, tensor_pairs(24), config=cfg, progress=False)
    assert m.log_logit_scale.item() <= math.log(100.0) + 1e-6
    assert h.steps_df["logit_scale"].max() <= 100.0
    assert h.steps_df["lr"].tolist() == pytest.approx(lr_curve(1e-3, 2, 6))
    tidy = h.tidy()
    assert set(tidy["metric"]) >= {"loss", "logit_scale", "lr", "train_loss"} and tidy["value"].notna().all()
    import matplotlib

    matplotlib.use("Agg")
    fig = h.plot()
    assert (
        len(fig.axes) == 4 and len(fig.axes[0].lines) == 2
    )  # loss panel: per step + epoch mean (+ lr twin axis)
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        train_contrastive(m, tensor_pairs(4), config=cfg, progress=False)


# ---------------------------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import warnings

    import torch.distributed as dist

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # 1) one step: each rank holds 4 of the 8 pairs, in 2 micro-batches of 2
        m = scratch()
        data = tensor_pairs(8)[rank * 4 : (rank + 1) * 4]
        pixels = torch.stack([x for x, _ in data])
        tokens = m.tokenize([c for _, c in data])
        loss, _ = step_grads(m, pixels, tokens, batch_size=2, accum=2)
        average_gradients([p for p in m.parameters() if p.requires_grad])
        grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        # 2) a whole run: 2 ranks x batch 4 against one process x batch 8
        m2 = scratch()
        h = train_contrastive(
            m2,
            tensor_pairs(24),
            config=TrainConfig(epochs=2, batch_size=4, warmup_steps=2),
            out_dir=os.path.join(out, "ckpt"),
            progress=False,
        )
        if rank == 0:
            torch.save(
                {
                    "loss": loss,
                    "grads": grads,
                    "state": m2.state_dict(),
                    "losses": h.steps_df["loss"].tolist(),
                },
                os.path.join(out, "rank0.pt"),
            )
    finally:
        dist.destroy_process_group()


def test_two_process_data_parallel_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    # the single-process reference first: its first optimizer imports torch._dynamo (seconds), which forked
    # workers then inherit instead of each re-importing torch, this module and dynamo (spawn: ~15 s of the test)
    m = scratch()
    data = tensor_pairs(8)
    loss, grads = step_grads(m, torch.stack([x for x, _ in data]), m.tokenize([c for _, c in data]), 8, 1)
    m2 = scratch()
    with pytest.warns(UserWarning):
        h = train_contrastive(
            m2, tensor_pairs(24), config=TrainConfig(epochs=2, batch_size=8, warmup_steps=2), progress=False
        )
    # two real processes (gloo); fork where it is safe (Linux), spawn elsewhere; a hung worker fails the test
    method = "fork" if sys.platform == "linux" else "spawn"
    ctx = mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False,
                             start_method=method)
    deadline = time.monotonic() + 300
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("data-parallel workers did not finish in 300 s")
    got = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert got["loss"] == pytest.approx(loss, rel=1e-6)
    assert_grads_close(grads, got["grads"])
    assert got["losses"] == pytest.approx(h.steps_df["loss"].tolist(), rel=1e-5)
    for k, v in m2.state_dict().items():
        torch.testing.assert_close(got["state"][k], v, atol=1e-5, rtol=1e-4, msg=k)
    assert load_checkpoint(tmp_path / "ckpt" / CHECKPOINT_NAME)["world_size"] == 2


def test_live_plot_callback_can_hand_its_place_to_the_final_figure(monkeypatch):
    """The chapter calls ``live.replace_with(final_fig)`` after training: a no-op in batch runs (nothing was
    drawn), an in-place update otherwise — never a second curves figure below the live one."""
    import matplotlib.pyplot as plt

    from vlnb.train.plots import live_plot

    monkeypatch.setenv("VLNB_RUN_DIR", "/tmp")
    monkeypatch.delenv("VLNB_LIVE_PLOT", raising=False)
    cb = live_plot()
    fig = plt.figure()
    assert cb(None) is None and cb.replace_with(fig) is None
    assert plt.fignum_exists(fig.number)  # not drawn by the callback: the notebook shows it once, as usual
    plt.close(fig)
    assert callable(live_plot(force=True).replace_with)


def test_capped_warmup_only_shortens_a_default_that_does_not_fit():
    from vlnb.train.schedule import WarmupCosine, capped_warmup

    assert capped_warmup(10, 600, 64, 6) == 10          # 9 steps x 6 epochs = 54: the recipe's warmup fits
    assert capped_warmup(10, 128, 64, 1) == 1           # 2 steps: half the run
    WarmupCosine(capped_warmup(10, 128, 64, 1), 2)      # fits, no error
    with pytest.raises(ValueError, match="warmup"):
        WarmupCosine(10, 2)                             # an explicit warmup that does not fit stays an error
