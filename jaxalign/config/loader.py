"""Typed configuration: dataclasses loaded from YAML recipes with ``key=value`` overrides.

A recipe is a YAML mapping whose sections mirror the dataclass fields; any field can be
overridden on the command line with a dotted path (``optim.lr=1e-5``,
``objective.whitening.groups=32``). Unknown sections/keys and ill-typed values are rejected
with the dotted name, the expected type and the valid choices, before anything is built.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that does not fit the typed configuration."""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str):
    """Converts YAML/CLI values to the annotated type ``tp`` (``where`` names the field)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and _variants(tp):
        return _coerce_variant(value, _variants(tp), where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be None")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (tuple, list):
        (item,) = typing.get_args(tp)[:1]
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        elif isinstance(value, (int, float)):
            value = [value]  # `data.buckets=16` on the command line parses as a scalar
        if not isinstance(value, Sequence):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return origin(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, where): _coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is typing.Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {_type_name(tp)} fields, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _variants(tp) -> dict[str, type] | None:
    """A union of dataclasses told apart by their ``name`` field (the objective configs):
    ``{name: class}``, else ``None``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if not args or not all(dataclasses.is_dataclass(a) and "name" in a.__dataclass_fields__ for a in args):
        return None
    return {a.__dataclass_fields__["name"].default: a for a in args}


def _coerce_variant(value: Any, variants: dict[str, type], where: str):
    """The variant that ``value["name"]`` names, built from the rest of ``value``; a key of
    another variant is refused naming the variants it belongs to."""
    if isinstance(value, tuple(variants.values())):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping with a name ({', '.join(variants)}), got {value!r}")
    name = value.get("name")
    if name not in variants:
        raise ConfigError(f"{where}.name: {name!r} is not one of {', '.join(map(repr, variants))}")
    cls = variants[name]
    own = {f.name for f in dataclasses.fields(cls)}
    for key in value:
        if key not in own:
            owners = [n for n, c in variants.items() if key in c.__dataclass_fields__]
            if owners:
                raise ConfigError(f"{where}.{key} is an option of {where}.name={'|'.join(owners)}, not of "
                                  f"{where}.name={name}: drop it, or set {where}.name to {' or '.join(owners)}; "
                                  f"options of {name}: {', '.join(sorted(own - {'name'}))}")
    return from_dict(cls, value, where)


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Builds dataclass ``cls`` from a (nested) mapping, rejecting unknown keys by name. A
    section of a union of named variants without a ``name`` takes the default's."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(prefix + u for u in unknown)}; "
            f"valid options{' of ' + where if where else ''}: {', '.join(fields)}"
        )
    data = dict(data)
    for k, v in data.items():
        if isinstance(v, Mapping) and "name" not in v and _variants(hints[k]):
            data[k] = {"name": _default(fields[k]).name, **v}
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def field_docs(cls) -> dict[str, str]:
    """Each field's description from the ``Attributes:`` sections of ``cls``'s docstring and its
    bases' (Google style: ``name: text``, continued on more-indented lines)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = inspect.cleandoc(klass.__dict__.get("__doc__") or "")
        if "Attributes:" not in text:
            continue
        name, indent = None, None
        for line in text.split("Attributes:", 1)[1].splitlines():
            if not line.strip():
                continue
            depth = len(line) - len(line.lstrip())
            indent = depth if indent is None else indent
            match = re.match(r"(\w+): (.*)", line.strip())
            if depth == indent and match:
                name = match[1]
                docs[name] = match[2]
            elif depth > indent and name:
                docs[name] += " " + line.strip()
            else:
                break
    return docs


def describe_options(cls, prefix: str = "") -> list[tuple[str, str | None, str]]:
    """``(dotted name, default, description)`` of every leaf option of a config dataclass. A
    union of named variants (the objectives) gives, per variant, a heading row (default
    ``None``: ``objective.name=dpo`` and the first line of its docstring) and its own options."""
    rows = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        tp = hints[f.name]
        variants = _variants(tp)
        if variants:
            rows.append((f"{name}.name", _default(f).name, f"one of {', '.join(variants)}"))
            for variant, klass in variants.items():
                summary = inspect.cleandoc(klass.__doc__ or "").split("\n\n")[0].replace("\n", " ")
                rows.append((f"{name}.name={variant}", None, summary))
                rows += [row for row in describe_options(klass, name + ".") if row[0] != f"{name}.name"]
            continue
        if dataclasses.is_dataclass(tp):
            rows += describe_options(tp, name + ".")
            continue
        default = _default(f)
        choices = typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else ()
        doc = docs.get(f.name, "")
        if choices:
            doc = f"one of {', '.join(map(str, choices))}" + (f"; {doc}" if doc else "")
        rows.append((name, "null" if default is None else str(list(default) if isinstance(default, tuple) else default),
                     doc))
    return rows


def parse_overrides(overrides: Sequence[str]) -> dict:
    """``["optim.lr=1e-5", "data.batch_size=32"]`` -> nested dict (values parsed as YAML scalars;
    a value that is no YAML, such as a prompt template with quotes and colons, stays a string)."""
    out: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=1e-5")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is set both as a value and as a section")
        node[parts[-1]] = value
    return out


def merge(base: Mapping, update: Mapping) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def load_recipe(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Reads a YAML recipe (or nothing), applies ``key=value`` overrides and validates."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such recipe file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: a recipe must be a YAML mapping of sections")
    return from_dict(cls, merge(data, parse_overrides(overrides)))
