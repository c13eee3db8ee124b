"""Tests for 3DGS adaptive density control and the per-Gaussian tensor surgery."""

from __future__ import annotations

import math

import pytest
import torch

from moegs import densify as D
from moegs.errors import InputError
from moegs.gaussians import quat_to_rotmat

W, H = 200, 100


def _setup(n: int = 10, optim=torch.optim.Adam):
    """Params whose rows are tagged with their index, an optimiser per key with moments = row id."""
    ids = torch.arange(n, dtype=torch.float32)
    values = {
        "means": ids[:, None].repeat(1, 3),
        "log_scales": torch.full((n, 3), math.log(0.005)),
        "quats": torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
        "opacity_logits": torch.full((n,), 2.0),
        "sh0": ids[:, None, None].repeat(1, 1, 3),
        "shN": ids[:, None, None].repeat(1, 3, 3),
        "embed": ids[:, None].repeat(1, 8),  # an expert's trainable per-Gaussian tensor
    }
    params = {k: torch.nn.Parameter(v.clone()) for k, v in values.items()}
    optimizers = {k: optim([p], lr=1e-3) for k, p in params.items()}
    params["poly"] = ids[:, None, None].repeat(1, 4, 3)  # a frozen per-Gaussian tensor: re-indexed, no optimiser
    for key, opt in optimizers.items():
        p = opt.param_groups[0]["params"][0]
        p.grad = torch.ones_like(p)
        opt.step()  # creates the moments
        with torch.no_grad():
            p.copy_(values[key])
        row_ids = ids.view(-1, *[1] * (p.ndim - 1)).expand_as(p)
        opt.state[p]["exp_avg"].copy_(row_ids)
        opt.state[p]["exp_avg_sq"].copy_(row_ids * 10)
    return params, optimizers


def _moment(opt, name="exp_avg"):
    return opt.state[opt.param_groups[0]["params"][0]][name]


def test_remove_keeps_rows_and_moments_aligned():
    params, opts = _setup()
    state = D.DensifyConfig().init_state(10)
    state["grad2d"] += torch.arange(10.0)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 4, 7]] = True
    D.remove_gaussians(params, opts, mask, state)
    kept = torch.tensor([0, 2, 3, 5, 6, 8, 9], dtype=torch.float32)
    assert torch.equal(params["means"][:, 0], kept)
    assert torch.equal(_moment(opts["means"])[:, 1], kept)
    assert torch.equal(_moment(opts["sh0"], "exp_avg_sq")[:, 0, 2], kept * 10)
    assert torch.equal(params["embed"][:, 3], kept) and torch.equal(_moment(opts["embed"])[:, 0], kept)
    assert torch.equal(params["poly"][:, 2, 1], kept)
    assert torch.equal(state["grad2d"], kept)
    D.check_sanity(params, opts, state)
    for opt in opts.values():  # the optimisers still step on the new tensors
        p = opt.param_groups[0]["params"][0]
        p.grad = torch.zeros_like(p)
        opt.step()


def test_duplicate_copies_values_and_zeroes_new_moments():
    params, opts = _setup(optim=torch.optim.RAdam)
    state = D.DensifyConfig().init_state(10)
    state["count"] += 3.0
    D.duplicate_gaussians(params, opts, torch.tensor([2, 5, 5]), state)
    assert params["means"].shape == (13, 3)
    assert torch.equal(params["shN"][:, 1, 2], torch.tensor([*range(10), 2, 5, 5], dtype=torch.float32))
    assert torch.equal(params["poly"][10:, 0, 0], torch.tensor([2.0, 5, 5]))
    assert torch.equal(params["embed"][10:, 0], torch.tensor([2.0, 5, 5]))
    for opt in opts.values():
        m = _moment(opt)
        assert torch.equal(m[:10].reshape(10, -1)[:, 0], torch.arange(10.0))
        assert not m[10:].any() and not _moment(opt, "exp_avg_sq")[10:].any()
    assert torch.equal(state["count"], torch.tensor([3.0] * 10 + [0.0] * 3))


def test_densify_step_clone_split_prune_counts():
    cfg = D.DensifyConfig()
    params, opts = _setup()
    with torch.no_grad():
        params["log_scales"][5:] = math.log(0.05)  # large: max scale > percent_dense * extent
        params["opacity_logits"][9] = -8.0  # opacity 3e-4 < 0.005
    state = cfg.init_state(10)
    high = torch.zeros(10, dtype=torch.bool)
    high[[0, 1, 5, 6, 7]] = True
    # 3e-4 in normalised units along x: pixel gradient * W/2
    grad = torch.zeros(10, 2)
    grad[high, 0] = 3e-4 / (W / 2)
    grad[~high, 1] = 1e-4 / (H / 2)
    radii = torch.full((10,), 5, dtype=torch.int32)
    for _ in range(3):
        cfg.accumulate(state, grad, radii, W, H)
    stats = cfg.densify_step(params, opts, state, step=600, scene_extent=1.0,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert stats["cloned"] == 2 and stats["split"] == 3 and stats["pruned"] == 1
    assert stats["n_after"] == 10 + 2 + 3 * 2 - 3 - 1 == params["means"].shape[0]
    # survivors in order: unsplit originals, clones of 0 and 1, then two samples of each of 5, 6, 7
    parents = torch.tensor([0, 1, 2, 3, 4, 8, 0, 1, 5, 6, 7, 5, 6, 7], dtype=torch.float32)
    assert torch.equal(params["sh0"][:, 0, 0], parents)
    assert torch.equal(params["embed"][:, 0], parents) and torch.equal(params["poly"][:, 3, 2], parents)
    assert torch.allclose(torch.exp(params["log_scales"][8:]), torch.tensor(0.05 / 1.6))
    assert torch.equal(params["means"][6:8], torch.tensor([[0.0] * 3, [1.0] * 3]))  # clones are exact copies
    assert torch.equal(_moment(opts["means"])[:6, 0], parents[:6])
    assert not _moment(opts["means"])[6:].any()
    assert all(not v.any() for v in state.values()) and state["grad2d"].shape == (14,)
    D.check_sanity(params, opts, state)
    # not a densification step: nothing happens
    assert cfg.densify_step(params, opts, state, step=601, scene_extent=1.0)["n_after"] == 14
    assert cfg.densify_step(params, opts, state, step=500, scene_extent=1.0)["n_after"] == 14


def test_size_pruning_only_after_first_reset():
    cfg = D.DensifyConfig()
    for step, expected in ((2900, 10), (3100, 8)):
        params, opts = _setup()
        with torch.no_grad():
            params["log_scales"][3] = math.log(0.2)  # > 0.1 * extent in world space
        state = cfg.init_state(10)
        radii = torch.full((10,), 4, dtype=torch.int32)
        radii[6] = 25  # > 20 px on screen
        cfg.accumulate(state, torch.zeros(10, 2), radii, W, H)
        stats = cfg.densify_step(params, opts, state, step=step, scene_extent=1.0)
        assert stats["n_after"] == expected
        if expected == 8:
            assert torch.equal(params["sh0"][:, 0, 0], torch.tensor([0.0, 1, 2, 4, 5, 7, 8, 9]))


def test_split_samples_follow_the_parent_gaussian():
    n = 4000
    scales = torch.tensor([0.3, 0.1, 0.02])
    q = torch.tensor([0.9, 0.3, -0.2, 0.25])
    params = {
        "means": torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]).repeat(n, 1)),
        "log_scales": torch.nn.Parameter(scales.log().repeat(n, 1)),
        "quats": torch.nn.Parameter(q.repeat(n, 1)),
        "opacity_logits": torch.nn.Parameter(torch.zeros(n)),
    }
    D.split_gaussians(params, {}, torch.ones(n, dtype=torch.bool), generator=torch.Generator().manual_seed(0))
    assert params["means"].shape == (2 * n, 3)
    offsets = (params["means"] - torch.tensor([1.0, -2.0, 0.5])).detach().double()
    r = quat_to_rotmat(q).double()
    cov_expected = r @ torch.diag(scales.double() ** 2) @ r.T
    cov = offsets.T @ offsets / offsets.shape[0]
    assert torch.allclose(cov, cov_expected, atol=0.05 * 0.09)
    assert torch.allclose(torch.exp(params["log_scales"]), scales / 1.6)


def test_opacity_reset_caps_at_001_and_zeroes_moments():
    cfg = D.DensifyConfig()
    params, opts = _setup()
    with torch.no_grad():
        params["opacity_logits"][:5] = -4.9  # 0.0074: below the cap (unchanged), above the pruning threshold
    before = torch.sigmoid(params["opacity_logits"].detach())
    state = cfg.init_state(10)
    stats = cfg.densify_step(params, opts, state, step=3000, scene_extent=1.0)  # densifies too
    assert stats["opacity_reset"] and stats["n_after"] == 10
    after = torch.sigmoid(params["opacity_logits"].detach())
    assert torch.allclose(after, torch.minimum(before, torch.tensor(0.01)), atol=1e-7)
    assert not _moment(opts["opacity_logits"]).any() and not _moment(opts["opacity_logits"], "exp_avg_sq").any()
    assert torch.equal(_moment(opts["means"])[:, 0], torch.arange(10.0))
    assert not cfg.densify_step(params, opts, state, step=15000, scene_extent=1.0)["opacity_reset"]


def test_accumulate_counts_only_visible_and_normalises():
    cfg = D.DensifyConfig()
    state = cfg.init_state(3)
    grad = torch.tensor([[3.0, 4.0], [1.0, 1.0], [0.0, 2.0]])
    cfg.accumulate(state, grad, torch.tensor([2, 0, 7]), width=4, height=2)
    assert torch.allclose(state["grad2d"], torch.tensor([math.hypot(6.0, 4.0), 0.0, 2.0]))
    assert torch.equal(state["count"], torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(state["max_radii"], torch.tensor([2.0, 0.0, 7.0]))
    with pytest.raises(InputError, match="retain_means2d_grad"):
        cfg.accumulate(state, None, torch.tensor([1, 1, 1]), 4, 2)


def test_sanity_rejects_inconsistent_layouts():
    params, opts = _setup()
    with pytest.raises(InputError, match="rows"):
        D.check_sanity({**params, "bad": torch.zeros(9)}, opts)
    opts["means"] = torch.optim.Adam([torch.nn.Parameter(torch.zeros(10, 3))])
    with pytest.raises(InputError, match="one param group"):
        D.check_sanity(params, opts)
    with pytest.raises(InputError, match="mask"):
        D.remove_gaussians(params, {}, torch.zeros(10))


def test_at_max_gaussians_growth_stops_but_pruning_and_resets_go_on():
    """Issue 12 item 6: the cap stops clone and split only."""
    cfg = D.DensifyConfig(max_gaussians=10)
    params, opts = _setup()
    with torch.no_grad():
        params["opacity_logits"][9] = -8.0  # opacity 3e-4 < 0.005: pruned
    state = cfg.init_state(10)
    grad = torch.full((10, 2), 1.0)  # far above the threshold: every Gaussian would clone
    cfg.accumulate(state, grad, torch.full((10,), 5, dtype=torch.int32), W, H)
    stats = cfg.densify_step(params, opts, state, step=3000, scene_extent=1.0)
    assert stats["cloned"] == 0 and stats["split"] == 0 and stats["pruned"] == 1 and stats["opacity_reset"]
    assert params["means"].shape[0] == 9 and all(not v.any() for v in state.values())
    assert torch.sigmoid(params["opacity_logits"].detach()).max() <= 0.01 + 1e-7
    below = D.DensifyConfig(max_gaussians=11)  # room for 2: the two largest gradients clone, no more
    ranked = torch.arange(1.0, 10.0)[:, None].expand(9, 2).clone()  # row 8 largest, then row 7
    cfg.accumulate(state, ranked, torch.full((9,), 5, dtype=torch.int32), W, H)
    parents = params["means"].detach()[[7, 8]].clone()
    assert below.densify_step(params, opts, state, step=600, scene_extent=1.0)["cloned"] == 2
    assert params["means"].shape[0] == 11
    new_rows = params["means"].detach()[9:]
    assert torch.equal(new_rows[new_rows[:, 0].argsort()], parents[parents[:, 0].argsort()])


def test_grow_stop_ends_cloning_but_pruning_goes_on_until_stop():
    """Issue 12 item 5: STG's prune phase after its clone phase (grow_stop < stop)."""
    cfg = D.DensifyConfig(start=0, every=100, grow_stop=700, stop=1000, opacity_reset_every=100000)
    params, opts = _setup()
    state = cfg.init_state(10)
    grad = torch.full((10, 2), 1.0)  # every Gaussian would clone
    visible = torch.full((10,), 5, dtype=torch.int32)
    cfg.accumulate(state, grad, visible, W, H)
    assert cfg.densify_step(params, opts, state, step=600, scene_extent=1.0)["cloned"] == 10
    with torch.no_grad():
        params["opacity_logits"][0] = -8.0  # opacity 3e-4 < 0.005: pruned
    cfg.accumulate(state, torch.full((20, 2), 1.0), torch.full((20,), 5, dtype=torch.int32), W, H)
    stats = cfg.densify_step(params, opts, state, step=800, scene_extent=1.0)
    assert stats["cloned"] == 0 and stats["split"] == 0 and stats["pruned"] == 1
    assert params["means"].shape[0] == 19
    with torch.no_grad():
        params["opacity_logits"][0] = -8.0
    assert cfg.densify_step(params, opts, state, step=1000, scene_extent=1.0)["pruned"] == 0  # stop is exclusive
