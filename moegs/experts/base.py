"""The expert interface every dynamic Gaussian family implements, on top of the shared Gaussian core.

An expert owns:

- ``params``: per-Gaussian tensors (``dict[str, nn.Parameter]``, first dim N): the core keys of
  :mod:`moegs.gaussians` plus the family's own (embeddings, polynomial coefficients, keyframes...).
  Densification resizes every one of them together, so a family never writes tensor surgery.
- ``fields``: an ``nn.Module`` of everything that is not per Gaussian (HexPlane grids, MLPs,
  temporal embeddings), optimised separately.

Given a normalised time t in [0, 1) it returns its Gaussians as a :class:`moegs.raster.GaussianSet`
(features = view-dependent colours), ready for :func:`moegs.raster.rasterize_multi`. That is all the router, pruning, distillation and rendering need.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from moegs import gaussians as core
from moegs.cameras import Camera
from moegs.config import ConfigValueError, bounded, build_config, check_config
from moegs.densify import DensifyConfig
from moegs.errors import InputError
from moegs.raster import GaussianSet
from moegs.sh import MAX_SH_DEGREE
from moegs.context import RenderContext
from moegs.renderable import Frame
from moegs.rendering import render_expert


MEAN_BACKGROUND = "mean"
"""``background`` value standing for the training views' mean colour."""


def _expert_densify() -> DensifyConfig:
    """Density control on this toolkit's short schedules (3DGS's own defaults assume 30k steps)."""
    return DensifyConfig(start=300, stop=2000, every=100, opacity_reset_every=100000, max_gaussians=60000)


@dataclass
class ExpertConfig:
    """Settings every family shares; families subclass this with their own fields."""

    iterations: int = bounded(3000, ge=1)
    sh_degree: int = bounded(1, ge=0, le=MAX_SH_DEGREE)
    sh_every: int = bounded(500, ge=0)
    """Add one SH band every this many steps (0: all bands from the start)."""
    init_opacity: float = bounded(0.1, gt=0.0, lt=1.0)
    # 3DGS learning rates (position ones are multiplied by the scene extent).
    lr_means: float = bounded(1.6e-4, ge=0.0)
    lr_means_final: float = bounded(1.6e-6, ge=0.0)
    lr_log_scales: float = bounded(5e-3, ge=0.0)
    lr_quats: float = bounded(1e-3, ge=0.0)
    lr_opacity: float = bounded(5e-2, ge=0.0)
    lr_sh0: float = bounded(2.5e-3, ge=0.0)
    lr_shN: float = bounded(2.5e-3 / 20, ge=0.0)
    lr_fields: float = bounded(1.6e-3, ge=0.0)
    lr_fields_final: float = bounded(1.6e-4, ge=0.0)
    lambda_dssim: float = bounded(0.2, ge=0.0, le=1.0)
    densify: DensifyConfig = field(default_factory=_expert_densify)
    """3DGS density control: ``densify: {start: 300, stop: 2000, max_gaussians: 60000, ...}``."""
    background: Literal["mean"] | list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0],
                                                     metadata={"limits": {"ge": 0.0, "le": 1.0}})
    """RGB the Gaussians are composited over, in training and in renders. ``mean``: the training views'
    mean colour, the least-squares guess for a pixel no Gaussian covers; train-experts resolves it
    when training starts (see :func:`resolved_background`) and the expert's config records the colour."""
    random_background: bool = False
    """Train against a random background colour each step, so an empty pixel is never right: Gaussians
    must cover every pixel opaquely (closed scenes seen by few cameras, where gaps are otherwise left
    at ``background``). Renders after training use ``background``. On the tiny surround preset
    ``background: mean`` without it held out better (see :mod:`moegs.rig_defaults`)."""
    motion_weight: float = bounded(0.0, ge=0.0)
    """Weight moving content up in the L1 term: a pixel that differs from its camera's temporal-median
    background counts ``1 + motion_weight`` times (:func:`moegs.losses.motion_weight`; 0: plain L1)."""
    seed: int = bounded(0, ge=0)
    cull_transparent: bool = False
    """Densification counts a view for a Gaussian only where its opacity there reaches the compositing
    threshold (1/255): temporal families then judge a short-lived Gaussian by the instants it
    exists at (see :func:`moegs.rendering.render_expert`). False: every view it projects into (3DGS)."""
    point_times: str = "all"
    """Initial points: ``all`` of them, or ``first``: only those of the earliest time (4DGaussians,
    E-D3DGS and Ex4DGS start from frame 0; a later frame's points on moving objects are then left
    to the motion model instead of becoming canonical copies along the path)."""

    def __post_init__(self) -> None:
        check_config(self)
        if self.point_times not in ("all", "first"):
            raise ConfigValueError("point_times", f"must be 'all' or 'first', got {self.point_times!r}")
        if self.background != MEAN_BACKGROUND and len(self.background) != 3:
            raise ConfigValueError("background", f"must be 3 numbers (RGB) or 'mean', got {len(self.background)}")


class Expert(nn.Module):
    """Base class: canonical Gaussians + a motion model. Families override the hooks marked below."""

    family: ClassVar[str] = ""
    config_class: ClassVar[type[ExpertConfig]] = ExpertConfig
    paper: ClassVar[str] = ""

    def __init__(self, config: ExpertConfig, params: dict[str, Tensor], n_frames: int, aabb: Tensor) -> None:
        super().__init__()
        if config.background == MEAN_BACKGROUND:
            raise ValueError(f"{self.family}: background 'mean' must be resolved to a colour before an expert "
                             "is built (moegs.experts.base.resolved_background)")
        self.config = config
        self.n_frames = int(n_frames)
        self.register_buffer("aabb", aabb.detach().clone().float())  # [2, 3] min/max of the initial points
        self.params: dict[str, nn.Parameter] = {k: _as_param(v) for k, v in params.items()}
        self.fields: nn.Module = self.build_fields()

    @property
    def device(self) -> torch.device:
        return self.aabb.device

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """``.to(device)`` and friends move ``params`` too (a plain dict, which nn.Module does not see);
        caches derived from them rebuild on the next use (families compare their device)."""
        super()._apply(fn, recurse)
        self.params = {k: nn.Parameter(fn(v.detach()), requires_grad=v.requires_grad) for k, v in self.params.items()}
        return self

    def placed(self, device: torch.device) -> Expert:
        """This expert on ``device`` (moved only when it is elsewhere)."""
        return self if self.device == torch.device(device) else self.to(device)

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_points(
        cls, config: ExpertConfig, xyz: np.ndarray, rgb: np.ndarray, times: np.ndarray, n_frames: int,
        moving: np.ndarray | None = None,
    ) -> Expert:
        """Initialise from triangulated points (``times`` = normalised time each point was seen at;
        ``moving``: which lie on moving content, see :func:`moegs.data.point_motion.moving_points`,
        given when :meth:`wants_moving_points` asks for it)."""
        times = np.asarray(times, dtype=np.float32).reshape(-1)
        moving = np.zeros(len(times), dtype=bool) if moving is None else np.asarray(moving, dtype=bool).reshape(-1)
        if len(moving) != len(times):
            raise InputError(f"{cls.family}: got {len(moving)} moving flags for {len(times)} points")
        if config.point_times == "first" and len(times):
            first = times == times.min()
            xyz, rgb, times, moving = xyz[first], rgb[first], times[first], moving[first]
        params = core.init_from_points(xyz, rgb, config.sh_degree, init_opacity=config.init_opacity)
        aabb = torch.tensor(np.stack([xyz.min(0), xyz.max(0)]), dtype=torch.float32)
        extra = cls.init_per_gaussian(config, params, torch.as_tensor(times), n_frames, torch.as_tensor(moving))
        return cls(config, {**params, **extra}, n_frames, aabb)

    @classmethod
    def wants_moving_points(cls, config: ExpertConfig) -> bool:
        """Family hook: whether :meth:`from_points` should be told which points lie on moving content
        (finding them reads frames, so only families that use it ask)."""
        return False

    @classmethod
    def init_per_gaussian(
        cls, config: ExpertConfig, params: dict[str, Tensor], times: Tensor, n_frames: int, moving: Tensor
    ) -> dict[str, Tensor]:
        """Family hook: extra per-Gaussian tensors (first dim N) at initialisation (``moving`` [N] bool:
        all False unless :meth:`wants_moving_points`)."""
        return {}

    def build_fields(self) -> nn.Module:
        """Family hook: the non-per-Gaussian modules (grids, MLPs, temporal tables)."""
        return nn.Module()

    # ---- evaluation ----------------------------------------------------------------------------
    def deform(self, t: float) -> dict[str, Tensor]:
        """Family hook: raw (pre-activation) ``means, log_scales, quats, opacity_logits`` at time t
        (optionally deformed ``sh0``/``shN`` colour coefficients),
        plus an optional ``opacity_factor`` [N] multiplying the activated opacity (temporal opacity)."""
        p = self.params
        return {"means": p["means"], "log_scales": p["log_scales"], "quats": p["quats"], "opacity_logits": p["opacity_logits"]}

    def gaussians_at(self, t: float, cam_center: Tensor, sh_degree: int | None = None) -> GaussianSet:
        """The deformed, activated Gaussians at normalised time ``t`` seen from ``cam_center``."""
        geometry, sh = self.deformed_at(t)
        return self.coloured(geometry, sh, cam_center, sh_degree)

    def deformed_at(self, t: float) -> tuple[GaussianSet, dict[str, Tensor]]:
        """The activated Gaussians at time ``t`` before colouring (features [N, 0]) and the SH
        coefficients (``sh0``, ``shN``) the family deforms at that time (none for most): what a cache
        of a frozen expert keeps, so that it can colour the same instant for any view."""
        raw = self.deform(float(t))
        opacities = torch.sigmoid(raw["opacity_logits"])
        if "opacity_factor" in raw:
            opacities = opacities * raw["opacity_factor"]
        geometry = GaussianSet(
            means=raw["means"],
            quats=core.normalize_quats(raw["quats"]),
            scales=torch.exp(raw["log_scales"]),
            opacities=opacities,
            features=raw["means"].new_zeros((raw["means"].shape[0], 0)),
        )
        return geometry, {k: raw[k] for k in ("sh0", "shN") if k in raw}

    def coloured(self, geometry: GaussianSet, deformed_sh: dict[str, Tensor], cam_center: Tensor,
                 sh_degree: int | None = None) -> GaussianSet:
        """``geometry`` with the view-dependent RGB seen from ``cam_center``, from the stored SH
        where ``deformed_sh`` (from :meth:`deformed_at`) has no deformed coefficients."""
        degree = self.config.sh_degree if sh_degree is None else sh_degree
        colors = core.colors(self._colour_params(deformed_sh), degree, cam_center, means=geometry.means)
        return GaussianSet(geometry.means, geometry.quats, geometry.scales, geometry.opacities, colors)

    def regularisation(self, t: float) -> Tensor:
        """Family hook: the method's regulariser at this step (scalar)."""
        return torch.zeros(())

    def set_view(self, camera: int | None) -> None:
        """Family hook: the training camera (index in the dataset's training cameras) the next renders
        are for, or None for any other view (families with per-camera parameters select them here)."""

    def frame_limit(self, step: int) -> int:
        """Family hook: train on frames ``< frame_limit`` at ``step`` (progressive schedules)."""
        return self.n_frames

    def after_densify(self) -> None:
        """Family hook: refresh caches that depend on the Gaussian count."""

    def on_step(self, step: int) -> None:
        """Family hook called before each training step (warm-ups, annealing, progressive frames)."""

    # ---- optimisation ----------------------------------------------------------------------------
    def param_lrs(self, extent: float) -> dict[str, float]:
        """Initial learning rate of each per-Gaussian tensor (families add theirs via ``extra_lrs``)."""
        c = self.config
        lrs = {
            "means": c.lr_means * extent,
            "log_scales": c.lr_log_scales,
            "quats": c.lr_quats,
            "opacity_logits": c.lr_opacity,
            "sh0": c.lr_sh0,
            "shN": c.lr_shN,
        }
        lrs.update(self.extra_lrs(extent))
        missing = set(self.params) - set(lrs)
        if missing:
            raise RuntimeError(f"{self.family}: no learning rate for {sorted(missing)}")
        return lrs

    def extra_lrs(self, extent: float) -> dict[str, float]:
        """Family hook: learning rates of the family's per-Gaussian tensors."""
        return {}

    def scheduled_lrs(self, step: int, extent: float) -> dict[str, float]:
        """Learning rates that follow 3DGS's log-linear decay at ``step``: positions and fields."""
        c = self.config
        return {
            "means": core.expon_lr(step, c.lr_means * extent, c.lr_means_final * extent, c.iterations),
            "fields": core.expon_lr(step, c.lr_fields * extent, c.lr_fields_final * extent, c.iterations),
        }

    # ---- persistence -----------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        """Everything needed to rebuild the expert, as flat named host tensors (safetensors-ready)."""
        out = {f"params.{k}": v.detach().cpu().contiguous() for k, v in self.params.items()}
        out.update({f"fields.{k}": v.detach().cpu().contiguous() for k, v in self.fields.state_dict().items()})
        out["aabb"] = self.aabb.detach().cpu().contiguous()
        return out

    @classmethod
    def from_state(cls, config: ExpertConfig, tensors: dict[str, Tensor], n_frames: int) -> Expert:
        params = {k[len("params."):]: v for k, v in tensors.items() if k.startswith("params.")}
        expert = cls(config, params, n_frames, tensors["aabb"])
        fields = {k[len("fields."):]: v for k, v in tensors.items() if k.startswith("fields.")}
        expert.fields.load_state_dict(fields)
        return expert

    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    def num_floats(self) -> int:
        """Stored floats (for model-size reporting)."""
        return sum(v.numel() for v in self.state_tensors().values())

    # ---- Renderable ------------------------------------------------------------------------------
    @property
    def families(self) -> list[str]:
        return [self.family]

    def megabytes(self) -> float:
        return self.num_floats() * 4 / 1e6

    @torch.no_grad()
    def render_frame(
        self, camera: Camera, t: float, ctx: RenderContext, *, rays: tuple[Tensor, Tensor] | None = None, cache: bool = True
    ) -> Frame:
        """The expert's view (``rays`` and ``cache`` only matter to a mixture)."""
        return Frame(render_expert(self, camera, t, ctx).image)

    def export_at(self, t: float) -> list[tuple[str, dict[str, Tensor]]]:
        return [(self.family, self.export_params_at(t))]

    def export_params_at(self, t: float) -> dict[str, Tensor]:
        """Core 3DGS parameters with the motion applied at time t (for standard PLY export)."""
        raw = self.deform(float(t))
        logits = raw["opacity_logits"]
        if "opacity_factor" in raw:
            opacity = (torch.sigmoid(logits) * raw["opacity_factor"]).clamp(1e-6, 1 - 1e-6)
            logits = torch.log(opacity / (1 - opacity))
        return {
            "means": raw["means"].detach(),
            "log_scales": raw["log_scales"].detach(),
            "quats": raw["quats"].detach(),
            "opacity_logits": logits.detach(),
            "sh0": self._colour_params(raw)["sh0"].detach(),
            "shN": self._colour_params(raw)["shN"].detach(),
        }

    def _colour_params(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        """The SH coefficients at this time: a family's ``deform`` may return deformed ``sh0``/``shN``
        (``raw`` is ``deform``'s output, or just those coefficients)."""
        return {**self.params, **{k: raw[k] for k in ("sh0", "shN") if k in raw}}


def config_from_dict(cls: type[Expert], values: dict[str, Any]) -> ExpertConfig:
    return build_config(cls.config_class, values)


def resolved_background(config: ExpertConfig, mean_colour: Callable[[], list[float]]) -> ExpertConfig:
    """``config`` with ``background: mean`` replaced by ``mean_colour()`` (called only then), rounded
    to 3 decimals so that manifests read well and ids do not hang on float noise."""
    if config.background != MEAN_BACKGROUND:
        return config
    return dataclasses.replace(config, background=[round(float(c), 3) for c in mean_colour()])


def _as_param(value: Tensor) -> nn.Parameter:
    return value if isinstance(value, nn.Parameter) else nn.Parameter(value.detach().clone().float())


def grid_time(t: float, n_rows: int) -> tuple[int, int, float]:
    """Linear interpolation indices into a table of ``n_rows`` samples spanning t in [0, 1]."""
    x = min(max(t, 0.0), 1.0) * (n_rows - 1)
    i0 = min(int(math.floor(x)), n_rows - 1)
    i1 = min(i0 + 1, n_rows - 1)
    return i0, i1, x - i0
