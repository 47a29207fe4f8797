"""Where things live: the repository, the shared offline data, caches and run folders.

Every location can be overridden by an environment variable so that Colab, CI and a laptop
can all run the same notebooks:

- ``VLNB_SHARED_DATA``: the offline data folder (default: ``<repo>/../shared/data``).
- ``VLNB_CACHE``: feature/manifests cache (default: ``<repo>/.cache/vlnb`` or ``~/.cache/vlnb``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def shared_data_dir(required: bool = False) -> Path:
    """The folder holding the real offline data (coco-mini, CIFAR-100 partial, CLIP tokenizer...)."""
    env = os.environ.get("VLNB_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared" / "data", REPO_ROOT / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    if required:
        raise FileNotFoundError(
            "vlnb could not find the shared offline data folder. Looked in: "
            + ", ".join(str(c) for c in candidates)
            + ". Set VLNB_SHARED_DATA to the folder that holds coco-mini/ and cifar100-test-partial/."
        )
    return candidates[0] if candidates else REPO_ROOT.parent / "shared" / "data"


def cache_dir() -> Path:
    env = os.environ.get("VLNB_CACHE")
    if env:
        p = Path(env)
    elif os.access(REPO_ROOT, os.W_OK):
        p = REPO_ROOT / ".cache" / "vlnb"
    else:
        p = Path.home() / ".cache" / "vlnb"
    p.mkdir(parents=True, exist_ok=True)
    return p


def notebooks_dir() -> Path:
    return REPO_ROOT / "notebooks"


# ------------------------------------------------------------------------------ safe file writes
def temp_name(path: str | os.PathLike) -> Path:
    """A unique temporary name beside ``path`` (``.<name>.tmp-<pid>-<random>``): two writers never share one."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def sidecar_digest(meta: dict) -> str:
    """Checksum of a cache sidecar's content except the checksum itself (``meta_sha256``): the feature and
    pixel caches store it so that a changed id list or shape is detected, not only a changed array."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def load_sidecar_entry(payload: str | os.PathLike, sidecar: str | os.PathLike, key: str, fmt: object,
                       read: Callable[[Path, dict], T], what: str, stacklevel: int = 1) -> tuple[T, dict] | None:
    """A cache entry whose JSON ``sidecar`` carries its own checksum (:func:`sidecar_digest`), as
    ``(read(payload, meta), meta)``; None when there is no sidecar.

    The sidecar must be JSON of this ``key`` and format ``fmt`` and unchanged since it was written; ``read``
    loads the payload and raises when it does not match ``meta`` (shape, checksum). Anything wrong -- corrupt,
    truncated, garbage, half-written, edited -- gives a warning naming the ``what`` cache entry and None, so the
    caller recomputes and never crashes. ``stacklevel`` as :func:`warnings.warn`'s, counted from the caller.
    """
    payload, sidecar = Path(payload), Path(sidecar)
    if not sidecar.exists():
        return None
    try:
        meta = json.loads(sidecar.read_text())
        if meta.get("key") != key or meta.get("format") != fmt:
            raise ValueError("sidecar key/format does not match")
        if meta.get("meta_sha256") != sidecar_digest(meta):
            raise ValueError("sidecar checksum mismatch (its image ids or metadata were changed)")
        return read(payload, meta), meta
    except Exception as e:  # noqa: BLE001 -- corrupt, truncated, garbage, half-written: recompute, never crash
        warnings.warn(f"{what} cache entry {payload.name} is unusable ({type(e).__name__}: {e}); recomputing",
                      stacklevel=stacklevel + 1)
        return None


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` on a unique temporary file beside ``path``, then :func:`os.replace` it into place.

    A crash or a concurrent writer never leaves a half-written ``path``; the temporary file is removed on error.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(p)
    try:
        write(tmp)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda t: Path(t).write_text(text))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temp(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove temporary files a killed writer left in ``folder`` (``.<name>.tmp-<pid>[-<random>]`` whose
    process is gone; ``name`` limits it to one file's). Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    pattern = re.compile(r"^\.(?P<name>.+)\.tmp-?(?P<pid>\d+)(-[0-9a-f]+)?$")
    for f in folder.iterdir():
        m = pattern.match(f.name)
        if not m or (name is not None and m.group("name") != name) or not f.is_file():
            continue
        if not _pid_alive(int(m.group("pid"))):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed
