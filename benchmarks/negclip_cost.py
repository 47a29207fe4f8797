"""What NegCLIP's hard negatives cost per training step, measured side by side with plain CLIP steps.

    python benchmarks/negclip_cost.py                 # the offline recipes (tiny scratch model, world, batch 64)
    python benchmarks/negclip_cost.py --steps 3 --repeats 1 --n-train 128

Times ``--steps`` optimizer steps of the scratch-world model with and without the batch's swap foils
(:class:`vlnb.train.negclip.WorldFoilPairs`), alternating the two ``--repeats`` times on the same data and
keeping the best of each, then prints the per-step times, their ratio and -- extrapolated from them, and
labelled so -- what the recipes' whole trainings take on this machine: scratch-world (15 epochs), and the
two fine-tunes negclip-world and scratch-world-ft. Ratios measured in one run hold on any machine;
absolute seconds depend on its load.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from vlnb.data.world import build_world_manifest
    from vlnb.models.scratch import ScratchDualEncoder
    from vlnb.train import TrainConfig, train_contrastive
    from vlnb.train.negclip import WorldFoilPairs
    from vlnb.train.trainer import PairDataset
    from vlnb.zoo import RECIPES

    df, _ = build_world_manifest(n_train=a.n_train, n_test=0, seed=0)
    caps = [c for cs in df["captions"] for c in cs]
    base = ScratchDualEncoder.create("tiny", captions=caps, seed=0)
    n = min(len(df), a.steps * a.batch_size)
    part = df.iloc[:n].copy()
    part.attrs = dict(df.attrs)
    data = {"plain": PairDataset(part, base.preprocess, cache=True),
            "foils": WorldFoilPairs(part, base.preprocess, cache=True)}
    for ds in data.values():  # decode once, outside the timed runs
        [ds[i] for i in range(len(ds))]
    cfg = TrainConfig(epochs=1, batch_size=a.batch_size, warmup_steps=0, device="cpu", eval_every=100)
    best = {k: float("inf") for k in data}
    for ds in data.values():  # warm-up (first-call costs), untimed
        train_contrastive(copy.deepcopy(base), ds, config=cfg, progress=False)
    for _ in range(max(1, a.repeats)):
        for kind, ds in data.items():
            m = copy.deepcopy(base)
            t = time.perf_counter()
            train_contrastive(m, ds, config=cfg, progress=False)
            best[kind] = min(best[kind], (time.perf_counter() - t) / (n // a.batch_size))
    ratio = best["foils"] / best["plain"]
    foil_rate = data["foils"].foil_rate()
    print(f"{n // a.batch_size} steps of batch {a.batch_size}, best of {a.repeats}, "
          f"{torch.get_num_threads()} thread(s); {foil_rate:.0%} of the captions bring a foil")
    print(f"  plain CLIP step : {best['plain'] * 1e3:8.1f} ms  (measured)")
    print(f"  NegCLIP step    : {best['foils'] * 1e3:8.1f} ms  (measured)  = {ratio:.2f} x plain")
    steps_per_epoch = 2000 // a.batch_size
    out = {"plain_step_s": best["plain"], "foil_step_s": best["foils"], "ratio": ratio}
    for name, kind in (("scratch-world", "plain"), ("negclip-world", "foils"), ("scratch-world-ft", "plain")):
        epochs = RECIPES[name].train["epochs"]
        secs = epochs * steps_per_epoch * best[kind]
        out[name] = secs
        print(f"  {name:16s}: {epochs:2d} epochs x {steps_per_epoch} steps ~ {secs:6.1f} s "
              "(extrapolated from the step time; evaluation and data preparation not included)")
    return out


if __name__ == "__main__":
    main()
