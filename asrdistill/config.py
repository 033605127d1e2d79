"""Configuration: one dataclass per component, filled from a YAML section.

A recipe config is one YAML file with a section per component, e.g.::

    features:
      num_mel_bins: 40
    train:
      epochs: 8

and each tool loads its own section into its dataclass, with ``key=value``
overrides from the command line (``train.epochs=3``, nested ``train.frames.left=10``).
Unknown sections and keys are errors, so a typo never silently falls back to a
default.

Precedence, one rule for every command (:func:`with_flags`): the YAML, then
``--set``, then a command-line flag the user actually typed. A flag left out
(None) never replaces what the YAML says.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

__all__ = [
    "SECTIONS",
    "check_integer",
    "check_number",
    "result_settings",
    "load_section",
    "role_section",
    "merge",
    "from_dict",
    "to_dict",
    "parse_overrides",
    "read_yaml",
    "with_flags",
]

T = TypeVar("T")

# Every top-level section a recipe config may have, with the command that reads it.
SECTIONS: dict[str, str] = {
    "recipe": "run.sh (asrdistill config-get)",
    "lexicon": "lang",
    "features": "features",
    "augment": "augment-data-dir; run.sh (augment.enabled: the optional augmentation stage)",
    "mono": "mono",
    "align": "mono, align",
    "tree": "tri",
    "tri": "tri",
    "lm": "lm",
    "graph": "graph",
    "decode": "evaluate, bundle",
    "evaluate": "evaluate, bundle (its method)",
    "train": "train, ensemble, evaluate, specialists-groups, specialists-train, specialists-eval, specialists-cache "
    "(these four: train.frames)",
    "ensemble": "ensemble",
    "student": "train --role student",
    "fraction": "train --role fraction",
    "executor": "every command with worker processes (asrdistill.parallel: local pool or Dask)",
    "compression": "recipes/librispeech/compression.sh (asrdistill config-get; if enabled)",
    "specialists": "specialists-groups, specialists-train, specialists-eval, specialists-cache, evaluate (how a "
    "specialists folder combines: top_classes and combine_steps); run.sh stage 11 (if enabled)",
}


def check_number(name: str, value: object, low: float = 0.0, strict: bool = True) -> None:
    """``value`` must be a finite number above ``low`` (``>= low`` unless ``strict``; never a boolean); else a
    ``ValueError`` naming the key and the allowed range. For the checks in the config dataclasses' ``__post_init__``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        ok = False
    else:
        ok = value > low if strict else value >= low
    if not ok:
        wanted = (
            "a positive finite number" if strict and low == 0 else f"a finite number {'>' if strict else '>='} {low:g}"
        )
        raise ValueError(f"{name} must be {wanted}, got {value!r}")


def check_integer(name: str, value: object, low: int) -> None:
    """``value`` must be an integer ``>= low`` (not a boolean, not a float); else a ``ValueError`` naming the key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_section(name: str, where: str) -> None:
    if name not in SECTIONS:
        raise ValueError(f"{where}: unknown section {name!r}; known: {sorted(SECTIONS)}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read config: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level of a config must be a mapping, got {type(data).__name__}")
    if not data:
        logging.getLogger(__name__).warning("%s: the config is empty; every section takes its defaults", path)
    for name in data:
        _check_section(str(name), str(path))
    return data


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert YAML/CLI values to the annotated field type (nested dataclasses too)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping for {tp.__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple, Sequence):
        (inner, *_) = typing.get_args(tp) or (Any,)
        seq = [_coerce(v, inner, where) for v in value]
        return tuple(seq) if origin is tuple else seq
    if tp is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: not a boolean: {value!r}")
    if tp in (int, float) and (
        isinstance(value, bool) or tp is int and isinstance(value, float) and not value.is_integer()
    ):
        raise ValueError(f"{where}: expected {'an integer' if tp is int else 'a number'}, got {value!r}")
    if tp is bool and not isinstance(value, bool):
        raise ValueError(f"{where}: expected a boolean (true or false), got {value!r}")
    if tp in (int, float, str, Path) and value is not None:
        try:
            return tp(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: cannot convert {value!r} to {tp.__name__}") from e
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ``ValueError``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:  # a dataclass's own check (__post_init__) names the key; this adds where
        raise ValueError(f"{where}: {e}") from e


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data view of a config dataclass (Paths as strings), for JSON/YAML and checkpoints."""

    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in dataclasses.asdict(obj).items()}


# where a stage runs and with how many processes: not part of what it computes
_RUNTIME_FIELDS = ("nj", "device")


def result_settings(obj: Any) -> dict[str, Any]:
    """:func:`to_dict` less the runtime fields (``nj``, ``device``): what a done marker's identity records."""
    return {k: v for k, v in to_dict(obj).items() if k not in _RUNTIME_FIELDS}


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["train.epochs=3", "train.frames.left=10"]`` -> ``{"train": {"epochs": 3, "frames": {"left": 10}}}``.

    Values are parsed as YAML so ``3`` is an int and ``[1, 2]`` a list; dotted
    keys reach nested sections.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        path = key.split(".")
        if not sep or len(path) < 2 or not all(path):
            raise ValueError(f"override {item!r} must look like section.key=value")
        _check_section(path[0], f"override {item!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: value is not valid YAML: {e}") from e
        for name in reversed(path[1:]):
            parsed = {name: parsed}
        out[path[0]] = merge(out.get(path[0], {}), parsed)
    return out


def with_flags(data: dict[str, Any], flags: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (the YAML, ``--set`` applied) with the command-line flags the user typed on top.

    ``flags`` maps a field, dotted for nested ones (``distill.temperature``), to
    the flag's value; None means the flag was not typed, and then the YAML's
    value (or the dataclass default) stays: a flag's default never shadows the
    config.
    """
    typed: dict[str, Any] = {}
    for key, value in flags.items():
        if value is None:
            continue
        for name in reversed(key.split(".")):
            value = {name: value}
        typed = merge(typed, value)
    return merge(data, typed)


def load_section(
    path: str | Path | None,
    section: str,
    cls: type[T],
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> T:
    """Load ``section`` of the YAML at ``path`` into ``cls``, then ``--set`` overrides, then typed ``flags``.

    A missing file section gives the dataclass defaults; ``path=None`` too.
    """
    data: dict[str, Any] = {}
    where = section
    if path is not None:
        full = read_yaml(path)
        if not isinstance(full.get(section) or {}, dict):
            raise ValueError(f"{path}: section {section!r} must be a mapping of key: value, got {full[section]!r}")
        data = dict(full.get(section) or {})
        where = f"{path}:{section}"
    return from_dict(cls, with_flags(merge(data, parse_overrides(overrides).get(section, {})), flags or {}), where)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, nested mappings merged key by key (a role section refines ``train``)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def role_section(path: str | Path | None, base: str, role: str | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Section ``base`` of the YAML, refined by section ``role`` (e.g. ``student`` over ``train``), then overrides.

    Overrides are written against ``base`` (``train.epochs=3``) and apply to the
    merged result. Returns plain data for :func:`from_dict`.
    """
    data = read_yaml(path) if path is not None else {}
    merged = dict(data.get(base) or {})
    if role:
        _check_section(role, f"role {role!r}")
        merged = merge(merged, data.get(role) or {})
    return merge(merged, parse_overrides(overrides).get(base, {}))
