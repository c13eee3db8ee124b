"""Checkpoints round-trip exactly and a damaged one is a one-line CheckpointError naming the file."""

from __future__ import annotations

import pytest
import torch

from moegs.checkpoint import load_checkpoint, save_checkpoint
from moegs.errors import CheckpointError, MoegsError


def _payload() -> dict:
    params = torch.nn.Parameter(torch.randn(7, 3))
    optimizer = torch.optim.Adam([params], lr=1e-2)
    params.sum().backward()
    optimizer.step()
    return {"step": 12, "tensors": {"params.xyz": params.detach().clone()}, "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state()}


def test_round_trip_is_exact_and_leaves_no_temporary(tmp_path):
    payload = _payload()
    save_checkpoint(tmp_path / "ck" / "last.pt", payload)
    back = load_checkpoint(tmp_path / "ck" / "last.pt")
    assert back["step"] == 12
    assert torch.equal(back["tensors"]["params.xyz"], payload["tensors"]["params.xyz"])
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], payload["optimizer"]["state"][0]["exp_avg"])
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["last.pt"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "foreign"])
def test_damaged_checkpoint_is_a_checkpoint_error(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _payload())
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "empty":
        data = bytearray()
    else:
        buffer = tmp_path / "plain.pt"
        torch.save({"step": 1}, buffer)
        data = bytearray(buffer.read_bytes())
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path)) as err:
        load_checkpoint(path)
    assert isinstance(err.value, MoegsError) and "\n" not in str(err.value)


def test_corrupt_checkpoint_on_resume_trains_from_step_0(tiny_raw, tmp_path, caplog):
    from moegs.context import CPU
    from moegs.data.build import build_dataset
    from moegs.data.dataset import Dataset
    from moegs.experts import get_family
    from moegs.train import CHECKPOINT, train_expert

    build_dataset(tiny_raw, "n3v", tmp_path / "ds", frame_stop=2, progress=False)
    dataset = Dataset.load(tmp_path / "ds")

    def expert():
        cls = get_family("static")
        p = dataset.points
        return cls.from_points(cls.config_class(iterations=12), p.xyz, p.rgb, p.time, dataset.n_frames)

    straight = expert()
    train_expert(straight, dataset, tmp_path / "a", CPU, checkpoint_every=5, progress=False)
    damaged = tmp_path / "b" / CHECKPOINT
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes((tmp_path / "a" / CHECKPOINT).read_bytes()[:-100])  # cut short
    resumed = expert()
    with caplog.at_level("WARNING", logger="moegs"):
        result = train_expert(resumed, dataset, tmp_path / "b", CPU, checkpoint_every=5, progress=False, resume=True)
    assert result.steps == 12 and "damaged checkpoint" in caplog.text
    for key, value in straight.params.items():
        assert torch.equal(resumed.params[key], value), key
