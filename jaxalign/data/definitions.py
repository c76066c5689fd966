"""Dictionaries for definition-sentence training (``data.kind=definitions``, DefSent+).

A dictionary is a list of entries (words or phrases), each with one or more definitions;
every definition is one training example labelled with its entry's index. Two formats:

* DefSent+'s own (the official code's ``Ox+WN.csv``, github.com/ryuliuxiaodong/DefSent-Plus):
  one entry a line, ``entry <TAB> def_1 <|list_more_def|> ... <|list_more_def|> def_m``,
  UTF-8 or (as that file is) UTF-16 with a byte-order mark;
* WordNet's database files ``data.noun``, ``data.verb``, ``data.adj``, ``data.adv`` (a
  directory holding them, or one such file): a synset line is ``offset lex_filenum ss_type
  w_cnt word lex_id [word lex_id ...] p_cnt [pointers...] [frames...] | gloss``; each of its
  words (lemma, ``_`` read as a space, an adjective's ``(a)``/``(p)``/``(ip)`` marker dropped)
  is an entry taking the gloss's definition, the part before the first ``; "`` example. A
  word in several synsets (or files) is one entry with every definition.

``builtin:defs-mini`` is a small dictionary in the first format that ships with jaxalign.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from jaxalign.data import builtin
from jaxalign.data.errors import DataFormatError, decode_utf8

SEPARATOR = "<|list_more_def|>"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")


@dataclasses.dataclass(frozen=True)
class Dictionary:
    """``entries[i]`` is entry i's name; definition j is ``definitions[j]``, of entry ``labels[j]``."""

    entries: tuple[str, ...]
    definitions: tuple[str, ...]
    labels: np.ndarray  # [num_definitions] int32

    @property
    def examples(self) -> list[tuple[str, int]]:
        """(definition, entry index) training examples, in file order."""
        return list(zip(self.definitions, self.labels.tolist()))


def _text(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    return decode_utf8(data, path)


def _collect(pairs, source) -> Dictionary:
    """(entry, definition) pairs -> a Dictionary, entries numbered in order of first appearance."""
    index: dict[str, int] = {}
    definitions, labels = [], []
    for entry, definition in pairs:
        definitions.append(definition)
        labels.append(index.setdefault(entry, len(index)))
    if not definitions:
        raise DataFormatError(source, "the dictionary is empty: no entry with a definition")
    return Dictionary(tuple(index), tuple(definitions), np.asarray(labels, np.int32))


def reference_pairs(path: Path, origin) -> list[tuple[str, str]]:
    """(entry, definition) pairs of a file in DefSent+'s format (see the module docstring)."""
    pairs = []
    for number, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        entry, tab, rest = line.partition("\t")
        definitions = [d.strip() for d in rest.split(SEPARATOR) if d.strip()]
        if not entry.strip() or not tab or not definitions:
            what = "no entry before the tab" if not entry.strip() else f"entry {entry.strip()!r} has no definition"
            raise DataFormatError(origin, f"{what}; expected 'entry<TAB>definition [{SEPARATOR} definition ...]'",
                                  number)
        pairs += [(entry.strip(), d) for d in definitions]
    return pairs


def wordnet_gloss_definition(gloss: str) -> str:
    """A WordNet gloss without its examples: the part before the first ``; "``."""
    return gloss.split('; "', 1)[0].strip().rstrip(";").strip()


def wordnet_pairs(path: Path) -> list[tuple[str, str]]:
    """(lemma, definition) pairs of one WordNet ``data.*`` file; license-header lines (starting
    with two spaces) are skipped."""
    pairs = []
    for number, line in enumerate(_text(path).splitlines(), 1):
        if line.startswith("  ") or not line.strip():
            continue
        head, bar, gloss = line.partition(" | ")
        fields = head.split()
        try:
            count = int(fields[3], 16)
            words = fields[4:4 + 2 * count:2]
        except (IndexError, ValueError):
            raise DataFormatError(path, "not a WordNet synset line (offset lex_filenum ss_type w_cnt word lex_id ... "
                                        "| gloss)", number) from None
        if len(words) != count or not count:
            raise DataFormatError(path, f"the synset names {count} words but lists {len(words)}", number)
        definition = wordnet_gloss_definition(gloss) if bar else ""
        if not definition:
            raise DataFormatError(path, f"synset of {words[0]!r} has no definition (no '| gloss' part)", number)
        pairs += [(_ADJ_MARKER.sub("", w).replace("_", " "), definition) for w in words]
    return pairs


def read_definitions(spec: str, max_examples: int | None = None) -> Dictionary:
    """The dictionary at ``spec``: ``builtin:NAME``, a file in DefSent+'s format, a WordNet
    ``data.*`` file or a directory holding WordNet's four (see the module docstring).
    ``max_examples`` keeps the first n definitions (and only the entries they define)."""
    if spec.startswith("builtin:"):
        path = builtin.path(spec, "dictionary", (".defs.tsv",))
    else:
        path = Path(spec).expanduser()
    if path.is_dir():
        files = [path / name for name in WORDNET_FILES if (path / name).is_file()]
        if not files:
            raise DataFormatError(path, f"no WordNet database files ({', '.join(WORDNET_FILES)}) in this directory")
        pairs = [p for f in files for p in wordnet_pairs(f)]
    elif not path.is_file():
        raise DataFormatError(path, "no such dictionary file or directory")
    elif path.name in WORDNET_FILES:
        pairs = wordnet_pairs(path)
    else:
        pairs = reference_pairs(path, spec if spec.startswith("builtin:") else path)
    return _collect(pairs[:max_examples], spec)
