"""Errors that mean "bad input", each with a message that names the file, entry and field at fault.

The ``vlnb`` command line turns these (and :class:`vlnb.runs.RunError`,
:class:`vlnb.data.manifest.ManifestError`, missing files, refused paths) into one ``error: ...`` line and exit
code 2; anything else is a bug: a short message and the traceback in a log file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class DataError(ValueError):
    """A data file vlnb cannot use (malformed JSON, an entry missing a field, a wrong type, unknown reference).

    The message reads ``<file>: <entry>: <field> ...``.
    """

    def __init__(self, path: str | os.PathLike, entry: str | None, message: str):
        self.path, self.entry = str(path), entry
        super().__init__(f"{path}: {entry}: {message}" if entry else f"{path}: {message}")


class ParameterError(ValueError):
    """A notebook parameter (or an environment setting) that is unknown or has the wrong type/value; the
    message names it. Raised by :mod:`vlnb.config` when a chapter's parameters are validated."""


class ArtifactError(ValueError):
    """A saved artifact (weights, config, tokenizer, history) that is damaged; the message names the file
    and how to recover."""


def read_json_artifact(path, what: str = "JSON file", hint: str = "") -> object:
    """``json.loads`` of a saved artifact; a missing/garbage file raises :class:`ArtifactError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: {what} is missing{'; ' + hint if hint else ''}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"{path}: damaged {what} ({type(e).__name__}: {e}){'; ' + hint if hint else ''}") from None


def load_safetensors_artifact(path, hint: str = "") -> dict:
    """``safetensors.torch.load_file`` of a saved artifact; a missing, truncated or garbage file raises
    :class:`ArtifactError` naming it (safetensors' own error does not)."""
    # lazy: the CLI's startup imports this module; safetensors.torch imports torch
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: weights file is missing{'; ' + hint if hint else ''}")
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 -- SafetensorError, OSError, ...: all mean a damaged file
        raise ArtifactError(f"{path}: damaged safetensors file ({type(e).__name__}: {e})"
                            f"{'; ' + hint if hint else ''}") from None
