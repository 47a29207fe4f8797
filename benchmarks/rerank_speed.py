"""Re-ranking's ITM pair scoring with each image's cross-attention keys/values projected once (vlnb's
``IndexedContext``) against once per pair (the code before it), measured side by side.

    python benchmarks/rerank_speed.py                   # 100 world test images, k = 16, one thread
    python benchmarks/rerank_speed.py --images 20 --repeats 1

For the offline BLIP-like and Q-Former recipes (freshly initialised: the cost does not depend on the weights),
it takes the pairs that re-ranking the world test set's top-``k`` candidates gives (the model's own ITC
ranking), in batches of 256 pairs sorted by image as :func:`vlnb.eval.rerank.rerank_similarity` scores them,
and scores them both ways in the same run, alternating ``--repeats`` times and keeping the best of each. It
prints pairs per second, their ratio, and the largest difference between the two ways' scores (0.0: the same
to the bit). Ratios measured in one run hold on any machine; absolute rates depend on its load.
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from vlnb.data.images import open_rgb
    from vlnb.data.manifest import texts_and_targets
    from vlnb.data.world import build_world_manifest
    from vlnb.models.fusion import FusionConfig, create_fusion, qformer_config
    from vlnb.models.scratch import IndexedContext, ScratchDualEncoder
    from vlnb.zoo import RECIPES

    test, _ = build_world_manifest(n_train=0, n_test=a.images, seed=0)
    texts, _ = texts_and_targets(test)
    scratch = ScratchDualEncoder.create("tiny", captions=texts, seed=0)
    blip_kw = {k: v for k, v in RECIPES["blip-world"].model.items() if k != "seed"}
    qf_kw = {k: v for k, v in RECIPES["qformer-world"].model.items() if k not in ("arch", "seed")}
    models = {"blip-world": create_fusion(FusionConfig(**blip_kw), captions=texts, seed=0),
              "qformer-world": create_fusion(qformer_config(scratch.config, **qf_kw), captions=texts, seed=0,
                                             backbone=scratch.visual)}
    out = {}
    for name, m in models.items():
        m.eval()
        pixels = m.preprocess([open_rgb(src) for src in test["image"]])
        with torch.inference_mode():
            sim = m.similarity(m.encode_image(pixels), m.encode_texts(texts, 256)).float()
        k = min(a.k, *sim.shape)
        cand = torch.cat([(torch.arange(sim.shape[0])[:, None] * len(texts) + sim.topk(k, dim=1).indices).flatten(),
                          (sim.topk(k, dim=0).indices * len(texts) + torch.arange(len(texts))[None]).flatten()])
        pairs = torch.unique(cand)  # sorted: by image, then text
        img_idx, txt_idx = pairs // len(texts), pairs % len(texts)

        def score(indexed: bool, m=m, name=name, pixels=pixels, img_idx=img_idx, txt_idx=txt_idx) -> torch.Tensor:
            scores = []
            with torch.inference_mode():
                for s in range(0, len(img_idx), a.batch):
                    ii, tt = img_idx[s : s + a.batch], txt_idx[s : s + a.batch]
                    uniq, inv = torch.unique(ii, return_inverse=True)
                    tok = m.tokenize([texts[j] for j in tt.tolist()])
                    if name == "blip-world":
                        img = m.image_tokens(pixels[uniq])
                        logits = (m.itm_logits_from_tokens(IndexedContext(img, inv), **tok) if indexed
                                  else m.itm_logits_from_tokens(img[inv], **tok))
                    else:
                        feats = m.frozen_features(pixels[uniq])
                        logits = (m.itm_logits_from_features(feats, **tok, pair_index=inv) if indexed
                                  else m.itm_logits_from_features(feats[inv], **tok))
                    scores.append(logits[:, 1])
            return torch.cat(scores)

        best = {"per pair": float("inf"), "indexed": float("inf")}
        ref = {way: score(way == "indexed") for way in best}  # warm-up, untimed; also the scores compared
        for _ in range(max(1, a.repeats)):
            for way in ("per pair", "indexed"):
                t = time.perf_counter()
                score(way == "indexed")
                best[way] = min(best[way], time.perf_counter() - t)
        diff = float((ref["indexed"] - ref["per pair"]).abs().max())
        rate = {way: len(pairs) / s for way, s in best.items()}
        print(f"{name}: {len(pairs):,} pairs of {a.images} images, k={k}, batches of {a.batch}, {a.threads} thread(s)")
        for way in best:
            print(f"  keys/values {way:8s}: {rate[way]:9,.0f} pairs/s")
        print(f"  ratio indexed / per pair: {rate['indexed'] / rate['per pair']:.2f}x; largest score difference {diff}")
        out[name] = {"pairs": len(pairs), **{f"{w} pairs/s": r for w, r in rate.items()}, "max_diff": diff}
    return out


if __name__ == "__main__":
    main()
