"""Where the offline book's time goes: per chapter, wall seconds split into training, image decode + preprocess,
encoding, metric computation, plotting, other cell time and papermill/kernel overhead (plus the kernel's CPU
seconds per category, which a busy shared machine inflates far less than wall seconds).

The split comes from :mod:`vlnb.timing` (timers inside vlnb, dumped by each chapter's kernel into its run
folder; :func:`vlnb.runs.run_notebook` adds papermill's per-cell durations and the wall time to ``run.json``).

    python benchmarks/book_profile.py --run --build-dir /tmp/book-profile        # build the book, then report
    python benchmarks/book_profile.py --build-dir /tmp/book-profile              # report an existing build
    python benchmarks/book_profile.py --build-dir /tmp/a --compare /tmp/b        # before (a) vs after (b)
    python benchmarks/book_profile.py --run --chapters 05 --build-dir /tmp/ch5   # some chapters only

``--cold`` points ``VLNB_CACHE`` (features, decoded pixels, the reference models) at an empty folder inside the
build folder first, so nothing computed earlier is reused. The load average is printed with every report.

A shared machine's speed drifts by 10-20 % between builds of the same code. ``--run`` therefore records a fixed
probe before and after the build (``machine_probe.json``): one training step of the tiny scratch CLIP on a fixed
batch, one thread, median of 20, in a fresh process. It is a record, not a normaliser: on the 2-core machine it
read 136-137 ms around a build whose unchanged chapters ran 9-19 % slower than in another (the slow phases show
while both cores are loaded, not in a one-thread probe on an idle machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

PROBE = """
import statistics, time, torch
torch.set_num_threads(1)
torch.manual_seed(0)
from vlnb.models.scratch import ScratchDualEncoder
caps = [f"a {c} {s} left of a {s} {c}" for c in ("red", "blue", "green", "purple") for s in ("circle", "square")]
m = ScratchDualEncoder.create("tiny", captions=caps, seed=0)
x, tok = torch.rand(32, 3, 64, 64), m.tokenize((caps * 4)[:32])
def step():
    loss = m.encode_image(x).sum() + m.encode_text(**tok).sum()
    loss.backward()
for _ in range(3):
    step()
ts = []
for _ in range(20):
    t = time.perf_counter(); step(); ts.append(time.perf_counter() - t)
print(round(1000 * statistics.median(ts), 2))
"""


def machine_probe() -> float:
    """Milliseconds of the fixed probe (module docstring), in a fresh one-thread process."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def read_build(build: Path) -> tuple[dict, dict, dict]:
    """``(wall parts, cpu parts, wall seconds)`` per chapter from ``build/runs/<chapter>/run.json``."""
    wall, cpu, secs = {}, {}, {}
    for rj in sorted((build / "runs").glob("*/run.json")):
        rec = json.loads(rj.read_text())
        stem = rj.parent.name
        secs[stem] = rec.get("seconds")
        if rec.get("timing"):
            wall[stem] = rec["timing"]
        if rec.get("timing_cpu"):
            cpu[stem] = rec["timing_cpu"]
    return wall, cpu, secs


def report(build: Path) -> tuple:
    from vlnb.timing import breakdown_table

    wall, cpu, secs = read_build(build)
    if not secs:
        raise SystemExit(f"no chapter runs under {build / 'runs'} (run with --run first)")
    extra = ""
    tj = build / "timings.json"
    if tj.is_file():
        t = json.loads(tj.read_text())
        extra = f"; jupyter-book build {t.get('jupyter-book', '?')} s"
        if "parallel chapters (wall)" in t:
            extra += f"; the middle chapters side by side: {t['parallel chapters (wall)']} s wall"
        if "book (wall)" in t:
            extra += f"; whole book {t['book (wall)']} s wall"
    if (build / "machine_probe.json").is_file():
        extra += f"; machine probe (ms, before/after) {json.loads((build / 'machine_probe.json').read_text())}"
    print(f"\n== {build}: chapters {sum(v or 0 for v in secs.values()):.0f} s wall (sum over chapters){extra}")
    w = breakdown_table(wall) if wall else None
    c = breakdown_table(cpu) if cpu else None
    if w is not None:
        print("wall seconds per chapter and category:")
        print(w.to_string())
    if c is not None:
        print("kernel CPU seconds per chapter and category (all threads of the kernel process):")
        print(c.to_string())
    return w, c


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", type=Path, required=True)
    ap.add_argument("--run", action="store_true", help="execute the book (offline) into --build-dir first")
    ap.add_argument("--chapters", nargs="*", default=None, help="chapter prefixes to run (default: all)")
    ap.add_argument("--cold", action="store_true", help="with --run: an empty VLNB_CACHE inside the build folder")
    ap.add_argument("--jobs", type=int, default=None,
                    help="chapters 3-7 side by side (default: one per core; 1: one at a time, every core each)")
    ap.add_argument("--compare", type=Path, default=None, help="a second build folder: before/after table")
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()} on {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M:%S')}")
    if args.run:
        if args.cold:
            os.environ["VLNB_CACHE"] = str(args.build_dir.resolve() / "cache")
        from vlnb.runs import build_book, list_notebooks

        nbs = list_notebooks()
        if args.chapters:
            nbs = [nb for nb in nbs if any(nb.stem.startswith(p) for p in args.chapters)]
        before = machine_probe()
        print(f"machine probe before the build: {before} ms per step")
        t = time.time()
        build_book("offline", build_dir=args.build_dir, notebooks=nbs, progress=False, jobs=args.jobs)
        print(f"book built in {time.time() - t:.0f} s (wall, including jupyter-book); load {os.getloadavg()}")
        after = machine_probe()
        print(f"machine probe after the build: {after} ms per step")
        (args.build_dir / "machine_probe.json").write_text(json.dumps({"before_ms": before, "after_ms": after}))
    w, c = report(args.build_dir)
    if args.compare is not None:
        w2, c2 = report(args.compare)
        for name, a, b in (("wall", w, w2), ("kernel CPU", c, c2)):
            if a is None or b is None:
                continue
            both = a[["total"]].rename(columns={"total": "total before"}).join(
                b[["total"]].rename(columns={"total": "total after"}), how="outer")
            both["after / before"] = (both["total after"] / both["total before"]).round(2)
            print(f"\n{name} seconds, {args.build_dir} (before) vs {args.compare} (after):")
            print(both.to_string())


if __name__ == "__main__":
    sys.exit(main())
