"""One typed configuration for every notebook's papermill parameters, with named profiles.

Each notebook has a ``parameters`` cell whose names are the fields of one model below. Values are
validated here: an unknown name or a wrong type fails fast with a :class:`ParameterError` naming the
parameter. Profiles are named sets of defaults: ``offline`` (the embedded default: CPU, minutes, no
network) and ``full`` (hub checkpoints and data sets on a GPU).

In a notebook::

    run = vlnb.config.NotebookRun.start("01_data_prep", globals())   # before the parameters cell
    # parameters cell: profile = "offline"; n_world_train = None  (None = the profile's default)
    cfg = run.params(globals())                                      # after it: validated config
"""

from __future__ import annotations

import html
import importlib.util
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ParameterError
from .paths import atomic_write, atomic_write_text

Profile = Literal["offline", "full"]
#: The MIME-type prefix of a glued value that is not shown where it is glued (``myst_nb.ext.glue.GLUE_PREFIX``).
GLUE_PREFIX = "application/papermill.record/"
PROFILES = ("offline", "full")


def _positive_ks(v: list[int]) -> list[int]:
    if not v or min(v) < 1:
        raise ValueError(f"ks must be positive ints, got {v}")
    return v


#: A non-empty list of Recall@K / top-k cut-offs, each >= 1 (a parameter type the chapters share).
Ks = Annotated[list[int], AfterValidator(_positive_ks)]


def _device_spec(v: str) -> str:
    # lazy: vlnb.device imports torch; the CLI's startup imports this module
    from .device import check_device_spec

    return check_device_spec(v)


#: Where a chapter computes: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", "mps"... The
#: syntax is checked with the parameters; whether the device exists when the chapter resolves it
#: (:func:`vlnb.device.resolve_device`).
Device = Annotated[str, AfterValidator(_device_spec)]

#: Every evaluation data set name a chapter may ask for (see vlnb.data.profiles.evaluation_manifest).
EVAL_DATASETS = ("world", "coco-mini", "cifar100", "coco", "flickr30k", "pokemon")


def check_datasets(v):
    """A list (or ``{model: [names]}``) of evaluation data set names, each one of :data:`EVAL_DATASETS`."""
    if v is None:
        return v
    names = [n for ns in v.values() for n in ns] if isinstance(v, dict) else list(v)
    bad = sorted({n for n in names if n not in EVAL_DATASETS})
    if bad:
        raise ValueError(f"unknown data set(s) {bad}; known: {', '.join(EVAL_DATASETS)}")
    return v


def check_recipes(names, what: str = "reference model") -> None:
    """Raise ValueError unless every name is a recipe of :data:`vlnb.zoo.RECIPES`."""
    from .zoo import RECIPES  # lazy: the zoo imports torch; the CLI's startup imports this module

    bad = [n for n in names if n not in RECIPES]
    if bad:
        raise ValueError(f"unknown {what}(s) {bad}; known: {', '.join(RECIPES)}")


#: A list or ``{model: [data sets]}`` of known evaluation data set names.
Datasets = Annotated[list[str] | dict[str, list[str]], AfterValidator(check_datasets)]


class NotebookParams(BaseModel):
    """Parameters every notebook shares."""

    # strict: ``true`` is not an int, ``"3"`` is not a number (the CLI parses -p values as JSON-like YAML)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)

    #: Which named set of defaults to start from.
    profile: Profile = "offline"
    #: Where the run writes its result files (tables, figures, checkpoints).
    out_dir: str = "."
    #: Global random seed.
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _offline_models(self):
        """Offline, ``models`` names reference models of vlnb.zoo.RECIPES (checked in every chapter that has it)."""
        models = getattr(self, "models", None)
        if self.profile == "offline" and models:
            from .zoo import RECIPES  # lazy: the zoo imports torch; the CLI's startup imports this module

            # a list / dict keys name recipes; a dict may also map a display name to a recipe (chapter 3)
            names = [k if k in RECIPES or not isinstance(models, dict) or not isinstance(models[k], str) else models[k]
                     for k in models]
            check_recipes(names)
        return self

    #: Per-profile default overrides (class-level, not a parameter).
    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}


# ----------------------------------------------------------------------------------------------
# Chapter configs. Keep one class per notebook, named for it, registered under the notebook stem.
# ----------------------------------------------------------------------------------------------
REGISTRY: dict[str, type[NotebookParams]] = {}


def register(stem: str):
    def deco(cls: type[NotebookParams]) -> type[NotebookParams]:
        REGISTRY[stem] = cls
        return cls

    return deco


@register("01_data_prep")
class DataPrepParams(NotebookParams):
    """Chapter 1: build the manifests of the profile's data sets."""

    #: Offline world: images per split and image size.
    world_n_train: int = Field(2000, ge=1)
    world_n_test: int = Field(500, ge=1)
    world_image_size: int = Field(64, ge=24)
    #: COCO 2017 root (holds annotations/ and train2017/, val2017/); None = the shared coco-mini.
    coco_root: str | None = None
    #: Karpathy split file (Karpathy's dataset_coco.json or LAVIS's coco_karpathy_test.json); when given, the
    #: 5k test selection is used (`vlnb prepare coco --download` fetches it with val2014 and its annotations).
    coco_karpathy_split: str | None = None
    #: Hub data sets (full profile only); None skips them.
    flickr30k_source: str | None = None
    pokemon_source: str | None = None
    cifar100_source: str | None = None
    #: How many images the example grid shows.
    n_grid: int = Field(12, ge=0)
    #: Where the chapter computes ("auto": CUDA when available, else CPU; "cpu", "cuda", "cuda:1"...).
    device: Device = "auto"

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {
            "world_n_train": 20000,
            "world_n_test": 2000,
            "coco_root": "data/coco",
            "coco_karpathy_split": "data/coco/coco_karpathy_test.json",
            "flickr30k_source": "nlphuji/flickr30k",
            "pokemon_source": "reach-vb/pokemon-blip-captions",
            "cifar100_source": "uoft-cs/cifar100",
        }
    }


def params_class(stem: str) -> type[NotebookParams]:
    stem = Path(stem).stem
    if stem not in REGISTRY:
        # lazy: a cycle (vlnb.params imports this module)
        import vlnb.params  # noqa: F401  (registers the configs of chapters 2 onwards)
    if stem not in REGISTRY:
        raise ParameterError(f"no parameter config is registered for notebook '{stem}'; known: {sorted(REGISTRY)}")
    return REGISTRY[stem]


def _format_validation_error(stem: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        name = ".".join(str(x) for x in e["loc"]) or "?"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown parameter '{name}'")
        else:
            parts.append(f"parameter '{name}': {e['msg']} (got {e.get('input')!r})")
    return f"invalid parameters for notebook '{stem}': " + "; ".join(parts)


def resolve(stem: str, profile: str = "offline", **overrides: Any) -> NotebookParams:
    """The validated parameters of notebook ``stem``: profile defaults, then ``overrides`` on top.

    ``None`` in ``overrides`` means "use the profile default" (the convention of the parameters cells).
    """
    cls = params_class(stem)
    if profile not in PROFILES:
        raise ParameterError(f"parameter 'profile': must be one of {PROFILES}, got {profile!r}")
    known = set(cls.model_fields)
    unknown = sorted(k for k in overrides if k not in known)
    if unknown:
        raise ParameterError(
            f"invalid parameters for notebook '{Path(stem).stem}': unknown parameter(s) "
            + ", ".join(f"'{u}'" for u in unknown)
            + f"; known: {', '.join(sorted(known))}"
        )
    values = dict(cls.PROFILE_DEFAULTS.get(profile, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["profile"] = profile
    try:
        return cls(**values)
    except ValidationError as e:
        raise ParameterError(_format_validation_error(Path(stem).stem, e)) from None


def _json_compatible(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if v is None or isinstance(v, (str, bool, int)):
        return True
    if isinstance(v, list):
        return all(_json_compatible(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _json_compatible(x) for k, x in v.items())
    return False


def coerce_cli_value(text: str, name: str | None = None) -> Any:
    """Parse a ``-p NAME VALUE`` string like papermill (YAML scalars: 3, 0.5, true, null, [1, 2], {a: 1}).

    Only JSON-compatible values come out: str, int, float, bool, None and lists / str-keyed dicts of them.
    YAML tags (``!!binary``, ``!!set``, ``!!python/...``), anchors/aliases and values that are not JSON
    (dates, bytes, sets) raise :class:`ParameterError` naming the parameter; text YAML cannot parse is
    taken as a plain string.
    """
    what = f"parameter '{name}'" if name else "parameter value"
    try:
        tokens = list(yaml.scan(text))
    except yaml.YAMLError:
        return text
    if any(isinstance(t, (yaml.TagToken, yaml.AnchorToken, yaml.AliasToken)) for t in tokens):
        raise ParameterError(
            f"{what}: YAML tags, anchors and aliases are not accepted (got {text!r}); give a JSON-like value "
            "(3, 0.5, true, null, \"text\", [1, 2], {\"a\": 1})"
        )
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if not _json_compatible(value):
        raise ParameterError(
            f"{what}: {text!r} parses as {type(value).__name__}, not a JSON-compatible value; quote it to pass "
            "a string"
        )
    return value


class NotebookRun:
    """The link between a notebook's namespace and its validated config and output folder."""

    def __init__(self, stem: str, baseline: set[str]):
        self.stem = Path(stem).stem
        self.cls = params_class(self.stem)
        self.baseline = set(baseline)
        self.cfg: NotebookParams | None = None

    @classmethod
    def start(cls, stem: str, namespace: Mapping[str, Any]) -> NotebookRun:
        """Call before the parameters cell: remembers which names already exist. In a ``vlnb run`` kernel
        (``$VLNB_RUN_DIR`` set) it also starts the per-category timers (:mod:`vlnb.timing`)."""
        if os.environ.get("VLNB_RUN_DIR"):
            # lazy: timing imports pandas; the CLI's startup imports this module
            from .timing import install_notebook_hooks

            install_notebook_hooks(os.environ["VLNB_RUN_DIR"])
        return cls(stem, set(namespace) | {"run"})

    def params(self, namespace: Mapping[str, Any]) -> NotebookParams:
        """Call after the parameters (and papermill's injected) cell: validate every new name."""
        new = {
            k: v
            for k, v in namespace.items()
            if k not in self.baseline and not k.startswith("_") and k not in ("In", "Out", "get_ipython", "exit", "quit")
        }
        profile = new.pop("profile", "offline")
        self.cfg = resolve(self.stem, profile=profile, **new)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.cfg

    def params_table(self):
        """The validated parameters as a one-column table (``value``) for the page. ``out_dir`` is shown relative
        to the working directory when it lies below it, else as its last two parts (``…/runs/04_compare``; also
        when it *is* the working directory, as in a book build): the rendered book shows no absolute path of the
        machine that built it."""
        import pandas as pd  # lazy: the CLI imports this module before it needs pandas

        if self.cfg is None:
            raise RuntimeError("call run.params(globals()) first")
        shown = self.cfg.model_dump()
        if "out_dir" in shown:
            cwd = Path.cwd().resolve()
            below = self.out_dir != cwd and self.out_dir.is_relative_to(cwd)
            shown["out_dir"] = str(self.out_dir.relative_to(cwd) if below else Path("…", *self.out_dir.parts[-2:]))
        return pd.Series(shown, name="value").to_frame()

    @property
    def out_dir(self) -> Path:
        base = self.cfg.out_dir if self.cfg else "."
        return Path(os.environ.get("VLNB_RUN_DIR", base)).resolve() if base == "." else Path(base).resolve()

    def path(self, name: str) -> Path:
        p = self.out_dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def save_table(self, df, name: str) -> Path:
        """Write a tidy result table as CSV into the run folder (``results/<name>.csv``)."""
        return atomic_write(self.path(f"results/{name}.csv"), lambda tmp: df.to_csv(tmp, index=False))

    def save_json(self, obj, name: str) -> Path:
        return atomic_write_text(self.path(f"results/{name}.json"), json.dumps(obj, indent=2, default=str))

    def savefig(self, fig, name: str) -> None:
        """Write ``figures/<name>.png`` into the run folder. Returns None, so that a ``run.savefig(...)`` ending a
        cell adds no ``PosixPath(...)`` to the page; the notebook shows the figure itself, once."""
        from .timing import timed  # lazy: timing imports pandas; the CLI's startup imports this module

        p = self.path(f"figures/{name}.png")
        with timed("plotting"):
            atomic_write(p, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))

    def link(self, relpath: str, text: str | None = None) -> str:
        """An HTML link to a file of this run folder, from the page that shows the notebook: relative to the
        executed notebook (it lies in the run folder), or under ``$VLNB_LINK_BASE`` in a book build, which
        copies each run's ``results/`` and ``figures/`` next to the HTML (:func:`vlnb.runs.build_book`)."""
        href = os.environ.get("VLNB_LINK_BASE", "") + relpath
        return f'<a href="{html.escape(href)}" download>{html.escape(text or relpath)}</a>'

    def preview(self, df, name: str, top: int = 15, sort_by: str | list[str] | None = None, ascending: bool = False,
                index: bool = False, columns: list[str] | None = None):
        """Save ``df`` as ``results/<name>.csv`` and return what a page should show of it: the first ``top`` rows
        (after sorting by ``sort_by``), only ``columns`` when given (the CSV keeps them all, so a wide table still
        fits the page), and a link to the full CSV. A short table is shown whole, with its link."""
        from IPython.display import HTML  # lazy: IPython is slow to import; only a notebook shows HTML

        self.save_table(df.reset_index() if index else df, name)
        shown = df.sort_values(sort_by, ascending=ascending) if sort_by is not None else df
        n = len(df)
        head = shown.head(top)
        if columns is not None:
            head = head[list(columns)]
        if n > top:
            what = f"the first {len(head)} of {n} rows" + (f" by {sort_by}" if sort_by is not None else "")
        else:
            what = f"all {n} rows"
        table = head.to_html(index=index, float_format=lambda x: f"{x:.3g}", classes="dataframe", border=0)
        return HTML(f"{table}<p><small>Showing {what}; full table: {self.link(f'results/{name}.csv')}</small></p>")

    def downloads(self):
        """Links to every table (``results/*.csv``) and figure (``figures/*.png``) this run wrote (chapter ends)."""
        from IPython.display import HTML  # lazy: IPython is slow to import; only a notebook shows HTML

        parts = []
        for folder, what in (("results", "Tables (CSV)"), ("figures", "Figures (PNG)")):
            files = sorted((self.out_dir / folder).glob("*.csv" if folder == "results" else "*.png"))
            if files:
                parts.append(f"<p><b>{what}:</b> " + " · ".join(self.link(f"{folder}/{f.name}", f.name) for f in files)
                             + "</p>")
        return HTML("".join(parts) or "<p>This run wrote no tables or figures.</p>")

    def glue(self, name: str, value, display: bool = False) -> None:
        """Publish a value for the prose (myst-nb ``{glue}``); numbers in text come from the run. Returns None,
        so that a cell ending with a glue shows no stray ``'0.2'`` on the page.

        It writes the output that ``myst_nb.glue`` writes (the value's display data, its MIME types under
        :data:`GLUE_PREFIX`, the name in ``scrapbook`` metadata: ``tests/test_hygiene.py`` compares the two)
        without importing ``myst_nb.ext.glue``: that module imports nbformat's validator, whose jsonschema
        loads ``rfc3987_syntax``, about 2 s of every chapter's kernel. Without myst-nb installed (plain
        Jupyter, no book tools) nothing is published; ``display=True`` prints the value instead."""
        if importlib.util.find_spec("myst_nb") is None:
            if display:
                print(f"{name} = {value}")
            return
        from IPython.core.formatters import format_display_data  # lazy: IPython is slow to import
        from IPython.display import display as ipy_display  # lazy: as above

        bundle, metadata = format_display_data(value)
        prefix = "" if display else GLUE_PREFIX
        metadata["scrapbook"] = {"name": name, "mime_prefix": prefix}
        ipy_display({prefix + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)
