"""The ``vlnb`` command line: ``run``, ``book``, ``prepare``, ``sweep``, ``collect``.

    vlnb run notebooks/01_data_prep.ipynb -p world_n_train 500 --profile offline --out runs/dp
    vlnb book --profile offline
    vlnb sweep notebooks/05_robustness.ipynb --grid sweeps/robustness.yaml --out runs/rob-sweep
    vlnb collect runs/rob-sweep
    vlnb prepare coco --root ../shared/data/coco-mini --split val2017 --out coco_val.parquet
    vlnb prepare coco --download --root data/coco --split karpathy-test --out data/coco/test5k.parquet
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .config import ParameterError, coerce_cli_value
from .data.builder import DATASETS
from .data.images import BadImageError
from .data.manifest import ManifestError
from .errors import ArtifactError, DataError
from .paths import cache_dir, temp_name
from .runs import RunError


def _cmd_run(args) -> int:
    # lazy: a subcommand's modules load when it runs (looked up then: tests swap them)
    from .runs import run_notebook

    params = {name: coerce_cli_value(value, name) for name, value in (args.param or [])}
    executed = run_notebook(args.notebook, params, profile=args.profile, out_dir=args.out, progress=not args.quiet,
                            force=args.force)
    print(f"executed notebook: {executed}")
    print(f"run folder: {executed.parent}")
    return 0


def _cmd_book(args) -> int:
    # lazy: a subcommand's modules load when it runs (looked up then: tests swap them)
    from .runs import build_book

    index = build_book(profile=args.profile, build_dir=args.build_dir, progress=not args.quiet, jobs=args.jobs)
    print(f"book: {index}")
    return 0


def check_output_file(out: Path, force: bool = False) -> None:
    """Refuse an existing ``out`` (unless ``force``) or one that cannot be written, before any work is done."""
    if out.is_dir():
        raise IsADirectoryError(f"--out {out}: is a folder; give a file path such as {out / 'manifest.parquet'}")
    if out.exists() and not force:
        raise FileExistsError(f"--out {out}: file exists; pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"--out {out}: cannot create its folder {parent} ({e.strerror or e})") from None
    probe = temp_name(out)
    try:
        probe.write_bytes(b"")
    except OSError as e:
        raise PermissionError(f"--out {out}: folder {parent} is not writable ({e.strerror or e})") from None
    finally:
        probe.unlink(missing_ok=True)


def _cmd_prepare(args) -> int:
    # lazy: a subcommand's modules load when it runs (looked up then: tests swap them)
    from .data import build_manifest, save_manifest
    from .data.manifest import report_path, save_report, summary

    kwargs = {}
    if args.name == "world":
        kwargs = {"n_train": args.n_train, "n_test": args.n_test, "seed": args.seed}
    if args.karpathy_split:
        kwargs["karpathy_split"] = args.karpathy_split
    split = args.split
    if split and "," in split:
        split = tuple(s.strip() for s in split.split(","))
    out = Path(args.out)
    check_output_file(out, force=args.force)  # before minutes of scanning images
    root = args.root
    if args.download:
        # lazy: a subcommand's modules load when it runs (looked up then: tests swap them)
        from .data.coco import coco_split_folders
        from .data.download import SPLITS, prepare_coco

        if args.name != "coco":
            print(f"error: --download fetches COCO only (got data set {args.name!r}); hub data sets are fetched "
                  "when --root names their hub id", file=sys.stderr)
            return 2
        what = args.split or "karpathy-test"
        if what not in SPLITS:
            print(f"error: --split {what!r}: with --download choose one of {', '.join(SPLITS)}", file=sys.stderr)
            return 2
        root = args.root or "data/coco"
        got = prepare_coco(root, what, mirror=args.mirror, keep_archives=args.keep_archives)
        if got["karpathy_split"] and not args.karpathy_split:
            kwargs["karpathy_split"] = got["karpathy_split"]
            kwargs["karpathy_subset"] = ("train", "restval") if what == "karpathy-train" else "test"
        split = (coco_split_folders(root, kwargs["karpathy_split"], kwargs.get("karpathy_subset", "test"))
                 if kwargs.get("karpathy_split") else tuple(got["folders"]))
    df, report = build_manifest(args.name, root=root, split=split, **kwargs)
    if len(df):
        save_manifest(df, out, report=report)
    else:
        save_report(report, report_path(out))
    print(summary(df).to_string(index=False) if len(df) else "no usable images")
    if len(report):
        print(f"\nskipped {len(report)} bad image(s) (report: {report_path(out)}):")
        print(report.to_string(index=False, max_rows=50))
    if len(df) == 0:
        print(f"error: nothing usable in data set '{args.name}' at {args.root}", file=sys.stderr)
        return 1
    print(f"\nmanifest: {out} ({len(df)} images)")
    return 0


def _cmd_sweep(args) -> int:
    # lazy: a subcommand's modules load when it runs (looked up then: tests swap them)
    from .sweep import sweep

    try:
        table = sweep(args.notebook, args.grid, out=args.out, profile=args.profile, workers=args.workers,
                      threads=args.threads, scheduler=args.scheduler, retries=args.retries, progress=not args.quiet)
    except KeyboardInterrupt:
        return 130
    return 0 if (table["status"] != "failed").all() else 1


def _cmd_collect(args) -> int:
    # lazy: a subcommand's modules load when it runs (looked up then: tests swap them)
    from .sweep import collect, write_collected

    paths = write_collected(args.dir, args.out)
    for name, path in paths.items():
        df = collect(args.dir, table=name)
        print(f"{name}: {len(df)} rows from {df['run'].nunique()} run(s) -> {path}")
    if not paths:
        print(f"error: no results/*.csv in the finished runs under {args.dir}", file=sys.stderr)
        return 1
    return 0


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlnb", description="vlnb: reproducible vision-language notebooks")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="execute one notebook with validated parameters (papermill)")
    r.add_argument("notebook")
    r.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a notebook parameter (repeatable); VALUE is a JSON-like YAML value (3, 0.5, true, "
                   "[1,2], {a: 1}); YAML tags are refused")
    r.add_argument("--profile", choices=["offline", "full"], default="offline")
    r.add_argument("--out", default=None, help="run folder (default runs/<notebook>-<time>)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--force", action="store_true", help="replace an earlier vlnb run in --out")
    r.set_defaults(func=_cmd_run)

    b = sub.add_parser("book", help="execute every notebook in order and build the HTML book")
    b.add_argument("--profile", choices=["offline", "full"], default="offline")
    b.add_argument("--build-dir", default=None, help="default: <repo>/_build")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--jobs", type=_int_at_least(1), default=None,
                   help="chapters 3-7 run side by side, the cores split between them (default: one per core, "
                        "or $VLNB_BOOK_JOBS; 1: one chapter at a time with every core)")
    b.set_defaults(func=_cmd_book)

    pr = sub.add_parser("prepare", help="build a data set's manifest and its bad-image report")
    pr.add_argument("name", choices=DATASETS)
    pr.add_argument("--root", default=None, help="data location (folder, hub id, save_to_disk folder, parquet, npz)")
    pr.add_argument("--split", default=None, help="split/folder, e.g. val2017 or train2017,val2017")
    pr.add_argument("--karpathy-split", default=None, help="Karpathy split JSON (COCO)")
    pr.add_argument("--n-train", type=_int_at_least(1), default=2000, help="offline world: train images")
    pr.add_argument("--n-test", type=_int_at_least(1), default=500, help="offline world: test images")
    pr.add_argument("--seed", type=_int_at_least(0), default=0)
    pr.add_argument("--out", required=True, help="manifest parquet path")
    pr.add_argument("--force", action="store_true", help="replace an existing --out file")
    pr.add_argument("--download", action="store_true",
                    help="COCO: first fetch exactly what --split needs into --root (default data/coco): karpathy-test "
                    "(default; val2014 + 2014 annotations + LAVIS's 5k test split), karpathy-train or val2017; "
                    "resumable, says how much it fetches before it starts")
    pr.add_argument("--mirror", default=None, help="with --download: base URL serving the same file names")
    pr.add_argument("--keep-archives", action="store_true", help="with --download: keep the zips after extracting")
    pr.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("sweep", help="run a notebook for every combination of a parameter grid (local or Dask)")
    s.add_argument("notebook")
    s.add_argument("--grid", required=True, help="grid YAML: {grid: {name: [values]}, parameters: {...}, profile}")
    s.add_argument("--out", default=None, help="sweep folder, one run folder per combination "
                   "(default runs/sweep-<notebook>-<grid>; the same command resumes it)")
    s.add_argument("--profile", choices=["offline", "full"], default=None, help="default: the grid's, else offline")
    s.add_argument("--workers", type=int, default=None, help="local worker processes (default: fill the cores)")
    s.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: cores // workers; on Dask: the worker's --nthreads)")
    s.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:8786): run there")
    s.add_argument("--retries", type=int, default=2, help="Dask: retries of a task that hit an infrastructure error")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_sweep)

    c = sub.add_parser("collect", help="join every run's results/*.csv of a sweep folder, parameters as columns")
    c.add_argument("dir")
    c.add_argument("--out", default=None, help="folder for <table>.csv (default DIR/collected)")
    c.set_defaults(func=_cmd_collect)
    return p


def expected_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a refused action: one ``error:`` line and exit code 2."""
    return (ParameterError, RunError, ManifestError, DataError, ArtifactError, BadImageError, OSError)


def _log_unexpected(argv) -> Path:
    """Write the current exception's traceback to a log file and return its path."""
    text = f"vlnb {' '.join(argv if argv is not None else sys.argv[1:])}\n\n{traceback.format_exc()}"
    try:
        folder = cache_dir() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir())
    path = folder / f"vlnb-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except expected_errors() as e:
        msg = str(e).strip() or type(e).__name__
        first, _, rest = msg.partition("\n")
        if rest:  # e.g. a failed notebook: papermill's cell error follows; keep it in a log
            print(f"error: {first}\n(details: {_log_unexpected(argv)})", file=sys.stderr)
        else:
            print(f"error: {first}", file=sys.stderr)
        return 2
    except (ValueError, KeyError) as e:
        if not _raised_by_vlnb(e):  # from a library deep down: treat as a bug
            return _internal_error(e, argv)
        # vlnb's own checks (an unknown data set, a split file with no such subset...): one line, log kept
        msg = (str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)).strip() or type(e).__name__
        print(f"error: {msg.splitlines()[0]}\n(details: {_log_unexpected(argv)})", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 -- a bug: short message, traceback in a log file
        return _internal_error(e, argv)


def _raised_by_vlnb(e: BaseException) -> bool:
    """Whether the innermost frame of ``e``'s traceback is vlnb's own code (a deliberate check)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(Path(__file__).parent)


def _internal_error(e: BaseException, argv) -> int:
    log = _log_unexpected(argv)
    print(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
          f"vlnb hit an unexpected error; the traceback is in {log} (please include it in a bug report)",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
