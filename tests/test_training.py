"""The shared training loop fits a scene; reaching ``max_gaussians`` stops growth only.

(Bit-identical resume for every family: ``test_expert_contract.py``.)
"""

from __future__ import annotations

from moegs.context import CPU
from moegs.data.build import build_dataset
from moegs.data.preprocess_config import PreprocessConfig
from moegs.data.dataset import Dataset
from moegs.densify import DensifyConfig
from moegs.experts import get_family
from moegs.train import train_expert

def test_static_fit_of_one_frame_reaches_floor(tiny_raw, tmp_path):
    """3DGS on frame 0 alone, from its COLMAP points: the rasteriser, densification and losses learn together."""
    out = tmp_path / "one_frame"
    build_dataset(tiny_raw, out, PreprocessConfig(frame_stop=1), progress=False)
    dataset = Dataset.load(out)
    cls = get_family("static")
    config = cls.config_class(iterations=600, densify=DensifyConfig(start=50, stop=450, every=50, max_gaussians=4000))
    p = dataset.points
    expert = cls.from_points(config, p.xyz, p.rgb, p.time, dataset.n_frames)
    from moegs.evaluation import evaluate_renderer

    def score():
        return evaluate_renderer(lambda cam, t: expert.render_frame(cam, t, CPU).image, dataset,
                                 dataset.train_cameras, progress=False)["psnr"]

    initial = score()
    train_expert(expert, dataset, tmp_path / "work", CPU, progress=False)
    fitted = score()
    print(f"static fit of frame 0 (training views): {initial:.2f} dB at init -> {fitted:.2f} dB after 600 steps")
    assert fitted > 23.5 and fitted > initial + 8.0  # measured 25.3 dB from 12.0 dB


def test_a_diverged_run_stops_before_its_checkpoint_and_result(tiny_raw, tmp_path):
    """A loss that turns NaN (here from step 7) stops training with a one-line error at the next host
    read, the checkpoint at step 10 here, so no NaN weights are checkpointed or returned as a result."""
    import math

    import pytest
    import torch

    from moegs.checkpoint import load_checkpoint
    from moegs.errors import MoegsError
    from moegs.train import CHECKPOINT

    build_dataset(tiny_raw, tmp_path / "ds", PreprocessConfig(frame_stop=2), progress=False)
    dataset = Dataset.load(tmp_path / "ds")
    cls = get_family("static")
    p = dataset.points
    expert = cls.from_points(cls.config_class(iterations=30), p.xyz, p.rgb, p.time, dataset.n_frames)
    steps: list[int] = []
    expert.on_step = steps.append  # type: ignore[method-assign]
    expert.regularisation = lambda t: torch.tensor(float("nan") if steps[-1] >= 7 else 0.0)  # type: ignore[method-assign]
    with pytest.raises(MoegsError, match=r"static: training diverged \(loss nan at step 9\)") as err:
        train_expert(expert, dataset, tmp_path / "work", CPU, checkpoint_every=5, progress=False)
    assert "\n" not in str(err.value)
    saved = load_checkpoint(tmp_path / "work" / CHECKPOINT)
    assert saved["step"] == 5 and all(math.isfinite(float(v.sum())) for v in saved["tensors"].values())
