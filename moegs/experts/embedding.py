"""The ``embedding`` family: E-D3DGS (Bae et al., ECCV 2024, "Per-Gaussian Embedding-Based Deformation").

No coordinate field: every Gaussian g owns a learned embedding z_g (per-Gaussian tensor
``embedding``, init 0, so densification copies it with its parent), every time t a temporal
embedding z_t. Two decoders of the same architecture, coarse and fine, map (z_t, z_g) to raw
offsets that are summed: theta_t = theta + F_c(z_g, z_t^c) + F_f(z_g, z_t^f). The Gaussian's
position is *not* an input (the paper shows it hurts).

Per-camera time offsets (Sync-NeRF style): training camera c reads the temporal table at
t + delta_c; any other view (test, novel, the router) at t + the mean of the offsets learnt so far.
The camera is named through :meth:`EmbeddingExpert.set_view`; a training loop that never calls it
trains every view at the mean offset (0), i.e. without per-camera offsets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor, nn

from moegs.errors import InputError
from moegs.experts.base import Expert, ExpertConfig, grid_time
from moegs.experts.deform_mlp import DeformHeads, StepCounter, apply_offsets, check_attrs
from moegs.experts.knn_smoothness import knn_smoothness


@dataclass
class EmbeddingConfig(ExpertConfig):
    """E-D3DGS settings. Sizes are scaled down from N3V (z_g 32, z_t 256, 150 rows, width 128) and
    schedules from its 80k iterations to our ~3k. ``lr_fields`` drives decoders and temporal table
    together (the paper gives them one rate: 1.6e-4 -> 1.6e-5, x extent)."""

    lr_fields: float = 1.6e-4
    lr_fields_final: float = 1.6e-5
    gaussian_dim: int = 16
    """Size of the per-Gaussian embedding z_g (paper 32)."""
    temporal_dim: int = 32
    """Size of the temporal embedding z_t (paper 256)."""
    lr_temporal_ratio: float = 1.0
    """Learning rate of the temporal table / ``lr_fields`` (paper 1: one rate for both). On short
    schedules the table hardly leaves its small init at that rate and the model stays static in
    time (the demo preset raises it 100x)."""
    temporal_rows: int = 0
    """Rows of the temporal table (the fine resolution); 0: n_frames // 2, at least 2 (N3V: 150 / 300 frames)."""
    coarse_rows: int = 0
    """Rows the coarse decoder sees (the table resampled); 0: temporal_rows // 5, at least 2 (N3V: 30)."""
    c2f_iters: int = 400
    """The fine decoder's rows grow linearly from coarse_rows to temporal_rows over these steps
    (paper 10k of 80k); 0: no growth."""
    mlp_width: int = 64
    """Hidden width of both decoders (paper 128)."""
    mlp_depth: int = 1
    """Linear layers in each decoder's trunk before the heads (paper N3V 1)."""
    anneal_iters: int = 50
    """Position/rotation offsets ramp from 0 to 1 over these steps (paper 1000 of 80k); also the
    length of the scale/opacity ramp."""
    deform_from: int = 200
    """Scale/opacity offsets start ramping at this step (paper ``deform_from_iter`` 5000 of 80k)."""
    lr_embedding: float = 2.5e-3
    """Learning rate of the per-Gaussian embeddings (paper 2.5e-3, not scaled by the extent)."""
    lambda_embedding_smooth: float = 0.1
    """Weight of the local embedding smoothness (paper 1 on N3V, 0.1 on Technicolor)."""
    knn: int = 20
    """Neighbours per Gaussian in the smoothness term (paper 20)."""
    knn_falloff: float = 2000.0
    """w_ij = exp(-knn_falloff * |mu_i - mu_j|^2), in 1 / world units^2 (paper 2000)."""
    deform_attrs: list[str] = field(
        default_factory=lambda: ["means", "log_scales", "quats", "opacity_logits", "sh0"]
    )
    """Raw parameters the decoders deform. Default: the paper's N3V setting (opacity and colour too;
    colour as the DC term); its Technicolor setting drops ``sh0``."""
    lambda_opacity: float = 1e-4
    """Weight of sigmoid(mean raw opacity logit), E-D3DGS's stand-in for the opacity reset (paper 1e-4)."""
    max_cameras: int = 64
    """Rows of the per-camera time-offset table (training camera indices must be below it)."""
    lr_time_offset: float = 2e-5
    """Learning rate of the per-camera time offsets, in normalised time (paper N3V 2e-5, Technicolor 0:
    0 switches the offsets off)."""


def resample_rows(table: Tensor, rows: int) -> Tensor:
    """``table`` [M, D] linearly resized along its rows to [rows, D] (E-D3DGS resizes with align_corners=True)."""
    if rows == table.shape[0]:
        return table
    return F.interpolate(table.T[None], size=rows, mode="linear", align_corners=True)[0].T


def lerp_row(table: Tensor, t: float | Tensor) -> Tensor:
    """The row of ``table`` [M, D] at normalised time t in [0, 1], linearly interpolated -> [D].

    A tensor ``t`` (time plus a learnt camera offset) gets its gradient through the weight."""
    if isinstance(t, Tensor):  # hat-function weights: no host sync, the same value as below
        x = t.clamp(0.0, 1.0) * (table.shape[0] - 1)
        rows = torch.arange(table.shape[0], device=table.device, dtype=table.dtype)
        return (1.0 - (x - rows).abs()).clamp_min(0.0) @ table
    i0, i1, w = grid_time(t, table.shape[0])
    return table[i0] * (1.0 - w) + table[i1] * w


def knn_graph(means: Tensor, k: int, falloff: float) -> tuple[Tensor, Tensor]:
    """(neighbour indices [N, k'], sqrt of weights [N, k']) with k' = min(k, N - 1), self excluded.

    Weights exp(-falloff * d^2) are fixed until the next rebuild, as E-D3DGS computes them only
    when the Gaussian count changes.
    """
    n = means.shape[0]
    k_eff = min(k, n - 1)
    if k_eff < 1:
        empty = torch.zeros(n, 0, device=means.device)
        return empty.long(), empty
    xyz = means.detach().cpu().double().numpy()
    dist, idx = cKDTree(xyz).query(xyz, k=k_eff + 1)
    # Column 0 is normally the point itself, but exact duplicates may come first: drop self by id,
    # or the farthest neighbour where self is not among the k' + 1 returned.
    keep = idx != np.arange(n)[:, None]
    keep[keep.all(axis=1), -1] = False
    idx = idx[keep].reshape(n, k_eff)
    dist = dist[keep].reshape(n, k_eff)
    sqrt_w = np.exp(-0.5 * falloff * dist**2)
    return torch.from_numpy(idx).long().to(means.device), torch.from_numpy(sqrt_w).float().to(means.device)


class EmbeddingFields(nn.Module):
    """The temporal table, the coarse and fine decoders and the step counter."""

    def __init__(self, config: EmbeddingConfig, n_frames: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(config.seed)
        rows = config.temporal_rows if config.temporal_rows > 0 else max(2, n_frames // 2)
        self.coarse_rows = config.coarse_rows if config.coarse_rows > 0 else max(2, rows // 5)
        if rows < 2 or not 2 <= self.coarse_rows <= rows:
            raise InputError(f"need 2 <= coarse_rows <= temporal_rows, got {self.coarse_rows} and {rows}")
        # N(0, 0.01 / sqrt(D)) as the paper: a zero table with zero z_g and zero biases would leave
        # every ReLU at 0 and no gradient anywhere.
        std = 0.01 / math.sqrt(config.temporal_dim)
        # stored as table / m and used as m * stored (ScaledLinear's trick): its Adam rate is then m x lr_fields
        self.temporal_mult = config.lr_temporal_ratio
        self.temporal = nn.Parameter(torch.randn(rows, config.temporal_dim, generator=generator) * std / self.temporal_mult)
        in_dim = config.temporal_dim + config.gaussian_dim
        self.coarse = DeformHeads(in_dim, config.mlp_width, config.mlp_depth, config.deform_attrs, generator)
        self.fine = DeformHeads(in_dim, config.mlp_width, config.mlp_depth, config.deform_attrs, generator)
        self.progress = StepCounter()
        # Stored as offset / m and used as m * stored (ScaledLinear's trick): the fields' Adam rate
        # (lr_fields x extent, decaying) then moves the offsets at lr_time_offset x extent, decaying alike.
        self.time_offset_mult = config.lr_time_offset / config.lr_fields
        self.time_offsets = nn.Parameter(torch.zeros(config.max_cameras), requires_grad=config.lr_time_offset > 0)

    def time_offset(self, camera: int | None) -> Tensor:
        """delta_c of training camera ``camera``; for any other view the mean of the non-zero offsets
        (the official code's test-time rule: cameras never trained on still hold 0)."""
        offsets = self.time_offsets * self.time_offset_mult
        if camera is not None:
            if not 0 <= camera < offsets.shape[0]:
                raise InputError(f"embedding: camera index {camera} outside the {offsets.shape[0]} time offsets (max_cameras)")
            return offsets[camera]
        learnt = (offsets.detach() != 0).sum().clamp_min(1)
        return offsets.sum() / learnt  # the zero rows add nothing to the sum


class EmbeddingExpert(Expert):
    """E-D3DGS: theta_t = theta + F_c(z_g, z_t^c) + F_f(z_g, z_t^f), offsets on raw parameters."""

    family = "embedding"
    config_class = EmbeddingConfig
    paper = "Per-Gaussian Embedding-Based Deformation for Deformable 3D Gaussian Splatting (Bae et al., ECCV 2024)"
    config: EmbeddingConfig

    def __init__(self, config: ExpertConfig, params: dict[str, Tensor], n_frames: int, aabb: Tensor) -> None:
        super().__init__(config, params, n_frames, aabb)
        self._knn: tuple[Tensor, Tensor] | None = None  # (indices, sqrt weights) of the smoothness term
        self._view: int | None = None  # training camera being rendered; None: any other view

    def set_view(self, camera: int | None) -> None:
        """Name the training camera (its index in the dataset's training cameras) the next renders
        are for, or None for any other view; it selects the per-camera time offset."""
        self._view = camera

    @classmethod
    def init_per_gaussian(
        cls, config: ExpertConfig, params: dict[str, Tensor], times: Tensor, n_frames: int, moving: Tensor
    ) -> dict[str, Tensor]:
        """z_g = 0 for every Gaussian (paper): all start with the same motion."""
        return {"embedding": torch.zeros(params["means"].shape[0], cast(EmbeddingConfig, config).gaussian_dim)}

    def build_fields(self) -> nn.Module:
        c = self.config
        check_attrs(c.deform_attrs)
        if min(c.gaussian_dim, c.temporal_dim, c.knn) < 1 or min(c.c2f_iters, c.anneal_iters, c.deform_from) < 0:
            raise InputError(
                "embedding: need gaussian_dim, temporal_dim, knn >= 1 and c2f_iters, anneal_iters, deform_from >= 0"
            )
        if not c.lr_temporal_ratio > 0:
            raise InputError(f"embedding: need lr_temporal_ratio > 0, got {c.lr_temporal_ratio}")
        if c.max_cameras < 1 or c.lr_time_offset < 0 or (c.lr_time_offset > 0 and c.lr_fields <= 0):
            raise InputError(
                f"embedding: need max_cameras >= 1, lr_time_offset >= 0 and lr_fields > 0 when the offsets are on; "
                f"got {c.max_cameras}, {c.lr_time_offset}, {c.lr_fields}"
            )
        return EmbeddingFields(c, self.n_frames)

    @property
    def _fields(self) -> EmbeddingFields:
        return cast(EmbeddingFields, self.fields)

    def on_step(self, step: int) -> None:
        super().on_step(step)
        self._fields.progress.update(step)

    def extra_lrs(self, extent: float) -> dict[str, float]:
        return {"embedding": self.config.lr_embedding}

    def offset_weights(self) -> dict[str, float]:
        """E-D3DGS annealing: position/rotation ramp in over ``anneal_iters``; scale and opacity also
        wait for ``deform_from`` (their factor is the product of both ramps, as the official code)."""
        c, step = self.config, self._fields.progress.value
        motion = _ramp(step, c.anneal_iters)
        appearance = motion * _ramp(step - c.deform_from, c.anneal_iters)
        return {"means": motion, "quats": motion, "log_scales": appearance, "opacity_logits": appearance, "sh0": appearance}

    def fine_rows(self) -> int:
        """Rows of the fine decoder's table now: coarse_rows growing linearly to all rows over c2f_iters."""
        f, c = self._fields, self.config
        rows = f.temporal.shape[0]
        if c.c2f_iters == 0:
            return rows
        frac = min(f.progress.value, c.c2f_iters) / c.c2f_iters
        return int(f.coarse_rows + (rows - f.coarse_rows) * frac)

    def temporal_embeddings(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """(z_t^c, z_t^f) [D] each: the table resampled to the coarse / fine row counts, read at t."""
        table, coarse_rows = self._fields.temporal * self._fields.temporal_mult, self._fields.coarse_rows
        return lerp_row(resample_rows(table, coarse_rows), t), lerp_row(resample_rows(table, self.fine_rows()), t)

    def deform(self, t: float) -> dict[str, Tensor]:
        weights = self.offset_weights()
        if all(weights[a] == 0.0 for a in self.config.deform_attrs):
            return super().deform(t)
        z_g = self.params["embedding"]
        shifted: float | Tensor = t
        if self.config.lr_time_offset > 0:
            shifted = t + self._fields.time_offset(self._view)
        z_c, z_f = self.temporal_embeddings(shifted)
        offsets = [self._fields.coarse(z_g, context=z_c), self._fields.fine(z_g, context=z_f)]  # input concat(z_t, z_g)
        return apply_offsets(self.params, offsets, weights)

    def after_densify(self) -> None:
        """Rebuild the neighbour sets of the smoothness term (the Gaussian count changed)."""
        self._knn = knn_graph(self.params["means"], self.config.knn, self.config.knn_falloff)

    def regularisation(self, t: float) -> Tensor:
        """E-D3DGS's two terms: ``lambda_opacity`` sigmoid(mean raw opacity logit) (keeps opacities low
        without resets) + the local embedding smoothness."""
        c = self.config
        smoothness = self.embedding_smoothness()
        if c.lambda_opacity == 0.0:
            return smoothness
        return smoothness + c.lambda_opacity * torch.sigmoid(self.params["opacity_logits"].mean())

    def embedding_smoothness(self) -> Tensor:
        """Mean over i and its kNN j of sqrt(w_ij) * |z_i - z_j|, weighted by ``lambda_embedding_smooth``."""
        c = self.config
        if c.lambda_embedding_smooth == 0.0:
            return torch.zeros(())
        if self._knn is None or self._knn[0].shape[0] != self.num_gaussians or self._knn[0].device != self.device:
            self.after_densify()
        idx, sqrt_w = cast(tuple[Tensor, Tensor], self._knn)
        return c.lambda_embedding_smooth * knn_smoothness(self.params["embedding"], idx, sqrt_w)


def _ramp(step: int, length: int) -> float:
    """clip(step / length, 0, 1); a zero-length ramp is a step at 0."""
    if length == 0:
        return 1.0 if step >= 0 else 0.0
    return min(max(step / length, 0.0), 1.0)
