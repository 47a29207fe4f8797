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

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

Profile = Literal["offline", "full"]
PROFILES = ("offline", "full")


def _positive_ks(v: list[int]) -> list[int]:
    if not v or min(v) < 1:
        raise ValueError(f"ks must be positive ints, got {v}")
    return v


#: A non-empty list of Recall@K / top-k cut-offs, each >= 1 (a parameter type the chapters share).
Ks = Annotated[list[int], AfterValidator(_positive_ks)]


class ParameterError(ValueError):
    """A notebook parameter that is unknown or has the wrong type/value; the message names it."""


class NotebookParams(BaseModel):
    """Parameters every notebook shares."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: Which named set of defaults to start from.
    profile: Profile = "offline"
    #: Where the run writes its result files (tables, figures, checkpoints).
    out_dir: str = "."
    #: Global random seed.
    seed: int = 0

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
    world_n_train: int = 2000
    world_n_test: int = 500
    world_image_size: int = 64
    #: COCO 2017 root (holds annotations/ and train2017/, val2017/); None = the shared coco-mini.
    coco_root: str | None = None
    #: Karpathy split file (dataset_coco.json); when given, the 5k test selection is used.
    coco_karpathy_split: str | None = None
    #: Hub data sets (full profile only); None skips them.
    flickr30k_source: str | None = None
    pokemon_source: str | None = None
    cifar100_source: str | None = None
    #: How many images the example grid shows.
    n_grid: int = 12

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "full": {
            "world_n_train": 20000,
            "world_n_test": 2000,
            "coco_root": "data/coco",
            "coco_karpathy_split": "data/coco/dataset_coco.json",
            "flickr30k_source": "nlphuji/flickr30k",
            "pokemon_source": "reach-vb/pokemon-blip-captions",
            "cifar100_source": "uoft-cs/cifar100",
        }
    }


def params_class(stem: str) -> type[NotebookParams]:
    stem = Path(stem).stem
    if stem not in REGISTRY:
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


def coerce_cli_value(text: str) -> Any:
    """Parse a ``-p NAME VALUE`` string the way papermill does (YAML scalars: 3, 0.5, true, null, [1, 2])."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


class NotebookRun:
    """The link between a notebook's namespace and its validated config and output folder."""

    def __init__(self, stem: str, baseline: set[str]):
        self.stem = Path(stem).stem
        self.cls = params_class(self.stem)
        self.baseline = set(baseline)
        self.cfg: NotebookParams | None = None

    @classmethod
    def start(cls, stem: str, namespace: Mapping[str, Any]) -> NotebookRun:
        """Call before the parameters cell: remembers which names already exist."""
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
        p = self.path(f"results/{name}.csv")
        df.to_csv(p, index=False)
        return p

    def save_json(self, obj, name: str) -> Path:
        p = self.path(f"results/{name}.json")
        p.write_text(json.dumps(obj, indent=2, default=str))
        return p

    def savefig(self, fig, name: str) -> Path:
        p = self.path(f"figures/{name}.png")
        fig.savefig(p, dpi=110, bbox_inches="tight")
        return p

    def glue(self, name: str, value, display: bool = False):
        """Publish a value for the prose (myst-nb ``{glue}``); numbers in text come from the run."""
        try:
            from myst_nb import glue
        except ImportError:  # plain Jupyter without the book tools: show it instead
            if display:
                print(f"{name} = {value}")
            return value
        glue(name, value, display=display)
        return value
