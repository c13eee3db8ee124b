"""Expose a screen-space gradient that an external rasteriser keeps inside its own tensors.

gsplat keeps means2d in a batched [K, 1, N, 2] tensor and the Inria rasteriser takes a dummy [N, 3]
tensor in NDC units; our API promises per-set [N, 2] pixel-space tensors whose ``.grad`` is filled
after backward. A hook on the external tensor forwards (a slice of) its gradient to such a tensor.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def grad_sink(values: Tensor, source: Tensor, pick: Callable[[Tensor], Tensor]) -> Tensor:
    """A leaf copy of ``values`` whose ``.grad`` accumulates ``pick(grad of source)`` on backward."""
    sink = values.detach().clone().requires_grad_(True)

    def forward_grad(grad: Tensor) -> None:
        part = pick(grad).detach()
        sink.grad = part.clone() if sink.grad is None else sink.grad + part

    source.register_hook(forward_grad)
    return sink
