"""Time :func:`vlnb.eval.recall_at_k` on a COCO-5k-sized problem: 5,000 images x 25,000 captions, float32, CPU.

Usage: ``python benchmarks/retrieval_speed.py [--images 5000] [--captions-per-image 5] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import time

import torch

from vlnb.eval import recall_at_k


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--captions-per-image", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    n, c = args.images, args.captions_per_image
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(n, n * c, generator=g).to(args.device)
    t2i = torch.arange(n * c) // c
    recall_at_k(sim[:100, : 100 * c], t2i[: 100 * c])  # warm-up
    times = []
    for _ in range(args.repeats):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = recall_at_k(sim, t2i)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(f"recall_at_k on {n} x {n * c} float32 ({args.device}, {torch.get_num_threads()} threads): "
          f"best {min(times):.3f} s, median {sorted(times)[len(times) // 2]:.3f} s over {args.repeats} runs")
    print({k: round(v, 3) for k, v in res.items()})


if __name__ == "__main__":
    main()
