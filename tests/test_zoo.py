"""Reference models: trained once, saved, loaded back identically; a changed recipe is never loaded stale."""

import json
import shutil

import pytest
import torch

from vlnb import zoo


@pytest.fixture()
def tiny_recipe(make_tiny_recipe):
    return make_tiny_recipe(epochs=1)


def test_a_loaded_reference_model_is_named_after_its_recipe(monkeypatch, tmp_path):
    """A saved towers model is read from a cache folder; pages and tables name it by its recipe, not that path."""
    from vlnb.zoo import load as L

    class Saved:
        name = str(tmp_path / "artifacts" / "offline" / "towers-coco" / "model")  # what TowersDualEncoder.load sets

    monkeypatch.setattr(L, "load_model", lambda *a, **k: Saved())
    assert L._load_saved(zoo.recipe("towers-coco"), tmp_path / "towers-coco").name == "towers-coco"


def test_train_save_load_roundtrip(tiny_recipe):
    assert not zoo.is_trained("tiny-world")
    with pytest.raises(FileNotFoundError, match="not trained"):
        zoo.reference_model("tiny-world", train_if_missing=False)
    from vlnb.train.plots import live_plot

    model, _ = zoo.train_reference("tiny-world", progress=False, on_epoch_end=live_plot())  # chapter 2's call
    assert zoo.is_trained("tiny-world")
    loaded = zoo.reference_model("tiny-world", progress=False)
    assert loaded.fingerprint() == model.fingerprint()
    x = torch.rand(2, 3, 64, 64)  # the tiny preset reads 64 px (its preprocess resizes)
    torch.testing.assert_close(loaded.encode_image(x), model.eval().encode_image(x))
    h = zoo.reference_history("tiny-world")
    assert h.epochs_df["epoch"].tolist() == [1] and "t2i_R@1" in h.epochs_df and len(h.steps_df) == 2
    saved = json.loads((zoo.artifacts_dir() / "tiny-world" / "recipe.json").read_text())
    assert saved == tiny_recipe.key()


def test_changed_recipe_is_stale(tiny_recipe, monkeypatch):
    zoo.train_reference("tiny-world", progress=False)
    changed = zoo.Recipe(**{**tiny_recipe.key(), "train": {**tiny_recipe.train, "lr": 2e-3}})
    monkeypatch.setitem(zoo.RECIPES, "tiny-world", changed)
    assert not zoo.is_trained("tiny-world")


def test_reference_data_splits(tiny_recipe):
    data = zoo.reference_data("tiny-world")
    assert len(data["train"]) == 32 and len(data["test"]) == 16
    assert set(data["test"]["split"]) == {"test"} and data["test"].attrs.get("vlnb")


def test_unknown_names():
    with pytest.raises(KeyError, match="unknown reference model"):
        zoo.reference_model("nope")
    with pytest.raises(ValueError, match="unknown profile"):
        zoo.profile_models("cloud")


def test_reference_models_train_side_by_side_like_one_at_a_time(make_tiny_recipe, monkeypatch, tmp_path):
    """Two recipes trained in two one-thread worker processes: saved like train_reference's, same weights as a
    one-thread run in this process; a fine-tune of one of them waits for it (second wave)."""
    import dataclasses

    from vlnb.zoo.train import side_by_side_jobs, train_side_by_side

    a = make_tiny_recipe(epochs=1)
    b = dataclasses.replace(a, name="tiny-world-b", model={**a.model, "seed": 1})
    ft = dataclasses.replace(a, name="tiny-world-ft", init_from="tiny-world", train={**a.train, "epochs": 1})
    monkeypatch.setitem(zoo.RECIPES, b.name, b)
    monkeypatch.setitem(zoo.RECIPES, ft.name, ft)
    assert train_side_by_side(["tiny-world"], device="cpu") == []       # one model: nothing to gain
    assert train_side_by_side(["tiny-world", b.name], device="cpu", jobs=1) == []
    assert side_by_side_jobs(3, "cpu", jobs=8) <= 8
    trained = train_side_by_side(["tiny-world", b.name, ft.name], device="cpu", jobs=2)
    assert trained == ["tiny-world", b.name, ft.name]
    assert all(zoo.is_trained(n) for n in trained)
    assert len(zoo.reference_history(b.name).epochs) == 1
    side = zoo.reference_model(b.name, train_if_missing=False, device="cpu").state_dict()
    monkeypatch.setenv("VLNB_ARTIFACTS", str(tmp_path / "again"))
    here, _ = zoo.train_reference(b.name, progress=False, device="cpu")  # this process: one thread (conftest)
    for k, v in here.state_dict().items():
        assert torch.allclose(v, side[k], atol=1e-5), k
    with pytest.raises(KeyError, match="unknown reference model"):
        train_side_by_side(["tiny-world", "no-such-model"], device="cpu")


def test_side_jobs_fill_the_cores_beside_the_first_model(make_tiny_recipe, monkeypatch, capsys):
    """Independent runs (SideJob) train in the same pool as the models, their results handed to done() here; with
    enough of them to fill the other core, the model others wait for trains on one thread beside them, else alone
    with every thread first (as without side jobs)."""
    import dataclasses

    from vlnb.device import SideJob
    from vlnb.zoo.train import train_side_by_side

    a = make_tiny_recipe(epochs=1)
    ft = dataclasses.replace(a, name="tiny-world-ft", init_from="tiny-world", train={**a.train, "epochs": 1})
    monkeypatch.setitem(zoo.RECIPES, ft.name, ft)
    monkeypatch.setitem(zoo.RECIPES, a.name, dataclasses.replace(a, cost=10.0))
    got = []
    side = [SideJob(f"sum {i}", cost, sum, ([i, 1],), done=got.append) for i, cost in enumerate([3.0, 4.0])]
    assert train_side_by_side([a.name, ft.name], device="cpu", jobs=2, side_jobs=side) == [a.name, ft.name]
    assert sorted(got) == [1, 2] and "first (2 threads)" in capsys.readouterr().out  # 7 s beside: less than its 10 s
    got.clear()
    side = [dataclasses.replace(j, cost=20.0) for j in side]  # enough work beside it: one thread each
    for n in (a.name, ft.name):
        shutil.rmtree(zoo.artifacts_dir() / n)
    assert train_side_by_side([a.name, ft.name], device="cpu", jobs=2, side_jobs=side) == [a.name, ft.name]
    out = capsys.readouterr().out
    assert sorted(got) == [1, 2] and "first" not in out and "2 independent runs beside them (sum 0, …)" in out
    assert all(zoo.is_trained(n) for n in (a.name, ft.name))
    assert train_side_by_side([], device="cpu", jobs=2, side_jobs=side) == []  # no model: the runs stay theirs


def test_train_or_load_trains_what_is_missing_and_loads_the_rest(tiny_recipe, capsys, monkeypatch):
    """Chapter 2's loop: a missing model is trained here (with its per-epoch callback), a finished one is loaded, and
    retrain=True trains it again; every model comes back with its history, in the order asked."""
    seen = []
    out = list(zoo.train_or_load(["tiny-world"], device="cpu", on_epoch_end=lambda n: lambda h: seen.append(n)))
    assert [n for n, _, _ in out] == ["tiny-world"] and seen == ["tiny-world"]  # 1 epoch, 1 callback
    assert "training tiny-world" in capsys.readouterr().out
    (_, model, history), = zoo.train_or_load(["tiny-world"], device="cpu")
    assert "trained earlier in this run" in capsys.readouterr().out and len(history.epochs) == 1
    monkeypatch.setattr("vlnb.zoo.load._TRAINED_HERE", set())  # a new session: it says where it loads from
    zoo.train_or_load(["tiny-world"], device="cpu").__next__()
    assert "loading the trained model from" in capsys.readouterr().out
    trained = out[0][1].state_dict()
    assert all(torch.equal(v.cpu(), trained[k].cpu()) for k, v in model.state_dict().items())
    list(zoo.train_or_load(["tiny-world"], device="cpu", retrain=True, side_by_side=False))
    assert "training tiny-world" in capsys.readouterr().out


def _fake_pool(on_submit):
    """A stand-in for ProcessPoolExecutor that starts nothing: ``submit`` calls ``on_submit(name, threads)`` and
    returns an unfinished Future named after the model (a test's fake ``wait`` finishes it)."""
    from concurrent.futures import Future

    class Pool:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def submit(self, fn, name, *a):
            on_submit(name, a[-1])
            f = Future()
            f.name = name
            return f

    return Pool


def test_side_by_side_trains_a_parent_first_with_every_thread(monkeypatch):
    """A model that another waits for trains first, alone, with every thread; then the rest side by side with one
    thread each (chapter 2: scratch-world, then its dependants beside towers-coco and blip-world)."""
    import dataclasses

    from vlnb.zoo import train as T

    base = zoo.recipe("scratch-world")
    # "slow" alone beside "fast" (100 < 150 one-thread seconds) cannot keep the other core busy while "fast"
    # trains on one thread: "fast" takes every thread
    recipes = {"slow": dataclasses.replace(base, name="slow", cost=100), "fast": dataclasses.replace(base, name="fast"),
               "dep": dataclasses.replace(base, name="dep", init_from="fast", cost=100)}
    for r in recipes.values():
        monkeypatch.setitem(zoo.RECIPES, r.name, r)
    log = []
    Pool = _fake_pool(lambda name, threads: log.append(f"start {name} ({threads} thread{'s' if threads > 1 else ''})"))

    def wait(running, return_when):  # the simulated clock: "dep" finishes before "slow"
        order = ["fast", "dep", "slow"]
        f = min(running, key=lambda f: order.index(f.name))
        f.set_result(f.name)
        log.append(f"done {f.name}")
        return {f}, set(running) - {f}

    monkeypatch.setattr(T, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(T, "wait", wait)
    assert T.train_side_by_side(["slow", "fast", "dep"], device="cpu", jobs=2) == ["slow", "fast", "dep"]
    # "fast" feeds "dep": it trains first, alone, with both threads; then the others side by side, one thread each
    assert log == ["start fast (2 threads)", "done fast", "start slow (1 thread)", "start dep (1 thread)",
                   "done dep", "done slow"]
    cyc = dataclasses.replace(base, name="cyc", init_from="cyc2")
    monkeypatch.setitem(zoo.RECIPES, "cyc", cyc)
    monkeypatch.setitem(zoo.RECIPES, "cyc2", dataclasses.replace(base, name="cyc2", init_from="cyc"))
    with pytest.raises(ValueError, match="cycle"):
        T.train_side_by_side(["cyc", "cyc2"], device="cpu", jobs=2)


def test_side_jobs_let_the_parent_train_on_one_thread_and_its_dependant_start_next(monkeypatch):
    """With side jobs that hold enough work for the other core, the model others wait for starts at once on one
    thread beside the longest of them; each free process then takes the longest ready run, so the dependant
    starts as soon as its parent is saved, before the shorter side jobs (chapter 2: qformer-world right after
    scratch-world, the short variant runs last)."""
    import dataclasses

    from vlnb.device import SideJob
    from vlnb.zoo import train as T

    base = zoo.recipe("scratch-world")  # cost 150
    monkeypatch.setitem(zoo.RECIPES, "fast", dataclasses.replace(base, name="fast"))
    monkeypatch.setitem(zoo.RECIPES, "dep", dataclasses.replace(base, name="dep", init_from="fast", cost=53))

    def s1(): ...
    def s2(): ...
    def s3(): ...

    got = []
    side = [SideJob(f.__name__, c, f, done=got.append) for f, c in ((s3, 10), (s1, 100), (s2, 60))]
    log = []

    def name(n):  # a side job's future is named after its function
        return getattr(n, "__name__", n)

    Pool = _fake_pool(lambda n, threads: log.append(f"start {name(n)} ({threads})"))

    def wait(running, return_when):
        order = ["s1", "fast", "s2", "dep", "s3"]
        f = min(running, key=lambda f: order.index(name(f.name)))
        f.set_result(name(f.name))
        log.append(f"done {name(f.name)}")
        return {f}, set(running) - {f}

    monkeypatch.setattr(T, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(T, "wait", wait)
    assert T.train_side_by_side(["fast", "dep"], device="cpu", jobs=2, side_jobs=side) == ["fast", "dep"]
    assert log == ["start fast (1)", "start s1 (1)", "done s1", "start s2 (1)", "done fast", "start dep (1)",
                   "done s2", "start s3 (1)", "done dep", "done s3"]
    assert got == ["s1", "s2", "s3"]  # each side job's result reached its done()


def test_side_by_side_starts_the_longest_models_first(monkeypatch):
    """Of the models ready to train, the one with the largest Recipe.cost starts first (ties: the caller's order),
    so the short ones fill the end; the cost is not part of the recipe's key (it never retrains a model)."""
    import dataclasses

    from vlnb.zoo import train as T

    base = zoo.recipe("scratch-world")
    costs = {"short": 5.0, "long": 50.0, "mid": 20.0, "mid2": 20.0, "parent": 10.0}
    for name, cost in costs.items():
        monkeypatch.setitem(zoo.RECIPES, name, dataclasses.replace(base, name=name, cost=cost))
    monkeypatch.setitem(zoo.RECIPES, "child", dataclasses.replace(base, name="child", init_from="parent", cost=1.0))
    started = []
    Pool = _fake_pool(lambda name, threads: started.append(name))

    def wait(running, return_when):  # every submitted model finishes, in submission order
        f = min(running, key=lambda f: started.index(f.name))
        f.set_result(f.name)
        return {f}, set(running) - {f}

    monkeypatch.setattr(T, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(T, "wait", wait)
    names = ["short", "mid", "child", "long", "mid2", "parent"]
    assert T.train_side_by_side(names, device="cpu", jobs=2) == names
    # "parent" feeds "child": alone first; then the rest longest first, "mid" before "mid2" as the caller listed them
    assert started == ["parent", "long", "mid", "mid2", "short", "child"]
    assert zoo.recipe("long").key() == dataclasses.replace(zoo.recipe("long"), cost=0.0).key()


def test_train_or_load_trains_ahead_without_yielding_them(make_tiny_recipe, monkeypatch, capsys):
    """``ahead``: a later chapter's model, trained with the yielded ones (side by side where it helps, else after
    them) and loaded later; one already trained is left alone."""
    import dataclasses

    from vlnb.zoo import load as L

    a = make_tiny_recipe(epochs=1)
    b = dataclasses.replace(a, name="tiny-world-b", model={**a.model, "seed": 1})
    monkeypatch.setitem(zoo.RECIPES, b.name, b)
    asked = []
    monkeypatch.setattr(L, "train_side_by_side", lambda names, *a, **k: asked.append(list(names)) or [])
    out = list(zoo.train_or_load(["tiny-world"], device="cpu", ahead=[b.name, "tiny-world"]))
    assert [n for n, _, _ in out] == ["tiny-world"] and asked == [["tiny-world", b.name]]
    assert zoo.is_trained(b.name) and f"training {b.name} (used later)" in capsys.readouterr().out
    asked.clear()
    list(zoo.train_or_load(["tiny-world"], device="cpu", ahead=[b.name]))
    assert asked == [[]] and "used later" not in capsys.readouterr().out  # both trained: nothing to do
    # a later call loads it, saying it was trained earlier in this run instead of printing the machine's folder
    (name, _, _), = zoo.train_or_load([b.name], device="cpu")
    assert name == b.name
    out = capsys.readouterr().out
    assert f"{b.name}: " in out and "trained earlier in this run" in out and "loading the trained model" not in out
