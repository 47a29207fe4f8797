"""Shared fixtures: tiny, architecture-faithful HF checkpoints built once per test session, and the offline book
built once per test session.

Each tiny-model fixture builds its model with :mod:`vlnb.models.tiny` (real model classes, shrunken configs,
``save_pretrained`` + tokenizer/processor files) into a session temp folder, so tests load them through
exactly the ``from_pretrained`` path the full profile uses for hub checkpoints.

:func:`offline_book` executes every chapter once with the offline profile (cold caches: the reference models
are trained from scratch) and builds the HTML book; the book-build test and the chapters' offline tests read
that one build.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from vlnb.paths import shared_data_dir

CLIP_SHARED = shared_data_dir() / "clip-vit-base-patch32"


#: The xdist group of every test that reads the offline book: with ``pytest -n N --dist loadgroup`` (``make test``)
#: they all run in one worker, so the session builds the book once, while the other workers run the rest.
BOOK_GROUP = "offline_book"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group marks into the test ids
def pytest_collection_modifyitems(config, items):
    """Put every test that requests :func:`offline_book` in one xdist group (:data:`BOOK_GROUP`)."""
    for item in items:
        if "offline_book" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(BOOK_GROUP))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models: one thread is fastest, and far faster than two on a busy shared 2-core CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_clip_dir(tiny_models_root):
    if not (CLIP_SHARED / "tokenizer.json").is_file():
        pytest.skip("shared clip-vit-base-patch32 tokenizer/config files not available")
    from vlnb.models.tiny import make_tiny_clip

    return make_tiny_clip(tiny_models_root / "clip")


@pytest.fixture(scope="session")
def tiny_blip_dir(tiny_models_root):
    from vlnb.models.tiny import make_tiny_blip

    return make_tiny_blip(tiny_models_root / "blip")


@pytest.fixture(scope="session")
def tiny_blip2_dir(tiny_models_root):
    from vlnb.models.tiny import make_tiny_blip2

    return make_tiny_blip2(tiny_models_root / "blip2")


@pytest.fixture(scope="session")
def tiny_vilt_dir(tiny_models_root):
    from vlnb.models.tiny import make_tiny_vilt

    return make_tiny_vilt(tiny_models_root / "vilt")


@pytest.fixture(scope="session")
def tiny_hub_models(tiny_clip_dir, tiny_blip_dir, tiny_blip2_dir, tiny_vilt_dir):
    """``{display name: folder}`` with a tiny checkpoint standing in for each hub model of vlnb.zoo.HUB_MODELS
    (CLIP, BLIP, BLIP-2, ViLT): the ``models`` parameter of a chapter's full-profile test."""
    from vlnb.zoo import HUB_MODELS

    return dict(zip(HUB_MODELS, map(str, (tiny_clip_dir, tiny_blip_dir, tiny_blip2_dir, tiny_vilt_dir))))


@pytest.fixture()
def make_tiny_recipe(monkeypatch, tmp_path):
    """``make(epochs)`` registers the reference recipe ``"tiny-world"`` (a tiny scratch model on a 32 + 16 image
    world, trained for ``epochs`` epochs) with its artifacts under ``tmp_path``, and returns it."""
    from vlnb import zoo

    def make(epochs: int):
        monkeypatch.setenv("VLNB_ARTIFACTS", str(tmp_path / "art"))
        r = zoo.Recipe(name="tiny-world", kind="scratch", data="world", model={"config": "tiny", "seed": 0},
                       train={"epochs": epochs, "batch_size": 16, "lr": 1e-3, "warmup_steps": 1, "seed": 0},
                       data_kwargs={"n_train": 32, "n_test": 16, "image_size": 32, "seed": 0})
        monkeypatch.setitem(zoo.RECIPES, "tiny-world", r)
        return r

    return make


# ------------------------------------------------------------------------------------------- the offline book
#: Chapter 1's parameters in the book build (a small world; the other chapters run on the offline defaults).
BOOK_CH1_PARAMS = {"world_n_train": 60, "world_n_test": 30, "n_grid": 6}


def digest(paths) -> dict[str, str]:
    """``{file name: sha256}`` of ``paths``."""
    return {Path(p).name: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


@dataclass(frozen=True)
class OfflineBook:
    """One offline build of the whole book (:func:`vlnb.runs.build_book` into a session temp folder).

    ``build/runs/<stem>/`` holds each chapter's run folder (``run.json``, the executed notebook, ``results/``,
    ``figures/``), ``build/src/notebooks/`` the executed copies the book is built from, ``index`` is
    ``build/html/index.html``. ``tracked_before``/``tracked_after`` are digests of the tracked notebooks taken
    just before and just after the build."""

    build: Path
    index: Path
    notebooks: tuple[Path, ...]
    params: dict = field(default_factory=dict)
    tracked_before: dict = field(default_factory=dict)
    tracked_after: dict = field(default_factory=dict)

    def run(self, stem: str) -> Path:
        """The run folder of chapter ``stem`` (e.g. ``"02_clip_training"``)."""
        return self.build / "runs" / stem

    def results(self, stem: str, table: str):
        """The chapter's ``results/<table>.csv`` as a DataFrame."""
        import pandas as pd

        return pd.read_csv(self.run(stem) / "results" / f"{table}.csv")

    def figure(self, stem: str, name: str) -> Path:
        return self.run(stem) / "figures" / f"{name}.png"

    def config(self, stem: str):
        """The validated parameters the chapter ran with (offline defaults plus the book's overrides)."""
        from vlnb.config import resolve

        return resolve(stem, profile="offline", **self.params.get(stem, {}))


def build_offline_book(root: Path, notebooks=None, params=None) -> OfflineBook:
    """Build the offline book under ``root`` (``build/``, with its own empty ``cache/`` and ``artifacts/``: every
    reference model is trained here, nothing is read from the repository's or the user's caches).

    ``VLNB_CACHE`` / ``VLNB_ARTIFACTS`` are set in ``os.environ`` (the papermill kernels are subprocesses that
    inherit it) only while the build runs, and restored afterwards. A failed build raises ``pytest.fail`` with
    the build's own message (the failing notebook and cell), so each test that needs the book errors with it.
    """
    from vlnb.runs import RunError, build_book, list_notebooks

    tracked = tuple(list_notebooks())
    notebooks = tuple(notebooks or tracked)
    params = {tracked[0].stem: dict(BOOK_CH1_PARAMS)} if params is None else params
    before = digest(tracked)
    index, failure = None, None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLNB_CACHE", str(root / "cache"))
        mp.setenv("VLNB_ARTIFACTS", str(root / "artifacts"))
        try:
            index = build_book(build_dir=root / "build", notebooks=list(notebooks), parameters=params,
                               progress=False)
        except RunError as e:  # its message names the notebook, the cell and the log; other errors keep their traceback
            failure = str(e)
    if failure is not None:  # raised outside the except block: the message once, not chained to itself
        pytest.fail(f"the offline book build (tests/conftest.py::offline_book) failed:\n{failure}", pytrace=False)
    return OfflineBook(build=root / "build", index=index, notebooks=notebooks, params=params,
                       tracked_before=before, tracked_after=digest(tracked))


@pytest.fixture(scope="session")
def offline_book(tmp_path_factory) -> OfflineBook:
    """The whole book built once per session with the offline profile, from cold caches (see
    :func:`build_offline_book`). Slow: request it only from tests marked ``slow``."""
    return build_offline_book(tmp_path_factory.mktemp("offline_book"))
