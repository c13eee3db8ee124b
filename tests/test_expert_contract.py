"""The contract every registered expert family keeps, checked for each one (``static`` included):
its state round-trips bit for bit, an interrupted run resumes bit-identically, gradients of a
rendered image reach every trainable tensor, and densification keeps every per-Gaussian tensor
(and its optimiser moments) row-aligned."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from moegs.cameras import Camera
from moegs.context import CPU
from moegs.data.build import build_dataset
from moegs.data.preprocess_config import PreprocessConfig
from moegs.data.dataset import Dataset
from moegs.densify import duplicate_gaussians, remove_gaussians
from moegs.errors import InputError
from moegs.experts import family_names, get_family
from moegs.experts.base import Expert
from moegs.moe.render import FrozenExperts
from moegs.raster import GaussianSet, rasterize
from moegs.train import make_optimizers, train_expert

FAMILIES = family_names()
N_FRAMES = 20
CAM = torch.tensor([0.0, 0.0, -4.0])
TRAINED = 100_000
"""A step past every family's warm-up, annealing and progressive schedules (all motion switched on)."""


def _expert(family: str, n: int = 48, seed: int = 0) -> Expert:
    """A small expert whose every tensor holds generic values (not its zero initialisation)."""
    rng = np.random.default_rng(seed)
    cls = get_family(family)
    expert = cls.from_points(cls.config_class(), rng.uniform(-1, 1, (n, 3)), rng.uniform(0, 1, (n, 3)),
                             rng.uniform(0, 1, n), N_FRAMES)
    expert.on_step(TRAINED)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, p in [*expert.params.items(), *expert.fields.named_parameters()]:
            if p.is_floating_point() and key not in ("means", "quats", "log_scales", "opacity_logits", "dynamic"):
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return expert


def _camera(name: str, center: tuple[float, float, float]) -> Camera:
    """A 32 x 24 view from ``center`` (only its position matters to the colours)."""
    c = np.asarray(center)
    return Camera(name, 32, 24, np.array([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]]), np.eye(3), -c)


def _outputs(g: GaussianSet) -> list[torch.Tensor]:
    return [getattr(g, f.name) for f in dataclasses.fields(g)]


def _render(expert: Expert, t: float) -> torch.Tensor:
    g = expert.gaussians_at(t, CAM)
    viewmat = torch.eye(4)
    viewmat[2, 3] = 4.0  # camera at CAM looking along +z
    K = torch.tensor([[30.0, 0.0, 16.0], [0.0, 30.0, 12.0], [0.0, 0.0, 1.0]])
    return rasterize(g.means, g.quats, g.scales, g.opacities, g.features, viewmat, K, 32, 24, backend="torch").image


@pytest.mark.parametrize("family", FAMILIES)
def test_state_round_trip_is_bit_identical(family, tmp_path):
    expert = _expert(family)
    path = tmp_path / "expert.safetensors"
    save_file(expert.state_tensors(), str(path))
    loaded = type(expert).from_state(expert.config, load_file(str(path)), N_FRAMES)
    with torch.no_grad():
        for t in (0.0, 0.41, 0.97):
            for a, b in zip(_outputs(expert.gaussians_at(t, CAM)), _outputs(loaded.gaussians_at(t, CAM))):
                assert torch.equal(a, b), (family, t)


@pytest.mark.parametrize("family", FAMILIES)
def test_rendered_gradients_reach_every_trainable_tensor(family):
    expert = _expert(family)
    weights = torch.randn(24, 32, 3, generator=torch.Generator().manual_seed(3))
    loss = (_render(expert, 0.45) * weights).sum() + expert.regularisation(0.45)
    loss.backward()
    lrs = expert.param_lrs(extent=1.0)  # a state flag (keyframe's ``dynamic``) has learning rate 0
    trainable = {**{k: p for k, p in expert.params.items() if lrs[k] > 0}, **dict(expert.fields.named_parameters())}
    for key, p in trainable.items():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), (family, key)
    assert all(float(expert.params[k].grad.abs().sum()) > 0 for k in ("means", "sh0", "opacity_logits")), family
    fields = [p.grad for p in expert.fields.parameters() if p.requires_grad]
    assert not fields or sum(float(g.abs().sum()) for g in fields) > 0, family


REWRITTEN_BY_AFTER_DENSIFY = {"polynomial": {"t_center": "copies", "row_id": "all"}}
"""Rows a family's ``after_densify`` rewrites on purpose: STG's copies draw a new temporal centre,
and the polynomial family renumbers its row ids (tested in test_experts_polynomial_keyframe.py)."""


@pytest.mark.parametrize("family", FAMILIES)
def test_densification_keeps_per_gaussian_tensors_row_aligned(family):
    n = 30
    expert = _expert(family, n)
    optimizers, _ = make_optimizers(expert, extent=1.0)
    (_render(expert, 0.3).sum() + expert.regularisation(0.3)).backward()
    for opt in optimizers.values():
        opt.step()
        opt.zero_grad(set_to_none=True)
    before = {k: v.detach().clone() for k, v in expert.params.items()}
    moments = {k: opt.state[p]["exp_avg"].clone() for k, opt in optimizers.items()
               if (p := opt.param_groups[0]["params"][0]) in opt.state}  # tensors that got a gradient
    idx = torch.tensor([2, 7, 7, 19])
    duplicate_gaussians(expert.params, optimizers, idx)
    keep = torch.ones(n + len(idx), dtype=torch.bool)
    keep[[0, 5, n + 1]] = False
    remove_gaussians(expert.params, optimizers, ~keep)
    expert.after_densify()
    rows = torch.cat([torch.arange(n), idx])[keep]
    fresh = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(len(idx), dtype=torch.bool)])[keep]
    for key, value in expert.params.items():
        rewritten = REWRITTEN_BY_AFTER_DENSIFY.get(family, {}).get(key)
        same = ~fresh if rewritten == "copies" else torch.zeros_like(fresh) if rewritten == "all" else torch.ones_like(fresh)
        assert torch.equal(value.detach()[same], before[key][rows][same]), (family, key)
        opt = optimizers[key]
        assert opt.param_groups[0]["params"][0] is value
        if key in moments:
            exp_avg = opt.state[value]["exp_avg"]
            assert torch.equal(exp_avg[~fresh], moments[key][rows[~fresh]]) and not exp_avg[fresh].any(), (family, key)
    image = _render(expert, 0.6)
    assert torch.isfinite(image).all()
    assert all(torch.isfinite(x).all() for x in _outputs(expert.gaussians_at(0.6, CAM)))


STEPS = 40


@pytest.fixture(scope="module")
def dataset(tiny_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    build_dataset(tiny_raw, out, PreprocessConfig(frame_stop=4, colmap_frames=1), progress=False)
    return Dataset.load(out)


def _trainable(dataset, family):
    cls = get_family(family)
    config = dataclasses.replace(cls.config_class(), iterations=STEPS)
    config.densify = dataclasses.replace(config.densify, start=10, stop=30, every=10)
    p = dataset.points
    return cls.from_points(config, p.xyz, p.rgb, p.time, dataset.n_frames)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_matches_uninterrupted_run(dataset, tmp_path, family):
    straight = _trainable(dataset, family)
    train_expert(straight, dataset, tmp_path / "a", CPU, checkpoint_every=20, progress=False)

    interrupted = _trainable(dataset, family)
    original_on_step = interrupted.on_step

    def crash_at_30(step: int) -> None:
        if step == 30:
            raise Interrupt
        original_on_step(step)

    interrupted.on_step = crash_at_30
    with pytest.raises(Interrupt):
        train_expert(interrupted, dataset, tmp_path / "b", CPU, checkpoint_every=20, progress=False)
    assert (tmp_path / "b" / "checkpoints" / "last.pt").is_file()

    resumed = _trainable(dataset, family)
    result = train_expert(resumed, dataset, tmp_path / "b", CPU, checkpoint_every=20, progress=False, resume=True)
    assert result.steps == STEPS - 20
    assert resumed.num_gaussians == straight.num_gaussians
    for key, value in straight.params.items():
        assert torch.equal(resumed.params[key], value), (family, key)  # training is bitwise reproducible on CPU
    for (key, a), b in zip(straight.fields.state_dict().items(), resumed.fields.state_dict().values()):
        assert torch.equal(a, b), (family, key)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_ignores_torch_global_generator(dataset, tmp_path, family):
    """Every draw of training comes from the expert's seed: two runs after different global seeds give
    the same expert (a stage that drew from the global generator gave another model every run)."""
    runs = []
    for global_seed in (5, 6):
        torch.manual_seed(global_seed)
        expert = _trainable(dataset, family)
        train_expert(expert, dataset, tmp_path / str(global_seed), CPU, progress=False)
        runs.append(expert)
    assert runs[0].num_gaussians == runs[1].num_gaussians
    for key, value in runs[0].params.items():
        assert torch.equal(runs[1].params[key], value), (family, key)
    for a, b in zip(runs[0].fields.state_dict().values(), runs[1].fields.state_dict().values()):
        assert torch.equal(a, b), family


@pytest.mark.parametrize("family", ["hexplane", "polynomial"])
def test_point_times_first_starts_from_the_earliest_instant(family: str) -> None:
    cls = get_family(family)
    rng = np.random.default_rng(0)
    xyz, rgb = rng.uniform(-1, 1, (30, 3)), rng.uniform(0, 1, (30, 3))
    times = np.repeat([0.0, 0.25, 0.5], 10)
    config = dataclasses.replace(cls.config_class(), point_times="first")
    first = cls.from_points(config, xyz, rgb, times, N_FRAMES)
    assert first.num_gaussians == 10
    torch.testing.assert_close(first.params["means"].detach(), torch.as_tensor(xyz[:10], dtype=torch.float32))
    torch.testing.assert_close(first.aabb, torch.as_tensor(np.stack([xyz[:10].min(0), xyz[:10].max(0)]), dtype=torch.float32))
    assert cls.from_points(cls.config_class(), xyz, rgb, times, N_FRAMES).num_gaussians == 30
    with pytest.raises(InputError, match="point_times"):
        dataclasses.replace(cls.config_class(), point_times="last")


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_cache_colours_another_view_as_the_expert_does(family: str) -> None:
    """A frozen expert's cache is filled at one camera and read at another: the Gaussians and their
    colours are the expert's own at that time and view, colour deformation included (before 0.3.0
    a cache hit coloured hexplane and embedding from their static SH)."""
    expert = _expert(family)
    frozen = FrozenExperts([expert])
    first, second = _camera("a", (0.0, 0.0, -4.0)), _camera("b", (1.5, -0.5, -3.5))
    with torch.no_grad():
        frozen.at(0, 0.4, first)
        cached = frozen.at(0, 0.4, second)
        own = expert.gaussians_at(0.4, torch.tensor(second.center, dtype=torch.float32))
    for got, want in zip(_outputs(cached), _outputs(own)):
        assert torch.allclose(got, want, rtol=0, atol=1e-6)
    assert len(frozen._cache) == 1
