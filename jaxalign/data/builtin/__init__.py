"""The small data sets that ship with jaxalign (see README.md here), by their ``builtin:`` name."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from jaxalign.data.errors import DataFormatError

FILES = {"builtin:prefs-mini": "prefs_mini.jsonl", "builtin:sentences-mini": "sentences_mini.txt",
         "builtin:sts-mini": "sts_mini.tsv", "builtin:nli-mini": "nli_mini.tsv",
         "builtin:harmful-mini": "harmful_mini.txt", "builtin:benign-mini": "benign_mini.txt",
         "builtin:defs-mini": "defs_mini.defs.tsv"}


def path(spec: str, what: str = "data set", suffixes: tuple[str, ...] = ("",)) -> Path:
    """The file of built-in set ``spec``, one of those whose file ends with ``suffixes`` (the
    formats the caller reads; default: any); any other name fails listing those, as a ``what``."""
    choices = [name for name, file in FILES.items() if file.endswith(suffixes)]
    if spec not in choices:
        raise DataFormatError(spec, f"unknown built-in {what}; choose from {', '.join(choices)}")
    return Path(str(resources.files(__name__).joinpath(FILES[spec])))
