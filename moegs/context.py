"""Where tensors live and which rasteriser draws them, decided once per stage.

``resolve_context(device, backend)`` turns the ``--device`` and ``--backend`` options into a
:class:`RenderContext`; everything that makes a tensor (experts, router, rays, view matrices,
backgrounds, ground-truth frames, teacher targets) takes its device from it, so a stage never
mixes CPU and CUDA tensors and never discovers a bad pairing half-way through training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from moegs.errors import InputError
from moegs.raster.api import BACKENDS, resolve_backend

CPU_ONLY_BACKENDS = ("cpu",)
"""Backends that run on the host only (the numba kernels)."""
CUDA_ONLY_BACKENDS = ("gsplat", "inria")


@dataclass(frozen=True)
class RenderContext:
    """A device, a rasteriser backend that can draw tensors on it, and the working float dtype."""

    device: torch.device
    backend: str
    dtype: torch.dtype = torch.float32

    def tensor(self, data: Tensor | np.ndarray | list | float) -> Tensor:
        """``data`` as a tensor of this context (floating data in ``dtype``; integers keep theirs)."""
        value = torch.as_tensor(data)
        dtype = self.dtype if value.is_floating_point() else value.dtype
        return value.to(device=self.device, dtype=dtype)

    def describe(self) -> dict[str, str]:
        """What manifests record about where a stage ran."""
        return {"device": str(self.device), "backend": self.backend}


CPU = RenderContext(torch.device("cpu"), "cpu")
"""The context of the CPU build: host tensors, native CPU rasteriser."""


def resolve_context(device: str = "auto", backend: str = "auto") -> RenderContext:
    """The context for ``--device auto|cpu|cuda[:N]`` and ``--backend auto|cpu|torch|gsplat|inria``.

    auto/auto is CUDA + gsplat when both exist, else CPU + cpu. A named device with backend auto
    picks gsplat (CUDA, if it imports) or cpu; a named backend with device auto picks the device
    it runs on. An impossible pair raises :class:`InputError` naming the reason.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise InputError(f"unknown rasteriser backend '{backend}'; choose one of auto, {', '.join(BACKENDS)}")
    if device == "auto":
        if backend == "auto":
            name = resolve_backend("auto")
            return RenderContext(_cuda_device("cuda") if name in CUDA_ONLY_BACKENDS else torch.device("cpu"), name)
        if backend in CUDA_ONLY_BACKENDS:
            resolve_backend(backend)  # MissingDependencyError with the install hint when it cannot run here
        on_cuda = backend in CUDA_ONLY_BACKENDS or (backend == "torch" and torch.cuda.is_available())
        return _checked(_cuda_device("cuda") if on_cuda else torch.device("cpu"), backend)
    return _checked(_parse_device(device), backend)


def _checked(dev: torch.device, backend: str) -> RenderContext:
    if backend == "auto":
        backend = "cpu" if dev.type == "cpu" else ("gsplat" if resolve_backend("auto") == "gsplat" else "torch")
    if dev.type == "cpu" and backend in CUDA_ONLY_BACKENDS:
        raise InputError(f"--device cpu cannot use --backend {backend}: it draws CUDA tensors only (use cpu or torch)")
    if dev.type == "cuda" and backend in CPU_ONLY_BACKENDS:
        raise InputError(f"--device {dev} cannot use --backend {backend}: it draws host tensors only (use gsplat or torch)")
    return RenderContext(dev, resolve_backend(backend))


def _parse_device(device: str) -> torch.device:
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        return _cuda_device(device)
    raise InputError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N")


def _cuda_device(device: str) -> torch.device:
    """A CUDA device with an explicit index (torch sees it), else InputError."""
    if not torch.cuda.is_available():
        raise InputError(f"--device {device}: torch sees no CUDA device (this torch build: {torch.__version__}); use --device cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N") from None
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if not 0 <= index < torch.cuda.device_count():
        raise InputError(f"--device {device}: no such CUDA device (torch sees {torch.cuda.device_count()})")
    return torch.device("cuda", index)
