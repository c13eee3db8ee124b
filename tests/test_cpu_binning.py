"""The `cpu` backend's counting-sort binning gives exactly the torch binning's tile lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moegs.raster.bench import make_scene
from moegs.raster.cpu_binning import _front_to_back, bin_tiles_cpu
from moegs.raster.projection import bin_tiles, project_gaussians


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,width,height", [(3000, 256, 192), (500, 72, 40)])  # 72x40: partial edge tiles
def test_cpu_binning_equals_torch(n, width, height, dtype):
    gs, viewmat, K = make_scene(n, width, height, dtype=dtype, scale_range=(0.005, 0.2))
    # widen the view so some Gaussians straddle or leave the image, and tie some depths exactly
    p = project_gaussians(gs.means * 1.3, gs.quats, gs.scales, viewmat, K, width, height, 0.01, 1e10)
    depths = p.depths.clone()
    depths[::7] = depths[0]
    ref = bin_tiles(p.means2d, p.radii, depths, width, height)
    got = bin_tiles_cpu(p.means2d, p.radii, depths, width, height)
    assert (p.radii == 0).any() and (p.radii > 0).sum() > n // 2, "scene must have culled and visible Gaussians"
    assert ref.gids.shape[0] > n, "too few intersections to test anything"
    assert (got.tiles_x, got.tiles_y) == (ref.tiles_x, ref.tiles_y)
    assert torch.equal(got.offsets, ref.offsets)
    assert torch.equal(got.gids, ref.gids)


def test_cpu_binning_empty():
    means2d = torch.zeros((4, 2))
    got = bin_tiles_cpu(means2d, torch.zeros(4, dtype=torch.int32), torch.ones(4), 40, 20)
    assert got.gids.shape == (0,) and torch.equal(got.offsets, torch.zeros(3 * 2 + 1, dtype=torch.long))


@pytest.mark.parametrize("levels", [3, 50, 100_000])  # a few long runs of equal depth, many short ones, almost none
def test_front_to_back_is_a_stable_sort_by_depth(levels):
    rng = np.random.default_rng(levels)
    depths = rng.integers(0, levels, 20_000).astype(np.float32) * 0.37
    visible = np.sort(rng.choice(20_000, 15_000, replace=False))
    expected = visible[np.argsort(depths[visible], kind="stable")]
    assert np.array_equal(_front_to_back(depths, visible), expected)
