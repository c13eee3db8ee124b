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


def _fresh_model(expert_artifacts) -> MoEModel:
    torch.manual_seed(0)  # the decoder's initial weights
    experts = FrozenExperts([load_expert(a, CPU) for a in expert_artifacts])
    return MoEModel(experts, PixelRouter([e.num_gaussians for e in experts.experts]), 0.01, list(expert_artifacts))


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
