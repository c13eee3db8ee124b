"""The `torch` backend: the reference compositor in plain PyTorch, autograd does the backward.

Per tile, the Gaussian list is padded to the longest list of a chunk of similar tiles, and every
pixel of the tile evaluates every list entry; transmittance is an exclusive cumprod. Slow but
simple enough to trust, any device, any float dtype (float64 for gradcheck).
"""

from __future__ import annotations

import torch
from torch import Tensor

from moegs.raster.projection import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE, TileBins

# Bound on elements of one [tiles, 256, L] chunk tensor, to cap peak memory of the padded layout.
_CHUNK_ELEMENTS = 1 << 22


def _tile_pixel_centres(tiles: Tensor, tiles_x: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates [len(tiles), 256] (x, y) of the given tiles, row-major in a tile."""
    k = torch.arange(TILE * TILE, device=tiles.device)
    px = (tiles % tiles_x)[:, None] * TILE + (k % TILE)[None, :]
    py = (tiles // tiles_x)[:, None] * TILE + (k // TILE)[None, :]
    return px.to(dtype) + 0.5, py.to(dtype) + 0.5


def _tiles_to_image(per_tile: Tensor, bins: TileBins, width: int, height: int) -> Tensor:
    """[n_tiles, 256, K, *rest] -> [K, H, W, *rest] (cropped to the image)."""
    k, rest = per_tile.shape[2], per_tile.shape[3:]
    x = per_tile.reshape((bins.tiles_y, bins.tiles_x, TILE, TILE, k) + rest)
    x = x.permute((4, 0, 2, 1, 3) + tuple(range(5, 5 + len(rest))))
    return x.reshape((k, bins.tiles_y * TILE, bins.tiles_x * TILE) + rest)[:, :height, :width]


def _image_to_tiles(img: Tensor, bins: TileBins) -> Tensor:
    """[K, H, W] -> [n_tiles, 256, K], zero-padded to whole tiles."""
    k, h, w = img.shape
    pad = img.new_zeros((k, bins.tiles_y * TILE, bins.tiles_x * TILE))
    pad[:, :h, :w] = img
    x = pad.reshape(k, bins.tiles_y, TILE, bins.tiles_x, TILE).permute(1, 3, 2, 4, 0)
    return x.reshape(bins.tiles_x * bins.tiles_y, TILE * TILE, k)


def composite_torch(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    features: Tensor,
    set_ids: Tensor,
    n_sets: int,
    bins: TileBins,
    width: int,
    height: int,
    contrib_weight: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Front-to-back compositing of binned Gaussians, each set with its own transmittance.

    Returns (acc [K, H, W, D] = sum_i w_i f_i, trans [K, H, W] = final T, contrib [N] or None).
    """
    dtype, device = features.dtype, features.device
    n, d = features.shape
    n_tiles = bins.tiles_x * bins.tiles_y
    counts = bins.offsets[1:] - bins.offsets[:-1]
    active = torch.nonzero(counts > 0).squeeze(1)
    active = active[torch.argsort(counts[active], descending=True, stable=True)]
    weight_tiles = _image_to_tiles(contrib_weight, bins) if contrib_weight is not None else None
    contrib = torch.zeros(n, dtype=dtype, device=device) if contrib_weight is not None else None

    # Empty slices of the inputs keep the outputs in the autograd graph even with nothing to draw.
    done_tiles = [active[:0]]
    acc_chunks = [features[:0, None, None, :].expand(0, TILE * TILE, n_sets, d)]
    trans_chunks = [opacities[:0, None, None].expand(0, TILE * TILE, n_sets)]
    start = 0
    while start < active.shape[0]:
        longest = int(counts[active[start]])
        stop = min(active.shape[0], start + max(1, _CHUNK_ELEMENTS // (TILE * TILE * longest)))
        tiles = active[start:stop]
        start = stop

        j = torch.arange(longest, device=device)
        valid = j[None, :] < counts[tiles][:, None]  # [nt, L]
        idx = torch.clamp(bins.offsets[tiles][:, None] + j[None, :], max=bins.gids.shape[0] - 1)
        gid = torch.where(valid, bins.gids[idx], torch.zeros_like(idx))
        px, py = _tile_pixel_centres(tiles, bins.tiles_x, dtype)  # [nt, 256]

        mean, con = means2d[gid], conics[gid]  # [nt, L, 2], [nt, L, 3]
        dx = mean[:, None, :, 0] - px[:, :, None]  # [nt, 256, L]
        dy = mean[:, None, :, 1] - py[:, :, None]
        power = (
            -0.5 * (con[:, None, :, 0] * dx * dx + con[:, None, :, 2] * dy * dy)
            - con[:, None, :, 1] * dx * dy
        )
        alpha = torch.clamp(opacities[gid][:, None, :] * torch.exp(power), max=ALPHA_MAX)
        keep = valid[:, None, :] & (power <= 0) & (alpha >= ALPHA_MIN)
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))

        sid = set_ids[gid]  # [nt, L]
        feats = features[gid]  # [nt, L, D]
        acc_k, trans_k, weight_sum = [], [], torch.zeros_like(alpha)
        for k in range(n_sets):
            a_k = alpha if n_sets == 1 else alpha * (sid == k)[:, None, :].to(dtype)
            with torch.no_grad():
                alive = torch.cumprod(1.0 - a_k, dim=-1) >= T_MIN
            a_k = torch.where(alive, a_k, torch.zeros_like(a_k))
            t_incl = torch.cumprod(1.0 - a_k, dim=-1)
            t_excl = torch.cat([torch.ones_like(t_incl[..., :1]), t_incl[..., :-1]], dim=-1)
            w_k = a_k * t_excl
            acc_k.append(torch.bmm(w_k, feats))  # [nt, 256, D]
            trans_k.append(t_incl[..., -1])
            if contrib is not None:
                weight_sum = weight_sum + w_k.detach() * weight_tiles[tiles][:, :, k : k + 1]
        if contrib is not None:
            contrib.index_add_(0, gid[valid], weight_sum.sum(1)[valid])
        done_tiles.append(tiles)
        acc_chunks.append(torch.stack(acc_k, dim=2))  # [nt, 256, K, D]
        trans_chunks.append(torch.stack(trans_k, dim=2))  # [nt, 256, K]

    order = torch.cat(done_tiles)
    acc_tiles = features.new_zeros((n_tiles, TILE * TILE, n_sets, d)).index_copy(0, order, torch.cat(acc_chunks))
    trans_tiles = features.new_ones((n_tiles, TILE * TILE, n_sets)).index_copy(0, order, torch.cat(trans_chunks))
    return (
        _tiles_to_image(acc_tiles, bins, width, height),
        _tiles_to_image(trans_tiles, bins, width, height),
        contrib,
    )
