"""EfficientNet-Lite0 (the towers' image tower) on a CPU: the tower as loaded vs its inference copy.

The offline book evaluates the towers model on the world, coco-mini and CIFAR-100 (chapters 3-5); its image
tower was the largest encoding cost of a cold build (``benchmarks/book_profile.py``). This times, on one torch
thread, interleaved and repeated (median and interquartile range of ms per image):

- **as loaded**: ``image_tower.extract_features`` on the caller's whole batch (what vlnb did before);
- **folded**: :meth:`vlnb.models.towers.TowersDualEncoder.feature_map` without ONNX Runtime
  (``VLNB_CPU_BACKEND=torch``), i.e. the BatchNorm-folded channels-last copy
  (:func:`vlnb.models.towers.fold_lite0_batchnorm`) in chunks of ``CPU_CHUNK`` images;
- **onnxruntime**: what vlnb runs where ONNX Runtime is installed: that folded copy exported to ONNX and run
  by ONNX Runtime (:mod:`vlnb.models.onnx_cpu`) in chunks of ``ORT_CHUNK`` (other sizes: ``--ort-chunks``);
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
from unittest import mock


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="images per call (chapter 4 encodes 64 at a time)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunks", type=int, nargs="*", default=[4, 8, 16, 32])
    ap.add_argument("--ort-chunks", type=int, nargs="*", default=[1, 4, 8])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from vlnb.models.onnx_cpu import onnxruntime_available
    from vlnb.models.towers import TowersDualEncoder

    model = TowersDualEncoder().eval()
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    default = model.CPU_CHUNK

    ort_default = model.ORT_CHUNK

    def path(chunk, backend):
        """feature_map with ``chunk`` images per call of the PyTorch folded copy or its ONNX Runtime copy"""
        attr = "ORT_CHUNK" if backend == "onnxruntime" else "CPU_CHUNK"

        def f():
            with mock.patch.object(model, attr, chunk), \
                    mock.patch.dict(os.environ, {"VLNB_CPU_BACKEND": backend}):
                return model.feature_map(x)
        return f

    runs = {"as loaded (whole batch)": lambda: model.image_tower.extract_features(x),
            f"as loaded, chunks of {default}": lambda: torch.cat(
                [model.image_tower.extract_features(c) for c in x.split(default)]),
            f"folded, chunks of {default} (no onnxruntime)": path(default, "torch")}
    runs.update({f"folded, chunks of {c}": path(c, "torch") for c in args.chunks if c != default})
    if onnxruntime_available():
        runs[f"onnxruntime, chunks of {ort_default} (vlnb)"] = path(ort_default, "onnxruntime")
        runs.update({f"onnxruntime, chunks of {c}": path(c, "onnxruntime")
                     for c in args.ort_chunks if c != ort_default})
    else:
        print("onnxruntime is not installed: vlnb runs the folded copy (`pip install vlnb[towers]`)")
    times = {k: [] for k in runs}
    with torch.inference_mode():
        ref = runs["as loaded (whole batch)"]().mean((2, 3))
        compared = [n for n in runs if n.endswith(("(no onnxruntime)", "(vlnb)"))]  # the copies vlnb may run
        new = {name: runs[name]().mean((2, 3)) for name in compared}
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
        print(f"  {name:38s} {med:7.1f} ms/image  (IQR {q[0]:.1f}-{q[2]:.1f})  speed-up {base / med:.2f}x")
    for name, feats in new.items():
        print(f"  largest |difference| of the pooled features, {name.split(',')[0]}: "
              f"{(feats - ref).abs().max().item():.2e} (features up to {ref.abs().max().item():.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
