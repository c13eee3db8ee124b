"""Typed stage configs: dataclass defaults, then a YAML file, then dotted ``--set`` overrides.

A config file holds one section per stage (``preprocess:``, ``train_experts:``, ...), so one file
describes a whole project. Unknown sections and keys are rejected by name, never dropped; values
are parsed with a ``yaml.SafeLoader`` of YAML 1.2 numbers (no eval, no pickled objects) and checked against the field type.

Numeric limits live next to the fields they limit (:func:`bounded`) and are checked in one place,
:func:`check_config`, which a config class calls from ``__post_init__``: a config that exists is
valid, however it was made (YAML, ``--set``, a CLI option, ``dataclasses.replace`` or Python).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from moegs.errors import InputError


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 numbers: YAML 1.1 reads ``30:45`` as the base-60 integer
    1845 and ``010`` as octal 8, and leaves ``1e4`` a string. Here ``30:45`` stays a string (a frame
    range), ``010`` is 10, and ``1e4`` is a float."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"), list("-+0123456789")
)
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """Decimal unless prefixed (``0x``, ``0o``): a leading zero is not octal."""
    text = str(loader.construct_scalar(node)).replace("_", "")
    if text.lower().startswith(("0x", "0o")):
        return int(text, 0)
    return int(text, 10)


ConfigLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load_config_yaml(text: str) -> Any:
    """Parse config YAML (files and ``--set`` values) with :class:`ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass

T = TypeVar("T")

SECTIONS = ("preprocess", "train_experts", "train_router", "prune", "distill", "render", "bench", "demo", "executor")
"""Every top-level section a config file may hold (a stage that reads a new one adds it here)."""


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A dataclass field with numeric limits (``None`` values pass: optional knobs)."""
    limits = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, metadata={"limits": limits})


_LIMIT_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_LIMIT_OK = {"ge": float.__ge__, "gt": float.__gt__, "le": float.__le__, "lt": float.__lt__}


class ConfigValueError(InputError):
    """A config value outside its limits; ``key`` names the field (prefixed by :func:`build_config`)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config key {key}: {reason}")
        self.key, self.reason = key, reason


def check_config(config: Any) -> None:
    """Every number of ``config`` is finite and within its field's limits (lists element-wise)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if not math.isfinite(item):
                raise ConfigValueError(f.name, f"must be a finite number, got {item!r}")
            for rule, bound in f.metadata.get("limits", {}).items():
                if not _LIMIT_OK[rule](float(item), float(bound)):
                    raise ConfigValueError(f.name, f"must be {_LIMIT_TEXT[rule]} {bound:g}, got {item!r}")


def _read_yaml(path: Path) -> dict:
    """The whole config file, with every top-level section name checked."""
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = load_config_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config file must be a mapping of stage sections")
    for name in data:
        if name not in SECTIONS:
            close = difflib.get_close_matches(str(name), SECTIONS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InputError(f"{path}: unknown section {name!r} ({hint}known: {', '.join(SECTIONS)})")
    return data


def load_yaml_section(path: Path | None, section: str) -> dict:
    """The ``section`` mapping of a YAML config file (empty if the file has no such section)."""
    if path is None:
        return {}
    path = Path(path)
    value = _read_yaml(path).get(section, {}) or {}
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
            out[key.strip()] = load_config_yaml(raw) if raw.strip() else ""
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
    try:
        return cls(**kwargs)
    except ConfigValueError as exc:
        raise ConfigValueError(prefix + exc.key, exc.reason) from None


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
