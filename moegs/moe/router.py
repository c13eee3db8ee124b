"""The Volume-aware Pixel Router of MoE-GS: per-Gaussian gates and the shared per-pixel decoder.

Every Gaussian i of expert k carries gates b_i = (b_i0, b_i1) (init 0.9) and a time coefficient
f_i (init 0). At normalised time t the feature g_i(t) = [b_i0, b_i1, t * f_i] is splatted with the
expert's own frozen geometry and opacity over a background (1, as the official code: "weight
splatting"), giving maps A, S, T.
A 69-weight per-pixel MLP shared by all experts (8 -> 6 -> ReLU -> 3 -> ReLU -> 1, no bias) reads
[S, T, ray origin, unit ray direction]; logit = A + MLP; gate = softmax_k(logit / tau).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

GATE_INIT = 0.9
PAPER_GATE_BACKGROUND = 1.0
"""The gate maps' background in the official code: where an expert has no Gaussians it votes 1."""


class PixelRouter(nn.Module):
    """Per-Gaussian gate tables for each expert plus the shared pixel decoder (move it with ``.to``)."""

    def __init__(self, gaussian_counts: Sequence[int], gate_init: float = GATE_INIT,
                 gate_background: float = PAPER_GATE_BACKGROUND, seed: int = 0) -> None:
        """``seed`` draws the decoder's initial weights (torch's ``nn.Linear`` init from a generator of
        its own, not torch's global one: a train-router run gave another MoE every time)."""
        super().__init__()
        self.register_buffer("gate_background", torch.full((len(gaussian_counts), 3), gate_background))
        """[K, 3]: what expert k's maps A, S, T read where it has no Gaussians (a pruned MoE uses 0,
        :mod:`moegs.moe.prune` says why)."""
        self.gates = nn.ParameterList([nn.Parameter(torch.full((n, 2), gate_init)) for n in gaussian_counts])
        self.time_coefs = nn.ParameterList([nn.Parameter(torch.zeros(n, 1)) for n in gaussian_counts])
        # built without torch's init (which draws from the global generator) and given nn.Linear's own
        # init from a generator of the router's seed
        generator = torch.Generator().manual_seed(seed)
        layers = [skip_init(nn.Linear, n_in, n_out, bias=False) for n_in, n_out in ((8, 6), (6, 3), (3, 1))]
        for layer in layers:
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        self.decoder = nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2])

    @property
    def num_experts(self) -> int:
        return len(self.gates)

    def gate_features(self, k: int, t: float) -> Tensor:
        """g_i(t) = [b_i0, b_i1, t * f_i] for every Gaussian of expert k: [N_k, 3]."""
        return torch.cat([self.gates[k], t * self.time_coefs[k]], dim=-1)

    def logits(self, maps: Tensor, rays_o: Tensor, rays_d: Tensor) -> Tensor:
        """Per-pixel logits [K, H, W] from splatted maps [K, H, W, 3] and rays [H, W, 3] (world frame)."""
        k = maps.shape[0]
        # Channel-first [8, K*H*W]: each layer is then one wide [out, in] x [in, pixels] product,
        # which ran 2-3x faster on CPU than the tall [pixels, 8] x [8, 6] one (demo router step
        # 155-190 -> 142-157 ms).
        rays = torch.cat([rays_o, rays_d], dim=-1).permute(2, 0, 1).unsqueeze(1).expand(-1, k, -1, -1)
        hidden = torch.cat([maps[..., 1:3].permute(3, 0, 1, 2), rays]).flatten(1)
        for layer in self.decoder:
            hidden = layer.weight @ hidden if isinstance(layer, nn.Linear) else layer(hidden)
        return maps[..., 0] + hidden.reshape(maps.shape[:3])

    def keep_rows(self, k: int, mask: Tensor) -> None:
        """Drop gate rows of pruned Gaussians of expert k (``mask`` True = keep)."""
        self.gates[k] = nn.Parameter(self.gates[k].detach()[mask].clone())
        self.time_coefs[k] = nn.Parameter(self.time_coefs[k].detach()[mask].clone())
