"""Chapter 8: what we measured — the headline findings of chapters 1–7, read from their runs' tables."""

from __future__ import annotations

from ..config import NotebookParams, register


@register("08_synthesis")
class SynthesisParams(NotebookParams):
    """Where the other chapters' run folders are."""

    #: Folder holding one run folder per chapter (``01_data_prep/``, ``02_clip_training/`` …, as ``vlnb book``
    #: lays them out); None: the folder that holds this run's own folder (a book build's ``runs/``).
    runs_dir: str | None = None
