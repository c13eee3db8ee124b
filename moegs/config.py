"""Typed stage configs: dataclass defaults, then a YAML file, then dotted ``--set`` overrides.

A config file holds one section per stage (``preprocess:``, ``train_experts:``, ...), so one file
describes a whole project. Unknown keys are rejected with the key named, never dropped; values
are parsed with ``yaml.safe_load`` (no eval, no pickled objects) and checked against the field type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from moegs.errors import InputError

T = TypeVar("T")


def load_yaml_section(path: Path | None, section: str) -> dict:
    """The ``section`` mapping of a YAML config file (empty if the file has no such section)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config file must be a mapping of stage sections")
    value = data.get(section, {}) or {}
    if not isinstance(value, dict):
        raise InputError(f"{path}: section {section!r} must be a mapping")
    return value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.iterations=2000", "lr=0.1"]`` -> ``{"train.iterations": 2000, "lr": 0.1}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: expected KEY=VALUE (e.g. --set iterations=2000)")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def _unflatten(flat: dict[str, Any]) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {key}: {part} is not a section")
        node[parts[-1]] = value
    return nested


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0] if errors else f"config key {key}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise InputError(f"config key {key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config key {key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, key) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"config key {key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"config key {key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"config key {key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 8e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"config key {key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise InputError(f"config key {key}: expected a string, got {value!r}")
        return value
    return value


def build_config(cls: type[T], values: dict, prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from nested ``values``, rejecting unknown keys by name."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        names = ", ".join(prefix + k for k in unknown)
        raise InputError(f"unknown config key {names} (known: {', '.join(prefix + k for k in fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name not in values:
            continue
        annotation = hints[name]
        value = values[name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise InputError(f"config key {prefix}{name}: expected a section, got {value!r}")
            base = dataclasses.asdict(getattr(cls(), name)) if _has_defaults(cls) else {}
            kwargs[name] = build_config(annotation, _deep_merge(base, value), prefix + name + ".")
        else:
            kwargs[name] = _coerce(value, annotation, prefix + name)
    return cls(**kwargs)


def _has_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def resolve_config(
    cls: type[T],
    config_file: Path | None,
    section: str,
    overrides: list[str] | None = None,
    explicit: dict[str, Any] | None = None,
) -> T:
    """Defaults < YAML section < ``--set`` overrides < explicit command-line options (``None`` = not given)."""
    values = load_yaml_section(config_file, section)
    values = _deep_merge(values, _unflatten(parse_overrides(overrides or [])))
    values = _deep_merge(values, _unflatten({k: v for k, v in (explicit or {}).items() if v is not None}))
    return build_config(cls, values)


def to_dict(config: Any) -> dict:
    """Plain-JSON view of a config dataclass (what goes into manifests and ids)."""
    return dataclasses.asdict(config)
