"""The mixture of experts as a library: router, blended rendering, router training, pruning,
distillation and the ``moe`` artifact format (one module each; stages only call them)."""

from moegs.moe.io import load_moe
from moegs.moe.model import MoEModel
from moegs.moe.render import FrozenExperts, MoEOutput, render_moe
from moegs.moe.router import PixelRouter

__all__ = ["FrozenExperts", "MoEModel", "MoEOutput", "PixelRouter", "load_moe", "render_moe"]
