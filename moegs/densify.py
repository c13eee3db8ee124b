"""3DGS adaptive density control (clone / split / prune / opacity reset), gsplat-style.

The strategy object (:class:`DensifyConfig`) holds only hyper-parameters; its mutable statistics
live in a plain ``state`` dict that the trainer passes in and can checkpoint. All tensor surgery
goes through :func:`duplicate_gaussians` and :func:`remove_gaussians`, which keep every
per-Gaussian tensor aligned row for row:

- ``params``: every per-Gaussian tensor of an expert, the core keys of ``moegs.gaussians`` and
  the family's own (embeddings, polynomial coefficients, keyframe tracks: anything whose first
  dim is N). Trainable ones are ``nn.Parameter``s with an optimiser under the same key; others
  are plain tensors. The dict is updated in place, so owners must read these tensors from the
  dict after a densification step, not keep aliases;
- ``optimizers``: **one optimiser per per-Gaussian key, each with exactly one param group holding
  exactly that one tensor** (gsplat's ``check_sanity`` layout); a key without an optimiser is
  frozen and only re-indexed. Any optimiser whose state
  tensors have the parameter's shape works (Adam, RAdam: ``exp_avg``/``exp_avg_sq``; the scalar
  ``step`` is left alone). Non-per-Gaussian trainables (MLPs, HexPlanes) must stay out of both
  dicts, in their own optimisers, because every entry here is indexed per Gaussian;
- ``state``: the densification statistics (every tensor with N rows).

Rows kept keep their values and optimiser moments; new rows copy their parent's values and start
with zero moments and zero statistics (they have not been optimised or observed yet), as in 3DGS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moegs.config import bounded, check_config
from moegs.errors import InputError
from moegs.gaussians import quat_to_rotmat

Optimizers = Mapping[str, torch.optim.Optimizer]
TensorDict = MutableMapping[str, Tensor]


@dataclass
class DensifyConfig:
    """Hyper-parameters of 3DGS adaptive density control; the methods are the strategy hooks.

    ``step`` follows 3DGS's iteration counter: the number of optimiser steps taken so far, starting
    at 1, so the default schedule densifies at 600, 700, ..., 14900 and resets opacity at 3000, 6000, ...

    ``grad_threshold`` is in 3DGS's normalised units: the INRIA rasteriser's mean2D gradient is
    effectively with respect to NDC, so :meth:`accumulate` converts our pixel-space gradient by
    multiplying its x part by W/2 and its y part by H/2 before taking the norm (as gsplat does).
    """

    grad_threshold: float = bounded(2e-4, gt=0.0)
    """Mean normalised screen-space gradient norm above which a Gaussian is cloned or split."""
    percent_dense: float = bounded(0.01, gt=0.0)
    """Gaussians with max scale <= percent_dense * scene_extent are cloned, larger ones split."""
    start: int = bounded(500, ge=0)
    """Densify only at steps > start."""
    stop: int = bounded(15000, ge=0)
    """Densify (grow and prune) and reset opacity only at steps < stop."""
    grow_stop: int | None = bounded(None, ge=0)
    """Clone and split only at steps < grow_stop (None: until ``stop``); pruning and the opacity reset
    go on until ``stop``. STG clones during its first few densifications only (600-1100 of 25k on N3V)
    and keeps pruning until 7000."""
    every: int = bounded(100, ge=1)
    """Densify every this many steps."""
    opacity_reset_every: int = bounded(3000, ge=1)
    """Reset opacities every this many steps; also when the size-based pruning switches on."""
    min_opacity: float = bounded(0.005, ge=0.0, lt=1.0)
    """Prune Gaussians whose opacity is below this."""
    max_screen_size: float = bounded(20.0, gt=0.0)
    """After the first opacity reset, prune Gaussians whose max 2D radius (px) exceeded this."""
    prune_scale3d: float = bounded(0.1, gt=0.0)
    """After the first opacity reset, prune Gaussians whose max scale > prune_scale3d * scene_extent."""
    n_split: int = bounded(2, ge=2)
    """Samples drawn per split Gaussian; their scales are divided by 0.8 * n_split (1.6 for 2)."""
    max_gaussians: int = bounded(10_000_000, ge=1)
    """Growth never passes this many Gaussians: near it only the largest gradients clone or split;
    at it none do (pruning and resets go on)."""

    def __post_init__(self) -> None:
        check_config(self)

    def _within_budget(self, grads: Tensor, high: Tensor, small: Tensor, n: int) -> Tensor:
        """``high`` [N] keeping only the largest gradients whose copies (1 per clone, n_split - 1 per
        split) fit below ``max_gaussians``: one step near the cap could otherwise double the count."""
        added = torch.where(small, 1, self.n_split - 1)
        room = self.max_gaussians - n
        if int(added[high].sum()) <= room:
            return high
        order = torch.argsort(torch.where(high, grads, -1.0), descending=True, stable=True)
        fits = (torch.cumsum(added[order], 0) <= room) & high[order]
        keep = torch.zeros_like(high)
        keep[order[fits]] = True
        return keep

    def init_state(self, n: int, device: str | torch.device = "cpu") -> dict[str, Tensor]:
        """Fresh statistics for ``n`` Gaussians: summed gradient norms, visit counts, max radii (px)."""
        return {
            "grad2d": torch.zeros(n, device=device),
            "count": torch.zeros(n, device=device),
            "max_radii": torch.zeros(n, device=device),
        }

    def accumulate(
        self, state: dict[str, Tensor], means2d_grad: Tensor | None, radii: Tensor, width: int, height: int
    ) -> None:
        """Add one view's screen-space gradients [N, 2] (pixel units) for visible Gaussians (radii > 0).

        Call once per rendered view; with batched views this sums per-view norms like 3DGS.
        """
        if means2d_grad is None:
            raise InputError("means2d has no gradient: render with retain_means2d_grad=True and call backward first")
        n = state["grad2d"].shape[0]
        if means2d_grad.shape != (n, 2) or radii.shape != (n,):
            raise InputError(
                f"expected means2d_grad [{n}, 2] and radii [{n}], "
                f"got {tuple(means2d_grad.shape)} and {tuple(radii.shape)}"
            )
        visible = radii > 0
        scale = torch.tensor([width / 2.0, height / 2.0], device=means2d_grad.device, dtype=means2d_grad.dtype)
        norms = (means2d_grad.detach() * scale).norm(dim=-1).to(state["grad2d"].dtype)
        state["grad2d"] += torch.where(visible, norms, torch.zeros_like(norms))
        state["count"] += visible.to(state["count"].dtype)
        seen_radii = torch.where(visible, radii, 0).to(state["max_radii"].dtype)
        state["max_radii"] = torch.maximum(state["max_radii"], seen_radii)

    def densify_step(
        self,
        params: TensorDict,
        optimizers: Optimizers,
        state: dict[str, Tensor],
        step: int,
        scene_extent: float,
        generator: torch.Generator | None = None,
    ) -> dict[str, int | bool]:
        """Run the 3DGS densification due at ``step`` (call after the optimiser step); a no-op otherwise.

        Order as in 3DGS: clone, split (clones are never split: their statistics are zero), prune
        (low opacity; after the first opacity reset also too large on screen or in world space),
        zero the statistics; then the opacity reset if due. Growth stops at ``max_gaussians`` (near
        it the largest gradients go first) and from ``grow_stop`` on; pruning and the opacity reset go on.
        Returns counts for logging.
        """
        check_sanity(params, optimizers, state)
        n_before = params["means"].shape[0]
        stats: dict[str, int | bool] = dict(n_before=n_before, cloned=0, split=0, pruned=0, opacity_reset=False)
        if step < self.stop and step > self.start and step % self.every == 0:
            clone_idx = torch.zeros(0, dtype=torch.long)
            split_mask = torch.zeros(n_before, dtype=torch.bool)
            if n_before < self.max_gaussians and (self.grow_stop is None or step < self.grow_stop):
                grads = state["grad2d"] / state["count"].clamp_min(1.0)
                max_scale = torch.exp(params["log_scales"].detach()).amax(dim=-1)
                small = max_scale <= self.percent_dense * scene_extent
                high = self._within_budget(grads, grads >= self.grad_threshold, small, n_before)
                clone_idx = torch.nonzero(high & small).squeeze(-1)
                duplicate_gaussians(params, optimizers, clone_idx, state)
                split_mask = _pad(high & ~small, clone_idx.numel())
                split_gaussians(params, optimizers, split_mask, state, n_split=self.n_split, generator=generator)

            prune = torch.sigmoid(params["opacity_logits"].detach()) < self.min_opacity
            if step > self.opacity_reset_every:
                prune |= state["max_radii"] > self.max_screen_size
                prune |= torch.exp(params["log_scales"].detach()).amax(dim=-1) > self.prune_scale3d * scene_extent
            remove_gaussians(params, optimizers, prune, state)
            for value in state.values():
                value.zero_()
            stats.update(cloned=clone_idx.numel(), split=int(split_mask.sum()), pruned=int(prune.sum()))
        if step < self.stop and step % self.opacity_reset_every == 0:
            reset_opacity(params, optimizers, value=0.01)
            stats["opacity_reset"] = True
        stats["n_after"] = params["means"].shape[0]
        return stats


def check_sanity(
    params: TensorDict,
    optimizers: Optimizers,
    state: Mapping[str, Tensor] | None = None,
) -> None:
    """Raise InputError unless all per-Gaussian tensors have N rows and optimisers follow the layout.

    Layout: ``optimizers[key]`` has one param group holding exactly ``params[key]``; keys without
    an optimiser are allowed (frozen tensors).
    """
    n = params["means"].shape[0]
    rows = {**{f"state[{k!r}]": t for k, t in ({} if state is None else state).items()}, **params}
    wrong = {key: t.shape[0] if t.ndim else "scalar" for key, t in rows.items() if t.ndim == 0 or t.shape[0] != n}
    if wrong:
        raise InputError(f"per-Gaussian tensors must have {n} rows (like means); wrong: {wrong}")
    for key, opt in optimizers.items():
        if key not in params:
            raise InputError(f"optimizer {key!r} has no per-Gaussian tensor of that name in params")
        groups = opt.param_groups
        if len(groups) != 1 or len(groups[0]["params"]) != 1 or groups[0]["params"][0] is not params[key]:
            raise InputError(f"optimizer {key!r} must have one param group holding exactly that tensor")


def duplicate_gaussians(
    params: TensorDict,
    optimizers: Optimizers,
    idx: Tensor,
    state: dict[str, Tensor] | None = None,
    overrides: Mapping[str, Tensor] | None = None,
) -> None:
    """Append copies of rows ``idx`` to every per-Gaussian tensor, in place.

    New rows copy their parent's values except for keys in ``overrides`` ([len(idx), ...] values
    to use instead, e.g. split means); their optimiser moments and statistics start at zero.
    """
    overrides = {} if overrides is None else overrides
    idx = idx.to(params["means"].device)
    for key, value in overrides.items():
        expected = (idx.numel(), *params[key].shape[1:]) if key in params else None
        if expected is None or tuple(value.shape) != expected:
            raise InputError(f"override for {key!r} has shape {tuple(value.shape)}, expected {expected}")

    def rows(key: str, t: Tensor) -> Tensor:
        return torch.cat([t, overrides[key].to(t) if key in overrides else t[idx]])

    def zero_rows(t: Tensor) -> Tensor:
        return torch.cat([t, t.new_zeros((idx.numel(), *t.shape[1:]))])

    _update_rows(params, optimizers, state, rows, zero_rows, zero_rows)


def remove_gaussians(
    params: TensorDict,
    optimizers: Optimizers,
    mask: Tensor,
    state: dict[str, Tensor] | None = None,
) -> None:
    """Delete the rows where ``mask`` [N] is True from every per-Gaussian tensor, in place.

    Public so that the router's gate-aware pruning removes Gaussians with the same bookkeeping.
    """
    if mask.dtype != torch.bool or mask.shape != (params["means"].shape[0],):
        raise InputError(f"mask must be bool [{params['means'].shape[0]}], got {mask.dtype} {tuple(mask.shape)}")
    keep = ~mask.to(params["means"].device)

    def select(t: Tensor) -> Tensor:
        return t[keep]

    _update_rows(params, optimizers, state, lambda _key, t: select(t), select, select)


def split_gaussians(
    params: TensorDict,
    optimizers: Optimizers,
    mask: Tensor,
    state: dict[str, Tensor] | None = None,
    n_split: int = 2,
    generator: torch.Generator | None = None,
) -> None:
    """Replace each Gaussian where ``mask`` is True by ``n_split`` samples (3DGS split).

    Sample means are drawn from the parent Gaussian N(mu, R diag(s)^2 R^T); sample scales are
    s / (0.8 * n_split); every other per-Gaussian tensor is copied from the parent.
    The samples are appended at the end, then the parents removed.
    """
    idx = torch.nonzero(mask).squeeze(-1)
    if idx.numel() == 0:
        return
    with torch.no_grad():
        scales = torch.exp(params["log_scales"][idx])
        rot = quat_to_rotmat(params["quats"][idx])
        # drawn on the generator's device (the host), then moved: the same stream on every device
        eps = torch.randn((n_split, *scales.shape), generator=generator, dtype=scales.dtype).to(scales.device)
        offsets = torch.einsum("sij,ksj->ksi", rot, eps * scales)
        new_means = (params["means"][idx] + offsets).reshape(-1, 3)
        new_log_scales = torch.log(scales / (0.8 * n_split)).repeat(n_split, 1)
    overrides = {"means": new_means, "log_scales": new_log_scales}
    duplicate_gaussians(params, optimizers, idx.repeat(n_split), state, overrides=overrides)
    remove_gaussians(params, optimizers, _pad(mask, n_split * idx.numel()), state)


def reset_opacity(params: TensorDict, optimizers: Optimizers, value: float = 0.01) -> None:
    """Clamp opacities to at most ``value`` (3DGS's periodic reset) and zero their optimiser moments."""
    cap = math.log(value / (1.0 - value))
    with torch.no_grad():
        new = torch.clamp_max(params["opacity_logits"], cap)
    _replace_param(params, optimizers, "opacity_logits", new, torch.zeros_like)


def _update_rows(
    params: TensorDict,
    optimizers: Optimizers,
    state: dict[str, Tensor] | None,
    values_fn: Callable[[str, Tensor], Tensor],
    moment_fn: Callable[[Tensor], Tensor],
    state_fn: Callable[[Tensor], Tensor],
) -> None:
    """Apply one row operation to the per-Gaussian tensors, their optimiser moments and the statistics."""
    check_sanity(params, optimizers, state)
    for key in list(params):
        with torch.no_grad():
            new = values_fn(key, params[key].detach())
        _replace_param(params, optimizers, key, new, moment_fn)
    if state is not None:
        for key in list(state):
            state[key] = state_fn(state[key])


def _replace_param(
    tensors: TensorDict, optimizers: Optimizers, key: str, new: Tensor, moment_fn: Callable[[Tensor], Tensor]
) -> None:
    """Put ``new`` under ``key`` and move the optimiser state over, mapping per-element moments."""
    old = tensors[key]
    if not isinstance(old, nn.Parameter):
        tensors[key] = new
        return
    opt = optimizers.get(key)
    if opt is not None and opt.param_groups[0]["params"][0] is not old:
        raise InputError(f"optimizer {key!r} does not hold the current {key!r} tensor")
    param = nn.Parameter(new, requires_grad=old.requires_grad)
    tensors[key] = param
    if opt is None:
        return
    opt.param_groups[0]["params"][0] = param
    old_state = opt.state.pop(old, None)
    if old_state:
        opt.state[param] = {
            name: moment_fn(v) if isinstance(v, Tensor) and v.shape == old.shape else v for name, v in old_state.items()
        }


def _pad(mask: Tensor, n_new: int) -> Tensor:
    return torch.cat([mask, mask.new_zeros(n_new)])
