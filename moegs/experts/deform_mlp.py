"""MLP deformation heads shared by the ``hexplane`` and ``embedding`` families.

Both 4DGaussians (Wu et al., CVPR 2024) and E-D3DGS (Bae et al., ECCV 2024) decode a feature into
per-Gaussian offsets with the same network: a trunk ``Linear(in -> W)`` followed by
``(depth - 1) x [ReLU, Linear(W -> W)]``, then one head per deformed attribute
``ReLU -> Linear(W -> W) -> ReLU -> Linear(W -> k)``. The offsets are added to the *raw*
(pre-activation) parameters, the quaternion by plain addition (4DGaussians' ``apply_rotation`` off).

Appearance over time: a head may deform the opacity logit and the DC colour coefficient ``sh0``
(both papers' N3V configurations deform opacity and SH; we deform the DC term, which carries the
colour, and keep the view-dependent bands static). :meth:`Expert.gaussians_at` colours the Gaussians
from the deformed ``sh0`` that ``deform`` returns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moegs.errors import InputError

ATTR_DIMS: dict[str, int] = {"means": 3, "log_scales": 3, "quats": 4, "opacity_logits": 1, "sh0": 3}
"""Attributes a head can deform and the size of its offset (raw-parameter names of the core)."""


def check_attrs(attrs: list[str]) -> None:
    """Reject unknown or duplicated attribute names with the allowed ones listed."""
    unknown = [a for a in attrs if a not in ATTR_DIMS]
    if unknown or len(set(attrs)) != len(attrs) or not attrs:
        raise InputError(f"deform_attrs must be distinct names from {sorted(ATTR_DIMS)}, got {attrs}")


class ScaledLinear(nn.Module):
    """A Linear layer whose effective weight is ``lr_mult * stored weight``.

    Why: the trainer drives all of ``fields`` with one Adam learning rate, but 4DGaussians trains
    its MLP 10x slower than its grids. Adam's step is invariant to the gradient scale, so storing
    ``w / m`` and using ``m * stored`` moves ``w`` by ``m`` times the optimiser's rate
    (StyleGAN's "equalised learning rate" trick). With ``lr_mult = 1`` this is a plain Linear.
    Init: Xavier-uniform weights (the official codes' ``initialize_weights``) and zero biases, so
    an untrained decoder starts near "no deformation".
    """

    def __init__(self, in_dim: int, out_dim: int, generator: torch.Generator, lr_mult: float = 1.0) -> None:
        super().__init__()
        if lr_mult <= 0.0:
            raise InputError(f"lr_mult must be > 0, got {lr_mult}")
        self.lr_mult = float(lr_mult)
        weight = torch.empty(out_dim, in_dim)
        nn.init.xavier_uniform_(weight, generator=generator)
        self.weight = nn.Parameter(weight / self.lr_mult)
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x`` [N, in]; with ``context`` [C], the input is concat(context, x_n) for every row n.

        The context's product with its weight columns is computed once instead of N times
        (E-D3DGS's temporal embedding is the same for every Gaussian).
        """
        weight, bias = self.weight * self.lr_mult, self.bias * self.lr_mult
        if context is None:
            return F.linear(x, weight, bias)
        c = context.shape[0]
        return F.linear(x, weight[:, c:], weight[:, :c] @ context + bias)


class DeformHeads(nn.Module):
    """Feature [N, in_dim] -> raw-parameter offsets ``{attr: [N, k]}`` (4DGaussians / E-D3DGS decoder).

    ``in_dim`` counts the shared context too (E-D3DGS: temporal + Gaussian embedding sizes).
    """

    def __init__(
        self,
        in_dim: int,
        width: int,
        depth: int,
        attrs: list[str],
        generator: torch.Generator,
        lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        check_attrs(attrs)
        if depth < 1 or width < 1 or in_dim < 1:
            raise InputError(f"need in_dim, width, depth >= 1, got {in_dim}, {width}, {depth}")
        layers: list[nn.Module] = [ScaledLinear(in_dim, width, generator, lr_mult)]
        for _ in range(depth - 1):
            layers += [nn.ReLU(), ScaledLinear(width, width, generator, lr_mult)]
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict(
            {
                attr: nn.Sequential(
                    nn.ReLU(),
                    ScaledLinear(width, width, generator, lr_mult),
                    nn.ReLU(),
                    ScaledLinear(width, ATTR_DIMS[attr], generator, lr_mult),
                )
                for attr in attrs
            }
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> dict[str, Tensor]:
        """Offsets for input rows concat(context, x_n) (``context`` [C] shared by all rows, optional)."""
        first, *rest = self.trunk
        hidden = first(x, context)
        for layer in rest:
            hidden = layer(hidden)
        # every head starts with the same ReLU of the trunk's output: computed once, not per head
        shared = F.relu(hidden)
        return {attr: head[1:](shared) for attr, head in self.heads.items()}


def apply_offsets(
    params: dict[str, nn.Parameter], offsets: list[dict[str, Tensor]], weights: dict[str, float]
) -> dict[str, Tensor]:
    """Raw ``means, log_scales, quats, opacity_logits, sh0`` = stored + sum of weighted offsets.

    ``weights[attr]`` scales every offset of ``attr`` (E-D3DGS's annealing; 1 for 4DGaussians); an
    attribute without offsets, or with weight 0, is returned as the stored tensor itself.
    """
    out: dict[str, Tensor] = {}
    for attr in ATTR_DIMS:
        value: Tensor = params[attr]
        w = weights.get(attr, 1.0)
        if w != 0.0:
            for d in offsets:
                if attr in d:
                    value = value + w * d[attr].reshape(value.shape)
        out[attr] = value
    return out


class StepCounter(nn.Module):
    """The number of training steps this expert has been through, saved with ``fields``.

    Why: warm-up (4DGaussians' coarse stage) and annealing (E-D3DGS) decide how much of the
    deformation a render uses, and a reloaded expert (render, router, a distillation fine-tune
    that restarts its local step at 0) has no training loop to ask. This counter travels with the
    weights; ``step_offset`` only shifts the fine-tune's learning-rate and window schedules.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._host: int | None = 0
        """The buffer's value on the host: reading a CUDA scalar every deform would make the GPU wait."""

    def update(self, step: int) -> None:
        self._host = max(self.value, int(step))
        self.steps.fill_(self._host)

    @property
    def value(self) -> int:
        if self._host is None:
            self._host = int(self.steps)
        return self._host

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 (torch's signature)
        super()._load_from_state_dict(*args, **kwargs)
        self._host = None  # the loaded buffer is read once, on the next ``value``
