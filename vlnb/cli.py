"""The ``vlnb`` command line: ``run``, ``book``, ``prepare``.

    vlnb run notebooks/01_data_prep.ipynb -p world_n_train 500 --profile offline --out runs/dp
    vlnb book --profile offline
    vlnb prepare coco --root ../shared/data/coco-mini --split val2017 --out coco_val.parquet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ParameterError, coerce_cli_value


def _cmd_run(args) -> int:
    from .runs import run_notebook

    params = {name: coerce_cli_value(value) for name, value in (args.param or [])}
    executed = run_notebook(args.notebook, params, profile=args.profile, out_dir=args.out, progress=not args.quiet)
    print(f"executed notebook: {executed}")
    print(f"run folder: {executed.parent}")
    return 0


def _cmd_book(args) -> int:
    from .runs import build_book

    index = build_book(profile=args.profile, build_dir=args.build_dir, progress=not args.quiet)
    print(f"book: {index}")
    return 0


def _cmd_prepare(args) -> int:
    from .data import build_manifest, save_manifest
    from .data.manifest import report_path, summary

    kwargs = {}
    if args.name == "world":
        kwargs = {"n_train": args.n_train, "n_test": args.n_test, "seed": args.seed}
    if args.karpathy_split:
        kwargs["karpathy_split"] = args.karpathy_split
    split = args.split
    if split and "," in split:
        split = tuple(s.strip() for s in split.split(","))
    df, report = build_manifest(args.name, root=args.root, split=split, **kwargs)
    out = Path(args.out)
    if len(df):
        save_manifest(df, out, report=report)
    else:
        report.to_csv(report_path(out), index=False)
    print(summary(df).to_string(index=False) if len(df) else "no usable images")
    if len(report):
        print(f"\nskipped {len(report)} bad image(s) (report: {report_path(out)}):")
        print(report.to_string(index=False, max_rows=50))
    if len(df) == 0:
        print(f"error: nothing usable in data set '{args.name}' at {args.root}", file=sys.stderr)
        return 1
    print(f"\nmanifest: {out} ({len(df)} images)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .data.builder import DATASETS

    p = argparse.ArgumentParser(prog="vlnb", description="vlnb: reproducible vision-language notebooks")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="execute one notebook with validated parameters (papermill)")
    r.add_argument("notebook")
    r.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a notebook parameter (repeatable); VALUE is parsed as YAML (3, 0.5, true, [1,2])")
    r.add_argument("--profile", choices=["offline", "full"], default="offline")
    r.add_argument("--out", default=None, help="run folder (default runs/<notebook>-<time>)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_run)

    b = sub.add_parser("book", help="execute every notebook in order and build the HTML book")
    b.add_argument("--profile", choices=["offline", "full"], default="offline")
    b.add_argument("--build-dir", default=None, help="default: <repo>/_build")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_cmd_book)

    pr = sub.add_parser("prepare", help="build a data set's manifest and its bad-image report")
    pr.add_argument("name", choices=DATASETS)
    pr.add_argument("--root", default=None, help="data location (folder, hub id, save_to_disk folder, parquet, npz)")
    pr.add_argument("--split", default=None, help="split/folder, e.g. val2017 or train2017,val2017")
    pr.add_argument("--karpathy-split", default=None, help="Karpathy split JSON (COCO)")
    pr.add_argument("--n-train", type=int, default=2000, help="offline world: train images")
    pr.add_argument("--n-test", type=int, default=500, help="offline world: test images")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--out", required=True, help="manifest parquet path")
    pr.set_defaults(func=_cmd_prepare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
