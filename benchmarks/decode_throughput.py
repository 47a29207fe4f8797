"""Decode throughput per core: decoding on every use (before) vs the decoded-pixel cache (vlnb.data.pixels).

For each image set and preprocessing it times, on one core (one torch thread, no workers), interleaved and
repeated (median and spread are printed):

- **decode every time**: ``preprocess([open_rgb(src)])`` per image, what every evaluation, epoch, robustness
  cell and re-ranking did before the cache;
- **cache cold**: :func:`~vlnb.data.pixels.decoded_pixels` into an empty folder (decode + resize/crop once,
  write the uint8 memory map and its checksum) and the normalised pixels of every image;
- **cache warm**: the same from the files written before (a new process: checksum verified, memory-mapped),
  normalised on the fly;
- **cache warm, same process**: the entry already open (what the 2nd..Nth user in one kernel gets).

The cached and uncached pixels are compared (they must be identical). Rates are images per wall second on
one core and images per CPU second of this process (the latter moves little when a shared machine is busy). Image sets: coco-mini val2017 (real JPEGs, ~640x480) and the offline world (64 px PNGs in memory).

    python benchmarks/decode_throughput.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def image_sets(n_world: int):
    from vlnb.data import build_manifest
    from vlnb.models.transforms import ImagePreprocess

    coco, _ = build_manifest("coco", split="val2017")
    world, _ = build_manifest("world", n_train=n_world, n_test=0, image_size=64, seed=0)
    return [
        ("coco-mini val (JPEG)", coco, "EfficientNet-Lite0: 256 + crop 224", ImagePreprocess(256, 224, "bilinear")),
        ("coco-mini val (JPEG)", coco, "CLIP: 224 bicubic + crop 224", ImagePreprocess(224, 224, "bicubic")),
        (f"world ({len(world)} PNG, 64 px)", world, "scratch ViT: 64 x 64", ImagePreprocess((64, 64), None)),
    ]


def clock(times: dict, cpu: dict, key: str, fn, *args):
    """``fn(*args)``, its wall and CPU seconds appended to ``times[key]`` and ``cpu[key]``."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    times[key].append(time.perf_counter() - t)
    cpu[key].append(time.process_time() - c)
    return out


def cached_pixels(px, manifest, pre, cache_dir):
    """The decoded-pixel cache entry of ``manifest`` and the normalised pixels of its usable rows."""
    x = px.decoded_pixels(manifest, pre, cache_dir=cache_dir, progress=False)
    return x, x.normalized(x.ok_rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (median and spread printed)")
    ap.add_argument("--n-world", type=int, default=500, help="world images")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from vlnb.data import pixels as px
    from vlnb.data.images import open_rgb

    torch.set_num_threads(1)
    print(f"one core (1 torch thread, no workers); {args.repeats} interleaved repeats; load {os.getloadavg()[0]:.1f}")
    for data_name, manifest, pre_name, pre in image_sets(args.n_world):
        n = len(manifest)
        times = {k: [] for k in ("every", "cold", "warm", "memo")}
        cpu = {k: [] for k in times}
        same = True
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as d:
                ref = clock(times, cpu, "every", lambda: torch.cat([pre([open_rgb(s)])  # noqa: B023 -- called at once
                                                                    for s in manifest["image"]]))  # noqa: B023
                px.clear_memo()
                x, got = clock(times, cpu, "cold", cached_pixels, px, manifest, pre, d)
                same &= torch.equal(got, ref)
                px.clear_memo()
                x, got = clock(times, cpu, "warm", cached_pixels, px, manifest, pre, d)
                same &= torch.equal(got, ref) and x.from_cache
                x, got = clock(times, cpu, "memo", cached_pixels, px, manifest, pre, d)
                del x, got
                px.clear_memo()
        print(f"\n{data_name}, {pre_name}: {n} images; cached pixels identical to decoding: {same}")
        base = statistics.median(times["every"])
        for key, label in (("every", "decode + preprocess every time (before)"), ("cold", "pixel cache cold (1st use)"),
                           ("warm", "pixel cache warm (new process)"), ("memo", "pixel cache warm (same process)")):
            rates = [n / t for t in times[key]]
            med = n / statistics.median(times[key])
            per_cpu = n / statistics.median(cpu[key])
            print(f"  {label:42s}: {med:7.0f} img/s on 1 core (range {min(rates):.0f}-{max(rates):.0f}; "
                  f"{base / statistics.median(times[key]):5.1f}x before) | {per_cpu:7.0f} img per CPU-s "
                  f"({statistics.median(cpu['every']) / statistics.median(cpu[key]):5.1f}x before)")
        del ref


if __name__ == "__main__":
    main()
