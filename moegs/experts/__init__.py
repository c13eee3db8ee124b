"""Registry of expert families: name -> class, imported on first use."""

from __future__ import annotations

import importlib

from moegs.errors import InputError
from moegs.experts.base import Expert, ExpertConfig

_FAMILIES = {
    "static": "moegs.experts.static:StaticExpert",
    "hexplane": "moegs.experts.hexplane:HexPlaneExpert",
    "embedding": "moegs.experts.embedding:EmbeddingExpert",
    "polynomial": "moegs.experts.polynomial:PolynomialExpert",
    "keyframe": "moegs.experts.keyframe:KeyframeExpert",
}

DYNAMIC_FAMILIES = ("hexplane", "embedding", "polynomial", "keyframe")


def family_names() -> list[str]:
    return list(_FAMILIES)


def get_family(name: str) -> type[Expert]:
    """The expert class of family ``name``."""
    if name not in _FAMILIES:
        raise InputError(f"unknown expert family {name!r} (known: {', '.join(_FAMILIES)})")
    module, cls = _FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["DYNAMIC_FAMILIES", "Expert", "ExpertConfig", "family_names", "get_family"]
