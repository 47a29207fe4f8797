"""EfficientNet-Lite0 (the towers' image tower) on a CPU: the tower as loaded vs its inference copy.

The offline book evaluates the towers model on the world, coco-mini and CIFAR-100 (chapters 3-5); its image
tower was the largest encoding cost of a cold build (``benchmarks/book_profile.py``). This times, on one torch
thread, interleaved and repeated (median and interquartile range of ms per image):

- **as loaded**: ``image_tower.extract_features`` on the caller's whole batch (what vlnb did before);
- **folded**: :meth:`vlnb.models.towers.TowersDualEncoder.feature_map`, i.e. the BatchNorm-folded channels-last
  copy (:func:`vlnb.models.towers.fold_lite0_batchnorm`) in chunks of ``CPU_CHUNK`` images;
- **as loaded, chunked**: the tower itself in chunks of ``CPU_CHUNK`` (the chunking alone);
- the folded copy at other chunk sizes (``--chunks``), to see where the CPU caches stop holding a chunk.

It also prints the largest difference of the pooled features between the two (float rounding only).

    python benchmarks/towers_speed.py --batch 64 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="images per call (chapter 4 encodes 64 at a time)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunks", type=int, nargs="*", default=[4, 8, 16, 32])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from vlnb.models.towers import TowersDualEncoder

    model = TowersDualEncoder().eval()
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    default = model.CPU_CHUNK

    def folded(chunk):
        def f():
            model.CPU_CHUNK = chunk
            try:
                return model.feature_map(x)
            finally:
                model.CPU_CHUNK = default
        return f

    runs = {"as loaded (whole batch)": lambda: model.image_tower.extract_features(x),
            f"as loaded, chunks of {default}": lambda: torch.cat(
                [model.image_tower.extract_features(c) for c in x.split(default)]),
            f"folded, chunks of {default} (vlnb)": folded(default)}
    runs.update({f"folded, chunks of {c}": folded(c) for c in args.chunks if c != default})
    times = {k: [] for k in runs}
    with torch.inference_mode():
        ref = runs["as loaded (whole batch)"]().mean((2, 3))
        new = runs[f"folded, chunks of {default} (vlnb)"]().mean((2, 3))
        for _ in range(args.repeats):  # interleaved: a busy machine slows every variant alike
            for name, f in runs.items():
                t = time.perf_counter()
                f()
                times[name].append((time.perf_counter() - t) / args.batch * 1000)
    print(f"EfficientNet-Lite0, batch {args.batch}, 224 px, {args.threads} thread(s), {args.repeats} interleaved "
          f"repeats; load average {os.getloadavg()[0]:.2f}")
    base = statistics.median(times["as loaded (whole batch)"])
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        med = statistics.median(ts)
        print(f"  {name:34s} {med:7.1f} ms/image  (IQR {q[0]:.1f}-{q[2]:.1f})  speed-up {base / med:.2f}x")
    print(f"  largest |difference| of the pooled features: {(new - ref).abs().max().item():.2e} "
          f"(features up to {ref.abs().max().item():.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
