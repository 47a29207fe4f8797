"""How fast the offline world renders on one CPU core: images/s as arrays, with PNG encoding, and as a manifest.

python benchmarks/world_speed.py [--n 3000] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="images per measurement")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as documented

    from vlnb.data.images import encode_png
    from vlnb.data.world import WorldConfig, build_world_manifest, generate

    cfg = WorldConfig(image_size=args.size)
    generate(cfg, "train", 50)  # warm the template and texture caches

    t = time.perf_counter()
    scenes = generate(cfg, "train", args.n)
    t_render = time.perf_counter() - t
    t = time.perf_counter()
    n_bytes = sum(len(encode_png(sc.image)) for sc in scenes)
    t_png = time.perf_counter() - t
    t = time.perf_counter()
    build_world_manifest(n_train=args.n, n_test=0, image_size=args.size)
    t_manifest = time.perf_counter() - t

    print(f"offline world, {args.size}x{args.size}, {args.n} images, 1 CPU core")
    print(f"  arrays + masks + captions : {args.n / t_render:8.0f} images/s")
    print(
        f"  ... + PNG encoding        : {args.n / (t_render + t_png):8.0f} images/s "
        f"(PNG alone {args.n / t_png:.0f}/s, {n_bytes / args.n:.0f} bytes/image)"
    )
    print(f"  build_world_manifest      : {args.n / t_manifest:8.0f} images/s")


if __name__ == "__main__":
    main()
