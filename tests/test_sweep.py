"""Parameter sweeps (vlnb.sweep): the grid, validation before anything runs, resume, failures, collect,
the local process pool and a Dask LocalCluster with a worker killed mid-sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import nbformat
import pandas as pd
import pytest
from pydantic import Field

from vlnb import sweep as sw
from vlnb.config import NotebookParams, register
from vlnb.paths import REPO_ROOT

CH1 = REPO_ROOT / "notebooks" / "01_data_prep.ipynb"
# chapter 1, tiny: the world only (coco_root points elsewhere, so coco-mini and CIFAR are not read)
CH1_FIXED = {"world_n_test": 10, "n_grid": 2}


@register("98_sweep_toy")
class ToyParams(NotebookParams):
    """A test-only notebook: writes results/toy.csv (with a column named like the parameter x),
    results/other.csv and a 0-byte results/empty.csv; a negative x fails in the notebook."""

    x: int = 1
    tags: list[str] = Field(default_factory=lambda: ["a"])


TOY_CELLS = [
    ("code", "import os, pandas as pd"),
    ("params", 'profile = "offline"\nout_dir = "."\nseed = 0\nx = None\ntags = None'),
    ("code", ('x = 1 if x is None else x\nif x < 0:\n    raise ValueError("toy failure on purpose")\n'
              'os.makedirs("results", exist_ok=True)\n'
              'pd.DataFrame({"i": [0, 1], "y": [x * 10, x * 10 + 1], "x": [-x, -x]})'
              '.to_csv("results/toy.csv", index=False)\n')),
    ("code", ('pd.DataFrame({"n_tags": [len(tags or [])]}).to_csv("results/other.csv", index=False)\n'
              'open("results/empty.csv", "w").close()')),
]


@pytest.fixture(scope="module")
def toy_nb(tmp_path_factory):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, src in TOY_CELLS:
        cell = nbformat.v4.new_code_cell(src)
        if kind == "params":
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    path = tmp_path_factory.mktemp("toy") / "98_sweep_toy.ipynb"
    nbformat.write(nb, path)
    return path


def write_grid(path, text):
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------------
# The grid file
# ----------------------------------------------------------------------------------------------------
def test_grid_combinations_and_names(tmp_path):
    g = sw.load_grid(write_grid(tmp_path / "g.yaml", "parameters: {world_n_test: 10}\n"
                                "grid:\n  world_n_train: [40, 50]\n  seed: [0, 1, 2]\n"))
    combos = sw.combinations(g)
    assert len(combos) == 6 and combos[0] == {"world_n_test": 10, "world_n_train": 40, "seed": 0}
    assert combos[1]["seed"] == 1 and combos[3]["world_n_train"] == 50  # the last axis varies fastest
    names = [sw.run_name("01_data_prep.ipynb", "offline", c, ["world_n_train", "seed"]) for c in combos]
    assert len(set(names)) == 6 and names[0].startswith("world_n_train=40_seed=0-")
    assert names == [sw.run_name("01_data_prep", "offline", dict(c), ["world_n_train", "seed"]) for c in combos]
    lst = sw.run_name("05_robustness", "offline", {"corruptions": ["shot_noise", "jpeg/x y"]}, ["corruptions"])
    assert "/" not in lst and " " not in lst and lst.startswith("corruptions=shot_noise,jpeg_x")
    assert sw.run_name("x", "full", combos[0], []) != sw.run_name("x", "offline", combos[0], [])


@pytest.mark.parametrize(("text", "needle"), [
    ("grid: {seed: 3}\n", "grid entry 'seed' must be a non-empty list"),
    ("grid: {seed: []}\n", "non-empty list"),
    ("grid: {}\n", "'grid' must be a non-empty mapping"),
    ("seed: [1, 2]\n", "unknown top-level entry ['seed']"),
    ("grid: {coco_root: [2024-01-01]}\n", "grid.coco_root[0]: datetime.date(2024, 1, 1) is a date"),
    ("grid: {coco_root: [!!binary aGVsbG8=]}\n", "is a bytes, not a JSON-compatible value"),
    ("grid: {seed: [.nan]}\n", "grid.seed[0]: nan is not a finite number"),
    ("grid: {models: [{1: a}]}\n", "grid.models[0]: key 1 is a int, not a string"),
    ("grid: {seed: [!!python/object/apply:os.system [echo hi]]}\n", "not valid YAML"),
    ("grid: {seed: [1]}\nparameters: {seed: 2}\n", "both in 'grid' and 'parameters'"),
    ("grid: {out_dir: [a, b]}\n", "['out_dir'] cannot be swept or fixed"),
    ("grid: {profile: [full]}\n", "['profile'] cannot be swept"),
    ("profile: gpu\ngrid: {seed: [1]}\n", "'profile' must be offline or full"),
    ("- 1\n- 2\n", "top level must be a mapping"),
])
def test_bad_grid_files_fail_naming_the_entry(tmp_path, text, needle):
    path = write_grid(tmp_path / "bad.yaml", text)
    with pytest.raises(sw.SweepError) as e:
        sw.load_grid(path)
    assert needle in str(e.value) and str(path) in str(e.value)


def test_every_combination_is_validated_before_anything_runs(tmp_path, toy_nb):
    grid = write_grid(tmp_path / "g.yaml", "grid:\n  x: [1, 2]\n  seed: [0, -1]\n  tags: [[a], b]\n")
    with pytest.raises(sw.SweepError) as e:
        sw.sweep(toy_nb, grid, out=tmp_path / "out", workers=1)
    msg = str(e.value)
    assert "6 of 8 grid combination(s) are invalid" in msg and "nothing was run" in msg
    assert "parameter 'seed'" in msg and "parameter 'tags'" in msg and "(got 'b')" in msg
    assert not (tmp_path / "out").exists()
    with pytest.raises(sw.SweepError, match="combinations 1 and 2 of 2 are the same run"):
        sw.sweep(toy_nb, {"grid": {"x": [3, 3]}}, out=tmp_path / "out", workers=1)
    with pytest.raises(sw.SweepError, match="unknown parameter"):
        sw.sweep(toy_nb, {"grid": {"y": [1]}}, out=tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("profile", ["offline", "full"])
def test_example_grid_of_chapter5_is_valid(profile):
    grid = sw.load_grid(REPO_ROOT / "sweeps" / "robustness.yaml")
    combos = sw.validate("05_robustness", grid, profile)
    assert len(combos) == 4 and all(len(validated["corruptions"]) == 3 for _, validated in combos)


def test_cli_bad_grid_exits_2_naming_the_parameter(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "grid:\n  world_n_trian: [40]\n")
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "vlnb", "sweep", str(CH1), "--grid", str(grid), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2 and "nothing was run" in proc.stderr
    assert "combination 1/1 (world_n_trian=40): invalid parameters for notebook '01_data_prep': unknown " \
           "parameter(s) 'world_n_trian'" in proc.stderr.splitlines()[0]
    assert not (tmp_path / "out").exists()


def test_pool_size_keeps_workers_times_threads_within_cores():
    assert sw.pool_size(10, cores=2) == (2, 1)
    assert sw.pool_size(1, cores=8) == (1, 8)  # one run: all the cores to it
    assert sw.pool_size(10, threads=2, cores=8) == (4, 2)
    assert sw.pool_size(10, workers=3, cores=8) == (3, 2)
    with pytest.raises(sw.SweepError, match="4 worker"):
        sw.pool_size(10, workers=4, cores=2)
    with pytest.raises(sw.SweepError, match="> 8 core"):
        sw.pool_size(10, threads=16, cores=8)
    with pytest.raises(sw.SweepError, match=">= 1"):
        sw.pool_size(10, workers=0, cores=8)


# ----------------------------------------------------------------------------------------------------
# Runs: resume, failures, collect (a tiny test-only notebook, run in this process)
# ----------------------------------------------------------------------------------------------------
def test_sweep_records_failures_resumes_and_collects(tmp_path, toy_nb):
    grid = {"parameters": {"tags": ["a", "b"]}, "grid": {"x": [2, -1, 3]}}
    out = tmp_path / "sweep"
    t1 = sw.sweep(toy_nb, grid, out=out, workers=1, progress=False)
    assert list(t1.columns) == ["run", "x", "status", "seconds", "error"]
    assert t1["status"].tolist() == ["ok", "failed", "ok"]  # the failure is recorded, the sweep goes on
    assert t1["error"][1].startswith("ValueError: toy failure on purpose [RunError: notebook 98_sweep_toy")
    summary = pd.read_csv(out / "sweep_summary.csv")
    assert summary["status"].tolist() == t1["status"].tolist()
    assert json.loads((out / "sweep.json").read_text())["runs"][1]["status"] == "failed"
    ok_runs = t1.loc[t1["status"] == "ok", "run"].tolist()
    stamps = {r: (out / r / "run.json").stat().st_mtime_ns for r in ok_runs}

    # the same command again: the finished runs are skipped, the failed one runs again (and fails again)
    t2 = sw.sweep(toy_nb, grid, out=out, workers=1, progress=False)
    assert t2["status"].tolist() == ["skipped", "failed", "skipped"]
    assert {r: (out / r / "run.json").stat().st_mtime_ns for r in ok_runs} == stamps

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tables = sw.collect(out)
    assert "1 run(s)" in " ".join(str(w.message) for w in caught)  # the failed one is left out, said so
    assert sorted(tables) == ["other", "toy"]  # an empty (0-byte) CSV has nothing to join
    toy = tables["toy"]
    # parameters as columns; x is also a column of the table, so the parameter is param_x
    assert list(toy.columns) == ["run", "profile", "tags", "param_x", "i", "y", "x"]
    assert toy["y"].tolist() == [20, 21, 30, 31] and toy["param_x"].tolist() == [2, 2, 3, 3]
    assert toy["x"].tolist() == [-2, -2, -3, -3] and toy["run"].tolist() == sorted(ok_runs * 2)
    assert toy["tags"].unique().tolist() == ['["a", "b"]'] and (toy["profile"] == "offline").all()
    with pytest.warns(UserWarning, match="did not finish"):
        assert sw.collect(out, table="other")["n_tags"].tolist() == [2, 2]

    # vlnb collect writes one CSV per table name
    proc = subprocess.run([sys.executable, "-m", "vlnb", "collect", str(out)], check=False, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "toy: 4 rows from 2 run(s)" in proc.stdout
    pd.testing.assert_frame_equal(pd.read_csv(out / "collected" / "toy.csv"), toy)
    assert sw.write_collected(out)["toy"] == out / "collected" / "toy.csv"  # its own folder: replaced
    with pytest.raises(sw.SweepError, match="not written by vlnb collect"):
        sw.write_collected(out, tmp_path)  # a folder of someone else's files is refused
    # a folder that is not a sweep's is refused as --out
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(sw.SweepError, match="not a vlnb sweep folder"):
        sw.sweep(toy_nb, grid, out=tmp_path / "mine", workers=1, progress=False)


def test_collect_names_an_unreadable_table_and_keeps_the_rest(tmp_path):
    for name, status in (("r1", "ok"), ("r2", "ok")):
        (tmp_path / name / "results").mkdir(parents=True)
        (tmp_path / name / "run.json").write_text(json.dumps(
            {"notebook": "x.ipynb", "profile": "offline", "status": status,
             "parameters": {"k": name, "profile": "offline", "out_dir": str(tmp_path / name)}}))
        (tmp_path / name / "results" / "t.csv").write_text("a,b\n1,2\n")
    (tmp_path / "r2" / "results" / "t.csv").write_bytes(b'a,b\n"1,2\n\xff\xfe')
    with pytest.warns(UserWarning, match=r"r2/results/t.csv: not a readable CSV"):
        t = sw.collect(tmp_path, table="t")
    assert t["k"].tolist() == ["r1"] and t["a"].tolist() == [1]
    with pytest.raises(FileNotFoundError, match="no run folders"):
        sw.collect(tmp_path / "r1" / "results")


# ----------------------------------------------------------------------------------------------------
# End to end: chapter 1 through the local process pool and through Dask (slow)
# ----------------------------------------------------------------------------------------------------
CH1_GRID = {"parameters": CH1_FIXED, "grid": {"world_n_train": [30, 50]}}


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "sweep"
    table = sw.sweep(CH1, CH1_GRID, out=out, workers=2, threads=1, progress=False)
    return out, table


@pytest.mark.slow
def test_local_pool_sweep_of_chapter1(local_sweep):
    out, table = local_sweep
    assert table["status"].tolist() == ["ok"] * 2
    overview = sw.collect(out, table="manifest_overview")
    world = overview[(overview["dataset"] == "world") & (overview["split"] == "train")]
    assert world["world_n_train"].tolist() == world["images"].tolist() == [30, 50]
    for run in table["run"]:
        rec = json.loads((out / run / "run.json").read_text())
        assert rec["status"] == "ok" and rec["parameters"]["out_dir"] == str(out / run)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def _processes_in(folder) -> list[int]:
    """Processes whose working directory is under ``folder`` (a notebook kernel runs in its run folder)."""
    pids = []
    for proc in os.listdir("/proc"):
        try:
            cwd = os.readlink(f"/proc/{proc}/cwd")
        except OSError:
            continue
        if proc.isdigit() and cwd.startswith(str(folder)):
            pids.append(int(proc))
    return pids


@pytest.mark.slow
def test_dask_sweep_survives_a_killed_worker_and_matches_local(local_sweep, tmp_path):
    distributed = pytest.importorskip("distributed")
    out_local, table_local = local_sweep
    out = tmp_path / "sweep"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        killed = {}

        def kill_one_mid_run():
            # as soon as a run's notebook is executing, SIGKILL the worker process that runs it
            deadline = time.time() + 120
            while time.time() < deadline and not killed:
                processing = client.processing()
                for addr, keys in processing.items():
                    runs = [out / str(k).split("-", 3)[3] for k in keys]  # key: vlnb-sweep-<token>-<run>
                    if runs and (runs[0] / "01_data_prep.ipynb").exists():
                        pid = next(w.process.process.pid for w in cluster.workers.values()
                                   if w.worker_address == addr)
                        time.sleep(1.0)
                        kernels = _processes_in(runs[0])  # the notebook's kernel runs in its run folder
                        os.kill(pid, signal.SIGKILL)
                        killed.update(run=runs[0].name, kernels=kernels)
                        t = time.time()  # the kernel must not outlive its worker (it would write into the
                        while time.time() - t < 15 and any(map(_alive, kernels)):
                            time.sleep(0.2)  # folder the retried run writes)
                        killed["kernels_alive"] = [k for k in kernels if _alive(k)]
                        return
                time.sleep(0.2)

        killer = threading.Thread(target=kill_one_mid_run, daemon=True)
        killer.start()
        # by address, as `vlnb sweep --scheduler tcp://...` does (the test's own client only watches)
        table = sw.sweep(CH1, CH1_GRID, out=out, scheduler=cluster.scheduler_address, progress=False)
        killer.join()
    assert killed, "no worker was killed mid-run"
    assert killed["kernels"] and not killed["kernels_alive"], killed
    assert table["status"].tolist() == ["ok"] * 2, table.to_string()
    assert table["run"].tolist() == table_local["run"].tolist()
    assert json.loads((out / killed["run"] / "run.json").read_text())["status"] == "ok"
    for name in ("manifest_overview", "caption_lengths"):
        a, b = sw.collect(out_local, table=name), sw.collect(out, table=name)
        pd.testing.assert_frame_equal(a, b)
