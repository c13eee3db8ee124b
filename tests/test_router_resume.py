"""Router training (train-router, prune's fine-tune) checkpoints and resumes to the same router."""

from __future__ import annotations

import dataclasses

import torch

from moegs.context import CPU
from moegs.data.dataset import Dataset
from moegs.experts.io import load_expert
from moegs.moe.model import MoEModel
from moegs.moe.render import FrozenExperts
from moegs.moe.router import PixelRouter
from moegs.moe.train import ROUTER_CHECKPOINT, TrainRouterConfig, train_router


def _fresh_model(expert_artifacts, seed: int = 0) -> MoEModel:
    experts = FrozenExperts([load_expert(a, CPU) for a in expert_artifacts])
    router = PixelRouter([e.num_gaussians for e in experts.experts], seed=seed)
    return MoEModel(experts, router, 0.01, list(expert_artifacts))


def test_router_init_depends_on_its_seed_only() -> None:
    """The decoder's initial weights come from the router's seed, not from torch's global generator
    (train-router gave another MoE every run: 30.45-30.89 dB after 20 steps on the demo experts)."""
    torch.manual_seed(1)
    first = PixelRouter([5, 7]).state_dict()
    torch.manual_seed(2)
    torch.rand(100)
    second = PixelRouter([5, 7]).state_dict()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key
    other = PixelRouter([5, 7], seed=1).decoder[0].weight
    assert not torch.equal(other, first["decoder.0.weight"])
    bound = 1.0 / 8 ** 0.5  # nn.Linear's init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(first["decoder.0.weight"].abs().max()) <= bound and float(first["decoder.0.weight"].std()) > 0.1 * bound


def test_router_training_is_reproducible(tiny_demo) -> None:
    """Two trainings with one config give the same router whatever torch's global generator holds."""
    moe = tiny_demo.steps["moe"].artifact
    expert_artifacts = [moe.resolve_input(e) for e in moe.input_refs("expert")][:2]
    dataset = Dataset.load(moe.resolve_input(moe.input_refs("dataset")[0]).path)
    cfg = dataclasses.replace(TrainRouterConfig(), iterations=4, device="cpu", backend="cpu")
    routers = []
    for global_seed in (3, 4):
        torch.manual_seed(global_seed)
        model = _fresh_model(expert_artifacts, seed=cfg.seed)
        train_router(model, dataset, cfg, CPU, progress=False)
        routers.append(model.router.state_dict())
    for key, value in routers[0].items():
        assert torch.equal(value, routers[1][key]), key


def test_resumed_router_equals_uninterrupted(tiny_demo, tmp_path) -> None:
    moe = tiny_demo.steps["moe"].artifact
    expert_artifacts = [moe.resolve_input(e) for e in moe.input_refs("expert")][:2]
    dataset = Dataset.load(moe.resolve_input(moe.input_refs("dataset")[0]).path)
    cfg = dataclasses.replace(TrainRouterConfig(), iterations=6, checkpoint_every=3, log_every=2, device="cpu", backend="cpu")

    straight = _fresh_model(expert_artifacts)
    history_a, _ = train_router(straight, dataset, cfg, CPU, progress=False, workdir=tmp_path / "a")
    assert (tmp_path / "a" / ROUTER_CHECKPOINT).is_file()  # written at step 3 of 6

    resumed = _fresh_model(expert_artifacts)
    train_router(resumed, dataset, cfg, CPU, progress=False, workdir=tmp_path / "b")
    again = _fresh_model(expert_artifacts)
    history_b, _ = train_router(again, dataset, cfg, CPU, progress=False, workdir=tmp_path / "b", resume=True)

    assert history_b == history_a
    for key, value in straight.router.state_dict().items():
        assert torch.equal(value, again.router.state_dict()[key]), key
    assert not torch.equal(straight.router.gates[0], torch.full_like(straight.router.gates[0], 0.9))  # it trained


def test_damaged_router_checkpoint_trains_from_start(tiny_demo, tmp_path) -> None:
    moe = tiny_demo.steps["moe"].artifact
    expert_artifacts = [moe.resolve_input(e) for e in moe.input_refs("expert")][:2]
    dataset = Dataset.load(moe.resolve_input(moe.input_refs("dataset")[0]).path)
    cfg = dataclasses.replace(TrainRouterConfig(), iterations=4, checkpoint_every=2, device="cpu", backend="cpu")
    (tmp_path / ROUTER_CHECKPOINT).parent.mkdir(parents=True)
    (tmp_path / ROUTER_CHECKPOINT).write_bytes(b"not a checkpoint")
    reference = _fresh_model(expert_artifacts)
    train_router(reference, dataset, cfg, CPU, progress=False)
    model = _fresh_model(expert_artifacts)
    train_router(model, dataset, cfg, CPU, progress=False, workdir=tmp_path, resume=True)
    assert torch.equal(model.router.gates[0], reference.router.gates[0])


def test_router_motion_weight_reaches_the_loss(tiny_demo, monkeypatch) -> None:
    """With ``motion_weight`` every router step's L1 gets the sampled view's motion weight map."""
    import moegs.moe.train as router_train

    moe = tiny_demo.steps["moe"].artifact
    expert_artifacts = [moe.resolve_input(e) for e in moe.input_refs("expert")][:2]
    dataset = Dataset.load(moe.resolve_input(moe.input_refs("dataset")[0]).path)
    weights = []
    real = router_train.photometric

    def spy(img, gt, lambda_dssim=0.2, weight=None):
        weights.append(weight)
        return real(img, gt, lambda_dssim=lambda_dssim, weight=weight)

    monkeypatch.setattr(router_train, "photometric", spy)
    cfg = dataclasses.replace(TrainRouterConfig(), iterations=2, motion_weight=3.0, device="cpu", backend="cpu")
    train_router(_fresh_model(expert_artifacts), dataset, cfg, CPU, progress=False)
    assert len(weights) == 2 and all(w is not None and float(w.min()) >= 1.0 and float(w.max()) <= 4.0 for w in weights)
