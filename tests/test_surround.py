"""Surround rigs (cameras 50-140 degrees apart around the scene): the synthetic preset, space carving
against the true surfaces, the automatic init choice, rig-shape defaults, and the pipeline end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from moegs.camera_path import default_path, make_path, orbit_path, rig_shape
from moegs.cameras import Camera
from moegs.data.carving import carve_points
from moegs.data.dataset import Dataset
from moegs.data.init_points import spread_indices
from moegs.data.synthetic import REGION_NAMES, SURROUND_CENTRE, load_scene_info, view_coverage
from moegs.data.video import read_video
from moegs.errors import InputError
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
    others = [c["name"] for c in info["cameras"] if c["name"] != info["test_camera"]]
    for frame in (0, info["n_frames"] // 2):
        seen = view_coverage(surround_raw, info["test_camera"], others, frame)
        assert (seen >= 2).mean() > 0.65 and (seen == 0).mean() < 0.15
    assert view_coverage(surround_raw, "cam01", ["cam01"]).min() == 1  # a camera sees all it shows
    with pytest.raises(InputError, match="no camera"):
        view_coverage(surround_raw, "cam00", ["cam99"])


def test_unknown_rig_is_refused(tmp_path) -> None:
    result = runner.invoke(app, ["synth", str(tmp_path / "x"), "--preset", "tiny", "--rig", "dome"])
    assert result.exit_code == 2 and "unknown rig 'dome'" in result.output
    assert not (tmp_path / "x").exists()


def test_carving_lies_on_the_true_surfaces(surround_raw) -> None:
    """Foreground points at their own frame's time, background points on the static room.

    Bounds (tiny preset, 96x72, 5 training cameras, voxel ~0.11 m in a 10 m room): foreground median
    within 0.1 m of the true surface at the point's frame (measured 0.048), background within 0.3 m
    (measured 0.20).
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
    assert np.median(bg_distance) < 0.3
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


def test_surround_end_to_end(surround_raw, tmp_path) -> None:
    """synth --rig surround -> preprocess (init chosen automatically) -> one expert, scored on a training
    view and on the held-out view against a flat image of each frame's mean colour.

    At tiny size (96x72, 8 frames, 300 steps) COLMAP finds nothing, carving is chosen, and the expert
    fits its training views above the flat image (measured 17.5 vs 15.1 dB; asserted +1.5 dB). The
    held-out camera, 55-60 degrees from its nearest training cameras, is NOT yet better than the flat
    image at this size (measured 11.9-12.5 dB vs 15.2 dB, the same as from random points): sparse-view
    generalisation is the open part of issue 18, so it is printed here, not asserted.
    """
    from moegs.context import resolve_context
    from moegs.evaluation import evaluate_renderer
    from moegs.experts.io import load_expert
    from moegs.rendering import render_expert
    from stages import train_experts

    workspace = tmp_path / "ws"
    result = runner.invoke(app, ["-w", str(workspace), "--log-level", "debug", "preprocess", str(surround_raw),
                                 "--format", "n3v"])
    assert result.exit_code == 0, result.output
    dataset_path = Path(result.stdout.strip().splitlines()[-1])
    manifest = json.loads((dataset_path / "manifest.json").read_text())
    init = manifest["init"]
    assert init["method"] == "carve" and "carving found enough points" in init["reason"]
    assert init["tried"]["colmap"]["points"] < 100 and "pair_inliers" in init["tried"]["colmap"]
    assert manifest["metrics"]["init"] == "carve" and manifest["metrics"]["points"] >= 100
    assert "verified matches per pair" in result.output  # --log-level debug shows the per-pair counts

    cfg = train_experts.TrainExpertsConfig(families=["polynomial"], checkpoint_every=100000, polynomial={
        "iterations": 300, "init_t_log_scale": 0.5,
        "densify": {"max_gaussians": 3000, "start": 50, "stop": 250, "every": 50}})
    outcome = train_experts.run(cfg, dataset_path, workspace, progress=False)[0]
    assert outcome.error is None, outcome.error
    dataset = Dataset.load(dataset_path)
    ctx = resolve_context()
    expert = load_expert(outcome.result.artifact, ctx)
    train_cam = dataset.train_cameras[:1]
    train_psnr = evaluate_renderer(lambda camera, t: render_expert(expert, camera, t, ctx).image, dataset, train_cam,
                                   progress=False)["psnr"]
    held_out = outcome.result.artifact.metrics["psnr"]
    flat_train, flat_test = _flat_mean_colour_psnr(dataset, train_cam), _flat_mean_colour_psnr(dataset)
    print(f"surround tiny ({manifest['metrics']['points']} carved points): training view {train_psnr:.2f} dB "
          f"(flat {flat_train:.2f}); held-out view {held_out:.2f} dB (flat {flat_test:.2f})")
    assert train_psnr > flat_train + 1.5


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
