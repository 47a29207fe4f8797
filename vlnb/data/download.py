"""Fetch exactly the COCO files a split needs: resumable, size- and checksum-checked, with progress bars.

``vlnb prepare coco --download --root data/coco --split karpathy-test`` (or :func:`prepare_coco`) fetches:

- ``karpathy-test``: LAVIS's ``coco_karpathy_test.json`` (the 5k test split), ``annotations_trainval2014.zip``
  (captions + instances, 241 MB on the COCO download page) and ``val2014.zip`` (6 GB): every 5k-test image
  lives in val2014, so train2017 (18 GB) is not needed;
- ``karpathy-train``: LAVIS's ``coco_karpathy_train.json`` (train + restval), the 2014 annotations,
  ``train2014.zip`` (13 GB) and ``val2014.zip`` (6 GB): what the full profile's chapter-2 training reads;
- ``val2017``: ``annotations_trainval2017.zip`` (241 MB) and ``val2017.zip`` (1 GB).

(The sizes are the COCO download page's; the ones printed before a download come from the servers.)

Before anything is fetched it asks every server for the file's size (``HEAD``) and prints the total. Each file
is downloaded to ``<name>.part`` and continued with an HTTP ``Range`` request after an interruption; it only
takes its final name once complete, of the announced size and (where the source publishes one) of the
published checksum. COCO and LAVIS publish no checksums, so a zip is checked by reading it whole
(``ZipFile.testzip``: every member's CRC-32) before it is extracted; a corrupt file is an error naming it,
renamed to ``<name>.corrupt`` so the next run fetches it anew. Files already on disk are never overwritten.
``mirror`` (or ``$VLNB_COCO_MIRROR``) replaces every host by one base URL (a local mirror; the tests' server).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..progress import tqdm


class DownloadError(OSError):
    """A file that could not be fetched or is corrupt; the message names it."""


@dataclass(frozen=True)
class Remote:
    """One file of a split: where it comes from, where it goes, and how it is checked."""

    url: str
    #: folder / file it provides once in place (an archive: a path inside ``root`` after extraction)
    provides: str
    extract: bool = False
    sha256: str | None = None  #: published checksums only (never computed by us and hard-coded)
    md5: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_COCO = "http://images.cocodataset.org"
_LAVIS = "https://storage.googleapis.com/sfr-vision-language-research/datasets"
_ANN2014 = Remote(f"{_COCO}/annotations/annotations_trainval2014.zip", "annotations/captions_val2014.json", True)
SPLITS: dict[str, tuple[Remote, ...]] = {
    "karpathy-test": (
        Remote(f"{_LAVIS}/coco_karpathy_test.json", "coco_karpathy_test.json"),
        _ANN2014,
        Remote(f"{_COCO}/zips/val2014.zip", "val2014", True),
    ),
    "karpathy-train": (
        Remote(f"{_LAVIS}/coco_karpathy_train.json", "coco_karpathy_train.json"),
        _ANN2014,
        Remote(f"{_COCO}/zips/train2014.zip", "train2014", True),
        Remote(f"{_COCO}/zips/val2014.zip", "val2014", True),
    ),
    "val2017": (
        Remote(f"{_COCO}/annotations/annotations_trainval2017.zip", "annotations/captions_val2017.json", True),
        Remote(f"{_COCO}/zips/val2017.zip", "val2017", True),
    ),
}


def _url(remote: Remote, mirror: str | None) -> str:
    mirror = mirror or os.environ.get("VLNB_COCO_MIRROR")
    return f"{mirror.rstrip('/')}/{remote.filename}" if mirror else remote.url


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def remote_size(url: str, timeout: float = 30) -> int | None:
    """The server's ``Content-Length`` of ``url`` (a ``HEAD`` request), None when it does not say."""
    req = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            n = r.headers.get("Content-Length")
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: cannot reach the server ({e})") from None
    return int(n) if n is not None and n.isdigit() else None


def _check_sums(path: Path, remote: Remote) -> None:
    for algo, want in (("sha256", remote.sha256), ("md5", remote.md5)):
        if want:
            h = hashlib.new(algo)
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            if h.hexdigest() != want.lower():
                bad = path.with_name(path.name.removesuffix(".part") + ".corrupt")
                os.replace(path, bad)
                raise DownloadError(f"{remote.filename}: {algo} {h.hexdigest()} does not match the published "
                                    f"{want}; the file is corrupt (kept as {bad} for inspection; run again to "
                                    "fetch it anew)")


def fetch(url: str, dest: str | os.PathLike, remote: Remote | None = None, progress: bool = True,
          chunk: int = 1 << 20, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial ``.part`` with an HTTP Range
    request (a server that ignores Range restarts from zero). The file takes its name only when it has the
    size the server announced and matches ``remote``'s published checksums. An existing ``dest`` is kept."""
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # the .part is already complete (or longer than the file)
            resp = None
        else:
            raise DownloadError(f"{dest.name}: {url} answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{dest.name}: cannot reach {url} ({e})") from None
    total = None
    if resp is not None:
        with resp:
            if start and resp.status != 206:  # Range ignored: the body is the whole file
                start = 0
            length = resp.headers.get("Content-Length")
            total = start + int(length) if length is not None and length.isdigit() else None
            bar = None
            if progress:
                bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=dest.name, leave=False)
            try:
                with open(part, "ab" if start else "wb") as f:
                    while True:
                        try:
                            block = resp.read(chunk)
                        except (OSError, ValueError) as e:  # connection dropped: keep the .part, resume next time
                            raise DownloadError(f"{dest.name}: interrupted after {human(f.tell())} ({e}); run "
                                                "again to resume") from None
                        if not block:
                            break
                        f.write(block)
                        if bar is not None:
                            bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
    got = part.stat().st_size
    if total is not None and got != total:
        raise DownloadError(f"{dest.name}: interrupted at {human(got)} of {human(total)}; run again to resume")
    if remote is not None:
        _check_sums(part, remote)
    os.replace(part, dest)
    return dest


def _safe_members(zf: zipfile.ZipFile, archive: Path):
    for info in zf.infolist():
        name = info.filename
        if name.startswith(("/", "\\")) or ".." in Path(name).parts or ":" in name.split("/")[0]:
            raise DownloadError(f"{archive.name}: member {name!r} would be written outside the data folder; refused")
        yield info


def extract(archive: str | os.PathLike, root: str | os.PathLike, progress: bool = True) -> int:
    """Check ``archive`` (every member's CRC) and extract it into ``root``; files already there are kept.
    Returns the number of files written. A corrupt archive is a :class:`DownloadError` naming it (and renamed
    to ``.corrupt``, so the next run downloads it again)."""
    archive, root = Path(archive), Path(root)

    def corrupt(why: str):
        bad = archive.with_name(archive.name + ".corrupt")
        os.replace(archive, bad)
        return DownloadError(f"{archive.name}: corrupt archive ({why}); moved to {bad.name}, run again to re-fetch it")

    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise corrupt(str(e)) from None
    written = 0
    with zf:
        try:
            bad_member = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise corrupt(str(e)) from None
        if bad_member is not None:
            raise corrupt(f"CRC mismatch in {bad_member}")
        members = list(_safe_members(zf, archive))
        if progress:
            members = tqdm(members, desc=f"extracting {archive.name}", leave=False)
        for info in members:
            target = root / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            with zf.open(info) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, target)
            written += 1
    return written


def plan(split: str, root: str | os.PathLike) -> list[Remote]:
    """The files of ``split`` not yet in place under ``root`` (what :func:`prepare_coco` would fetch)."""
    if split not in SPLITS:
        raise ValueError(f"unknown COCO download split {split!r}; choose one of {', '.join(SPLITS)}")
    root = Path(root)
    return [r for r in SPLITS[split] if not (root / r.provides).exists()]


def prepare_coco(root: str | os.PathLike = "data/coco", split: str = "karpathy-test", mirror: str | None = None,
                 progress: bool = True, keep_archives: bool = False, log=print) -> dict:
    """Fetch what COCO split ``split`` needs into ``root`` (see the module docstring); returns
    ``{"root", "karpathy_split", "folders", "fetched_bytes"}`` (``karpathy_split`` None for ``val2017``).

    Says how much it will fetch (sizes from the servers) before it starts. Archives are deleted after a
    checked extraction unless ``keep_archives``; an interrupted run resumes where it stopped.
    """
    root = Path(root)
    todo = plan(split, root)
    sizes = []
    for r in todo:
        part = root / (r.filename + ".part")
        have = part.stat().st_size if part.exists() else 0
        done = (root / r.filename).exists()
        n = 0 if done else remote_size(_url(r, mirror))
        sizes.append((r, n, have))
    known = sum(n for _, n, _ in sizes if n)
    have = sum(h for _, n, h in sizes if n)
    if todo:
        log(f"COCO {split}: {len(todo)} file(s) to fetch into {root}: "
            + ", ".join(f"{r.filename} ({human(n) if n else 'size unknown'})" for r, n, _ in sizes)
            + f"; {human(known - have)} to download" + (f" ({human(have)} already partly there)" if have else ""))
    else:
        log(f"COCO {split}: everything is already in {root}")
    t0, fetched = time.perf_counter(), 0
    for r, _, _ in sizes:
        path = fetch(_url(r, mirror), root / r.filename, r, progress=progress)
        fetched += path.stat().st_size
        if r.extract:
            n = extract(path, root, progress=progress)
            if not (root / r.provides).exists():
                raise DownloadError(f"{r.filename}: extracted {n} file(s) but {r.provides} is not among them")
            if not keep_archives:
                path.unlink()
    if todo:
        log(f"COCO {split}: done in {time.perf_counter() - t0:.0f} s")
    ks = next((r.provides for r in SPLITS[split] if r.provides.startswith("coco_karpathy_")), None)
    folders = sorted({r.provides for r in SPLITS[split] if r.extract and "/" not in r.provides})
    return {"root": str(root), "karpathy_split": str(root / ks) if ks else None, "folders": folders,
            "fetched_bytes": fetched}


__all__ = ["SPLITS", "DownloadError", "Remote", "extract", "fetch", "plan", "prepare_coco", "remote_size"]
