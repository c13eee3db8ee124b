"""Surround rigs (cameras 50-140 degrees apart around the scene): the synthetic preset, space carving
against the true surfaces, the automatic init choice, rig-shape defaults, and the pipeline end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from moegs.camera_path import default_path, make_path, orbit_path, rig_shape
from moegs.cameras import Camera
from moegs.context import resolve_context
from moegs.data.carving import carve_points
from moegs.data.dataset import Dataset
from moegs.data.init_points import spread_indices
from moegs.data.synthetic import REGION_NAMES, SURROUND_CENTRE, load_scene_info, view_coverage
from moegs.data.video import read_video
from moegs.errors import InputError
from moegs.models import load_model
from moegs_cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def surround_raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("surround") / "raw"
    result = runner.invoke(app, ["synth", str(out), "--preset", "tiny", "--rig", "surround"])
    assert result.exit_code == 0, result.output
    return out


def _cameras(raw: Path) -> list[Camera]:
    info, _ = load_scene_info(raw)
    return [Camera(c["name"], c["width"], c["height"], c["K"], c["R"], c["t"], None, c["near"], c["far"])
            for c in info["cameras"]]


def _azimuth_gaps(cameras: list[Camera], centre: np.ndarray) -> np.ndarray:
    offsets = np.stack([c.center - centre for c in cameras])
    angles = np.sort(np.degrees(np.arctan2(offsets[:, 0], offsets[:, 2])) % 360)
    return np.diff(np.concatenate([angles, angles[:1] + 360]))


def test_surround_preset_rig_and_labels(surround_raw) -> None:
    info, _ = load_scene_info(surround_raw)
    cameras = _cameras(surround_raw)
    assert info["rig"] == "surround" and 4 <= len(cameras) <= 6
    gaps = _azimuth_gaps(cameras, np.array([0.0, 0.0, 4.0]))
    assert np.all((gaps >= 50) & (gaps <= 140)), gaps
    for cam in cameras:  # every camera looks at the middle of the moving objects
        uv, depth = cam.project(np.array([SURROUND_CENTRE]))
        assert depth[0] > 0 and np.allclose(uv[0], [cam.width / 2, cam.height / 2], atol=1.0)
    seen = set()
    for cam in cameras:
        with np.load(surround_raw / "labels" / f"{cam.name}.npz") as data:
            seen |= set(np.unique(data["labels"]).tolist())
    assert seen == set(range(len(REGION_NAMES)))  # every region is visible somewhere, ground truth labelled


def test_held_out_view_shows_what_training_cameras_see(surround_raw) -> None:
    """The truth must be learnable: most of the held-out view is seen by two or more training cameras.

    Measured at frames 0 and 4: 73% and 71% of cam00's pixels are seen by 2+ training cameras, 15-18%
    by one, 11-12% by none (a strip of the far wall between its neighbours' fields of view). With
    the cameras at eye height, as before, only 43% were seen by 2+ and 16% by none.
    """
    info, _ = load_scene_info(surround_raw)
    test = info["test_camera"]
    others = [c["name"] for c in info["cameras"] if c["name"] != test]
    truth = read_video(surround_raw / f"{test}.mp4").astype(np.float64) / 255.0
    oracle, flat = [], []
    for frame in range(info["n_frames"]):
        seen = view_coverage(surround_raw, test, others, frame)
        if frame in (0, info["n_frames"] // 2):
            assert (seen >= 2).mean() > 0.65 and (seen == 0).mean() < 0.15
        mean = truth[frame].mean(axis=(0, 1))
        exact_where_two_see = np.where((seen >= 2)[..., None], truth[frame], mean)
        oracle.append(-10 * np.log10(((exact_where_two_see - truth[frame]) ** 2).mean()))
        flat.append(-10 * np.log10(((truth[frame] - mean) ** 2).mean()))
    # Exact wherever two training views see, the frame's mean colour elsewhere: 22.5 dB against the flat
    # image's 16.2 (the eye-height rig allowed 18.4 against 15.2, so +6 dB was out of reach there).
    assert np.mean(oracle) > np.mean(flat) + 6.0
    assert view_coverage(surround_raw, "cam01", ["cam01"]).min() == 1  # a camera sees all it shows
    with pytest.raises(InputError, match="no camera"):
        view_coverage(surround_raw, "cam00", ["cam99"])


def test_unknown_rig_is_refused(tmp_path) -> None:
    result = runner.invoke(app, ["synth", str(tmp_path / "x"), "--preset", "tiny", "--rig", "dome"])
    assert result.exit_code == 2 and "unknown rig 'dome'" in result.output
    assert not (tmp_path / "x").exists()


def test_carving_lies_on_the_true_surfaces(surround_raw) -> None:
    """Foreground points at their own frame's time, background points on the static room.

    Bounds (tiny preset, 96x72, 5 training cameras, voxel ~0.1 m in a 10 m room): foreground median
    within 0.1 m of the true surface at the point's frame (measured 0.045; the hull alone 0.055),
    background (plane-sweep stereo, one point per half-voxel cell) within 0.06 m (measured 0.041;
    the carved voxels' background 0.124, 0.20 with the earlier eye-height rig).
    """
    info, scene = load_scene_info(surround_raw)
    train = _cameras(surround_raw)[1:]
    n_frames = info["n_frames"]
    index = spread_indices(n_frames, 24)
    frames = {c.name: read_video(surround_raw / f"{c.name}.mp4")[index] for c in train}
    carve_at = list(range(len(index)))
    foreground, background, stats = carve_points(train, frames, np.asarray(index) / n_frames, carve_at)
    assert stats["foreground_points"] == len(foreground) >= 300 and len(background) >= 300
    assert set(np.unique(foreground.time).tolist()) <= {i / n_frames for i in index}
    assert len(np.unique(foreground.time)) >= n_frames // 2  # moving content seeded along the clip
    fg_distance = np.concatenate([scene.distance(foreground.xyz[foreground.time == t].astype(float), float(t))
                                  for t in np.unique(foreground.time)])
    bg_distance = scene.distance(background.xyz.astype(float), 0.0)
    print(f"carving: {len(foreground)} foreground points, median {np.median(fg_distance):.3f} m; "
          f"{len(background)} background, median {np.median(bg_distance):.3f} m (voxel {stats['voxel_size']:.3f})")
    assert np.median(fg_distance) < 0.1
    assert stats["background_method"] == "stereo" and np.median(bg_distance) < 0.06
    # foreground points sit on moving objects: far closer to the scene at their own time than at another
    shifted = np.concatenate([scene.distance(foreground.xyz[foreground.time == t].astype(float), (float(t) + 0.5) % 1)
                              for t in np.unique(foreground.time)])
    assert np.median(shifted) > 2 * np.median(fg_distance)


def test_rig_shape_and_default_path(surround_raw, tiny_raw) -> None:
    surround = _cameras(surround_raw)
    forward = _cameras(tiny_raw)
    assert rig_shape(surround) == "surround" and rig_shape(forward) == "forward"
    assert default_path(forward, 5)[0].name.startswith("spiral_")
    orbit = default_path(surround, 24)
    assert len(orbit) == 24 and orbit[0].name == "orbit_0000"
    np.testing.assert_allclose(orbit[0].center, surround[0].center, atol=1e-9)  # starts at a camera
    target = np.array(SURROUND_CENTRE)
    radii = [np.linalg.norm((v.center - target)[[0, 2]]) for v in orbit]
    assert np.allclose(radii, 3.2, rtol=0.15)  # goes around the scene, not through it
    assert sorted(_azimuth_gaps(orbit, target))[-1] < 30  # the loop closes: no large jump anywhere
    for view in orbit:
        _, depth = view.project(target[None])
        assert depth[0] > 0  # always facing the scene
    assert len(orbit_path(surround[:2], 3)) == 3
    with pytest.raises(InputError, match="unknown camera path 'zigzag'"):
        make_path("zigzag", surround, 3)


def test_surround_rigs_default_to_the_mean_colour_background_the_config_overrides(surround_raw, tiny_raw) -> None:
    from moegs.experts.base import resolved_background
    from moegs.experts.settings import TrainExpertsConfig, family_config
    from moegs.rig_defaults import applied_defaults, rig_expert_defaults

    assert rig_expert_defaults(_cameras(tiny_raw)) == ("forward", {})
    shape, defaults = rig_expert_defaults(_cameras(surround_raw)[1:])
    assert shape == "surround" and defaults == {"background": "mean"}
    cfg = TrainExpertsConfig(families=["polynomial"], polynomial={"background": [1.0, 1.0, 1.0], "sh_degree": 2})
    chosen = family_config(cfg, "polynomial", defaults)
    assert chosen.background == [1.0, 1.0, 1.0] and chosen.sh_degree == 2  # the user's values win
    assert applied_defaults(defaults, cfg.polynomial) == {}

    def never_read() -> list[float]:
        raise AssertionError("a colour the config gives must not be replaced by the frames' mean")

    assert resolved_background(chosen, never_read) is chosen
    static = family_config(cfg, "static", defaults)
    assert static.background == "mean" and applied_defaults(defaults, cfg.static) == {"background": "mean"}
    resolved = resolved_background(static, lambda: [0.35214, 0.5, 0.75])
    assert resolved.background == [0.352, 0.5, 0.75] and resolved.sh_degree == static.sh_degree


def test_surround_mixtures_render_at_the_official_temperature_unless_configured(surround_raw, tiny_raw, caplog) -> None:
    from moegs.moe.train import TrainRouterConfig
    from moegs.rig_defaults import rig_render_tau
    from stages.train_router import _render_tau

    surround = _cameras(surround_raw)[1:]
    assert rig_render_tau(_cameras(tiny_raw), 0.01) == ("forward", 0.01)  # the same tau as in training
    assert rig_render_tau(surround, 0.02) == ("surround", 1.0)
    assert rig_render_tau(surround, 2.0) == ("surround", 2.0)  # never sharper than training
    with caplog.at_level(logging.INFO, logger="moegs"):
        assert _render_tau(TrainRouterConfig(render_tau=0.05), surround) == ("surround", 0.05)  # the config wins
        assert _render_tau(TrainRouterConfig(render_tau=0.05), _cameras(tiny_raw)) == ("forward", 0.05)
    assert "renders at tau" not in caplog.text  # nothing chosen for the user, nothing to report


def test_surround_end_to_end(surround_raw, tmp_path, caplog) -> None:
    """synth --rig surround -> preprocess (init chosen automatically) -> two experts with the surround
    defaults -> router, scored on the held-out view against a flat image of each frame's mean colour.

    Tiny size (96x72, 8 frames, 500 steps per expert, 150 router steps). Measured: COLMAP
    triangulates ~110-120 background points (the count varies between runs) and carving adds ~4,900
    (colmap+carve: 2,117 foreground points, 603 of them by stereo; 2,805 stereo background points,
    one per half-voxel cell of 3,344); held-out view polynomial 19.74 dB, static 19.25, MoE 20.17
    (rendered at tau 1, the surround default; 19.97 at its training tau 0.01), flat image 16.21.
    Over expert seeds 0-5, in three preprocess runs (COLMAP kept 106-120 points), the best expert
    is 3.27-3.98 dB above the flat image and the MoE 3.59-4.05 dB (-0.20 to +0.49 dB from its best
    expert, at or above it on 14 of 18). With the hull's voxels for the foreground (stereo for the
    background only) 3.22-3.49 and 3.31-4.00 (one run); with the carved voxels for both (before
    0.3.0) 1.95-2.40 and 2.23-2.52 (-0.07 to +0.37 from its best expert). Training views reach
    22-25 dB (26-28.6 at 1000 steps, where the held-out view stays put or falls): sparse-view
    overfitting, not underfitting. NOT met here: the issue's +6 dB over the flat image (the preset
    allows 22.5 dB, see the coverage test) and the MoE >= its best expert on every seed. Asserted:
    a clear margin over the flat image for the best expert and for the MoE, and the MoE not far
    below its best expert.
    """
    from moegs.moe.train import TrainRouterConfig
    from stages import train_experts, train_router

    workspace = tmp_path / "ws"
    result = runner.invoke(app, ["-w", str(workspace), "--log-level", "debug", "preprocess", str(surround_raw),
                                 "--format", "n3v"])
    assert result.exit_code == 0, result.output
    dataset_path = Path(result.stdout.strip().splitlines()[-1])
    manifest = json.loads((dataset_path / "manifest.json").read_text())
    init = manifest["init"]
    assert init["method"] in ("carve", "colmap+carve") and init["tried"]["carve"]["background_points"] >= 300
    assert "pair_inliers" in init["tried"]["colmap"]
    assert manifest["metrics"]["init"] == init["method"] and manifest["metrics"]["rig"] == "surround"
    assert manifest["metrics"]["points"] >= init["tried"]["carve"]["points"]  # COLMAP's join, never replace
    assert "verified matches per pair" in result.output  # --log-level debug shows the per-pair counts

    schedule = {"iterations": 500, "densify": {"max_gaussians": 6000, "start": 100, "stop": 400, "every": 100}}
    cfg = train_experts.TrainExpertsConfig(families=["polynomial", "static"], checkpoint_every=100000,
                                           polynomial={**schedule, "init_t_log_scale": 0.5}, static=schedule)
    moegs_log = logging.getLogger("moegs")  # the CLI run above replaced the root handlers, caplog's too
    moegs_log.addHandler(caplog.handler)
    try:
        outcomes = train_experts.run(cfg, dataset_path, workspace, progress=False)
        assert [o.error for o in outcomes] == [None, None]
        experts = [o.result.artifact for o in outcomes]
        moe = train_router.run(TrainRouterConfig(iterations=150, log_every=50), [str(e.path) for e in experts],
                               workspace, progress=False).artifact
    finally:
        moegs_log.removeHandler(caplog.handler)
    dataset = Dataset.load(dataset_path)
    every_frame = np.stack([dataset.frame(c.name, i) for c in dataset.train_cameras for i in range(dataset.n_frames)])
    mean_colour = [round(float(c), 3) for c in every_frame.reshape(-1, 3).mean(axis=0) / 255.0]
    for expert in experts:  # the rig chose these, the config did not set them
        assert expert.metrics["rig"] == {"shape": "surround", "train_cameras": len(dataset.train_cameras),
                                         "defaults": {"background": "mean"}}
        assert expert.config["random_background"] is False and expert.config["background"] == mean_colour
    assert f"static: background mean = {mean_colour} (the training views' mean colour)" in caplog.text
    # the rig chose the rendering temperature: trained at 0.01, rendered (and scored) at 1.0
    assert moe.compat["tau"] == moe.metrics["render_tau"] == 1.0 and moe.config["tau"] == 0.01
    assert moe.metrics["rig"] == {"shape": "surround", "train_cameras": len(dataset.train_cameras)}
    assert "renders at tau 1 (trained at 0.01" in caplog.text
    assert moe.metrics["psnr_official_tau"] == moe.metrics["psnr"] != moe.metrics["psnr_train_tau"]
    assert load_model(moe, resolve_context("cpu", "cpu")).tau == 1.0  # what render, bench and prune draw
    flat = _flat_mean_colour_psnr(dataset)
    held_out = {e.config["family"]: e.metrics["psnr"] for e in experts}
    best = max(held_out.values())
    print(f"surround tiny ({manifest['metrics']['points']} points, {init['method']}): held-out view "
          f"{held_out} dB, MoE {moe.metrics['psnr']:.2f} dB (at the training tau {moe.metrics['psnr_train_tau']:.2f}), "
          f"flat image {flat:.2f} dB")
    assert best > flat + 2.5 and moe.metrics["psnr"] > flat + 2.5
    assert moe.metrics["psnr"] > best - 0.4  # the capture had the MoE 1.3 dB below its best expert


def _flat_mean_colour_psnr(dataset: Dataset, cameras: list[Camera] | None = None) -> float:
    """Mean PSNR over all frames of ``cameras`` (default: the test cameras) of an image filled with
    each frame's own mean colour."""
    values = []
    for cam in cameras if cameras is not None else dataset.test_cameras:
        for i in range(dataset.n_frames):
            frame = dataset.frame_tensor(cam.name, i).numpy()
            mse = float(((frame - frame.mean(axis=(0, 1))) ** 2).mean())
            values.append(10 * np.log10(1.0 / mse))
    return float(np.mean(values))
