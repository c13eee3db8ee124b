"""``moegs view``: browser cameras, the pictures of every mode against ``moegs render``, and a real
headless browser on a running viewer."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from moegs.cameras import Camera, quaternion_to_rotation
from moegs.context import CPU
from moegs.data.dataset import Dataset
from moegs.errors import InputError
from moegs.models import dataset_of, load_model
from moegs.view.camera import (BrowserPose, at_height, browser_camera, matching_camera, pose_of, rotation_to_quaternion,
                               widened)
from moegs.view.frames import GATES, GRID, compose, expert_grid, render_frame, render_view, view_modes
from moegs.visuals import legend_image
from moegs_cli.app import app
from tests.browser import find_chromium

REPO = Path(__file__).resolve().parents[1]


def _random_rotations(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    quats = rng.normal(size=(n, 4))
    rotations = [quaternion_to_rotation(q / np.linalg.norm(q)) for q in quats]
    # near-half-turns, where naive quaternion extraction divides by ~0
    rotations += [np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])]
    return rotations


def test_rotation_to_quaternion_inverts_quaternion_to_rotation():
    for R in _random_rotations(50):
        q = rotation_to_quaternion(R)
        assert abs(np.linalg.norm(q) - 1.0) < 1e-12 and q[0] >= 0
        np.testing.assert_allclose(quaternion_to_rotation(q), R, atol=1e-12)


def test_browser_camera_follows_viser_convention():
    """viser's own SO3 reads wxyz as we do; the camera looks down its +z and sees 'up' as -y."""
    import viser.transforms as vtf

    for R in _random_rotations(10, seed=1):
        wxyz = rotation_to_quaternion(R)
        np.testing.assert_allclose(vtf.SO3(wxyz).as_matrix(), R, atol=1e-12)
    position = np.array([0.3, -1.0, 2.0])
    R = _random_rotations(1, seed=2)[0]
    pose = BrowserPose(tuple(rotation_to_quaternion(R)), tuple(position), math.radians(50), 4 / 3)
    camera = browser_camera(pose, 120)
    assert (camera.width, camera.height) == (160, 120)
    ahead = position + 2.0 * R[:, 2]  # viser's look direction: +z of camera-to-world
    above = ahead - 0.5 * R[:, 1]  # viser's up direction: -y
    uv, depth = camera.project(np.stack([ahead, above]))
    np.testing.assert_allclose(uv[0], [80.0, 60.0], atol=1e-9)
    assert depth[0] == pytest.approx(2.0) and uv[1, 1] < 60.0  # up in the world is up in the image
    np.testing.assert_allclose(camera.K[1, 1], 60.0 / math.tan(math.radians(25)), rtol=1e-12)


def test_pose_of_and_browser_camera_round_trip_and_match():
    K = np.array([[80.0, 0, 48.0], [0, 80.0, 36.0], [0, 0, 1]])
    for i, R in enumerate(_random_rotations(8, seed=3)):
        cam = Camera(f"c{i}", 96, 72, K, R, np.array([0.1, -0.2, 0.3 * i]), near=0.05, far=50.0)
        back = browser_camera(pose_of(cam), cam.height, cam.near, cam.far)
        np.testing.assert_allclose(back.K, cam.K, atol=1e-9)
        np.testing.assert_allclose(back.R, cam.R, atol=1e-12)
        np.testing.assert_allclose(back.t, cam.t, atol=1e-12)
        assert matching_camera(pose_of(cam), [cam]) is cam
        moved = pose_of(cam)
        moved = BrowserPose(moved.wxyz, tuple(np.asarray(moved.position) + 1e-2), moved.fov, moved.aspect)
        assert matching_camera(moved, [cam]) is None
    assert at_height(cam, 144).K[0, 0] == pytest.approx(160.0) and at_height(cam, 144).width == 192


def test_widened_camera_keeps_its_pixels_centred():
    cam = Camera("c", 96, 72, np.array([[80.0, 0, 40.0], [0, 82.0, 30.0], [0, 0, 1]]), np.eye(3), np.zeros(3))
    points = np.array([[0.1, 0.2, 2.0], [-0.5, 0.1, 3.0]])
    wide = widened(cam, 16 / 9)
    assert (wide.width, wide.height) == (128, 72) and widened(cam, 96 / 72) is cam
    np.testing.assert_allclose(wide.project(points)[0], cam.project(points)[0] + [16.0, 0.0], atol=1e-12)


def test_browser_camera_rejects_bad_input():
    pose = BrowserPose((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 1.0, 1.5)
    for bad in (BrowserPose(pose.wxyz, pose.position, 0.0, 1.5), BrowserPose((0, 0, 0, 0), pose.position, 1.0, 1.5),
                BrowserPose(pose.wxyz, pose.position, 1.0, -1.0)):
        with pytest.raises(InputError):
            browser_camera(bad, 100)
    with pytest.raises(InputError):
        browser_camera(pose, 0)


# ---- against moegs render, on the tiny demo ------------------------------------------------------

@pytest.fixture(scope="module")
def moe_render(tiny_demo, demo_workspace):
    """``moegs render`` of the tiny MoE (test cameras, first two frames, PNGs on)."""
    from moegs.config import resolve_config
    from stages import render

    cfg = resolve_config(render.RenderConfig, None, "render", ["png=true", "frame_stop=2", "device=cpu", "backend=cpu"])
    return render.run(cfg, str(tiny_demo.steps["moe"].artifact.path), demo_workspace, progress=False).artifact


@pytest.mark.slow
def test_browser_view_renders_what_moegs_render_does_in_every_mode(tiny_demo, moe_render):
    artifact = tiny_demo.steps["moe"].artifact
    model = load_model(artifact, CPU)
    dataset = Dataset.load(dataset_of(artifact).path)
    modes = view_modes(model.families)
    assert modes[0] == "blend" and GATES in modes and GRID in modes and len(modes) == 3 + len(model.families)
    worst = 0.0
    for camera in dataset.test_cameras:
        pose = pose_of(camera)
        browser = browser_camera(pose, camera.height, camera.near, camera.far)
        assert matching_camera(pose, dataset.cameras) is camera
        for frame in (0, 1):
            t = float(dataset.times[frame])
            seen, reference = render_frame(model, browser, t, CPU), model.render_frame(camera, t, CPU)
            for name in ("image", "expert_images", "gates"):
                worst = max(worst, float((getattr(seen, name) - getattr(reference, name)).abs().max()))
            for mode in modes:
                np.testing.assert_array_equal(compose(seen, mode, model.families), compose(reference, mode, model.families))
            png = iio.imread(moe_render.path / camera.name / "frames" / f"{frame:05d}.png")
            np.testing.assert_array_equal(render_view(model, browser, t, "blend"), png)
        grid_png = iio.imread(moe_render.path / f"{camera.name}_grid.png")
        truth = dataset.frame(camera.name, 0)
        np.testing.assert_array_equal(render_view(model, browser, float(dataset.times[0]), GRID, ground_truth=truth), grid_png)
    print(f"browser camera vs dataset camera: max abs diff {worst:.2e} over image, expert images and gates")
    assert worst < 1e-5


@pytest.mark.slow
def test_expert_modes_gate_legend_and_ground_truth_tile(tiny_demo):
    artifact = tiny_demo.steps["moe"].artifact
    model = load_model(artifact, CPU)
    dataset = Dataset.load(dataset_of(artifact).path)
    camera = at_height(dataset.test_cameras[0], 144)
    frame = render_frame(model, camera, 0.25, CPU)
    gates = compose(frame, GATES, model.families)
    legend = legend_image(model.families)
    assert gates.shape == (144, 192, 3)
    scale = min(1.0, 0.5 * 192 / legend.shape[1], 0.5 * 144 / legend.shape[0])
    corner = gates[: round(legend.shape[0] * scale), : round(legend.shape[1] * scale)]
    assert (corner > 240).all(axis=2).mean() > 0.5  # the legend's white card sits in the corner
    truth = np.full((144, 192, 3), 7, dtype=np.uint8)
    grid = expert_grid(frame, model.families, truth)
    tiles = len(model.families) + 3
    assert grid.shape == (144 * math.ceil(tiles / 3), 192 * 3, 3)
    assert (grid[20:144, :192] == 7).all()  # the ground truth comes first (below its label)
    for k in range(len(model.families)):
        np.testing.assert_array_equal(compose(frame, view_modes(model.families)[1 + k], model.families),
                                      (np.clip(frame.expert_images[k].numpy(), 0, 1) * 255 + 0.5).astype(np.uint8))
    with pytest.raises(InputError, match="unknown view mode"):
        compose(frame, "depth", model.families)
    expert = load_model(tiny_demo.steps["expert polynomial"].artifact, CPU)
    assert view_modes(expert.families) == ["expert 0: polynomial", GRID]
    alone = render_frame(expert, camera, 0.25, CPU)
    np.testing.assert_array_equal(compose(alone, "expert 0: polynomial", expert.families),
                                  (np.clip(alone.image.numpy(), 0, 1) * 255 + 0.5).astype(np.uint8))


def test_view_of_a_missing_model_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["-w", str(tmp_path), "view", "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # rich wraps the one message at the terminal width
    assert text.startswith("error:") and text.count("error:") == 1 and "Traceback" not in text and "nope" in text


# ---- a real browser on a running `moegs view` ------------------------------------------------------

CANVAS_CROP = (slice(170, 520), slice(330, 640))
"""Part of the 1000 x ~560 page that neither viser's notification (top left), its control panel (top right)
nor the axes gizmo (bottom left) covers: only the background image, our rendered frame, shows there."""


def _start_view(workspace: Path, model: Path) -> tuple[subprocess.Popen, str]:
    """``moegs view`` as its own process on a free port; returns it and the URL it announced."""
    command = [sys.executable, "-c", "from moegs_cli.app import main; main()", "-w", str(workspace), "view",
               "--model", str(model), "--port", "0", "--height", "72", "--device", "cpu", "--backend", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise AssertionError(f"moegs view exited with {process.returncode} before serving")
        found = re.search(r"open (http://127\.0\.0\.1:\d+)", line)
        if found:
            return process, found.group(1)
    process.kill()
    raise AssertionError("moegs view did not announce its address within 180 s")


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (apt-get install chromium)")
def test_headless_chromium_shows_the_rendered_frame_and_ctrl_c_exits_cleanly(tiny_demo, demo_workspace, tmp_path):
    from moegs.view.frames import resize_image
    from tests.browser import save_png, screenshot_when

    artifact = tiny_demo.steps["moe"].artifact
    model = load_model(artifact, CPU)
    dataset = Dataset.load(dataset_of(artifact).path)
    expected: dict[tuple[int, int], np.ndarray] = {}

    def crop_means(shot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean colour of the canvas crop in the screenshot and in the frame the viewer should be showing:
        the first test camera (new tabs start there) widened to the canvas aspect, stretched over the canvas."""
        size = (shot.shape[1], shot.shape[0])
        if size not in expected:
            frame = render_view(model, widened(dataset.test_cameras[0], size[0] / size[1]), float(dataset.times[0]), "blend")
            expected[size] = resize_image(frame, *size)
        return shot[CANVAS_CROP].reshape(-1, 3).mean(0), expected[size][CANVAS_CROP].reshape(-1, 3).mean(0)

    def shows_the_frame(shot: np.ndarray) -> bool:
        seen, want = crop_means(shot)
        return shot[CANVAS_CROP].std() > 3.0 and np.abs(seen - want).max() < 8.0  # JPEG and browser resampling

    process, url = _start_view(demo_workspace, artifact.path)
    try:
        shot, ready = screenshot_when(url, shows_the_frame, timeout=120)
        save_png(shot, tmp_path / "moegs_view.png")
        seen, want = crop_means(shot)
        print(f"screenshot {tmp_path / 'moegs_view.png'} ({shot.shape[1]}x{shot.shape[0]}); mean colour in the "
              f"canvas crop: browser {np.round(seen, 1)}, rendered frame {np.round(want, 1)}")
        assert ready, "the page never showed the rendered frame"
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    # viser's websockets may log a handshake cut short by the closing browser; none of our code may fail
    assert "moegs view: stopped" in output and f'File "{REPO}' not in output, output


@pytest.mark.slow
def test_viewer_binds_localhost_and_play_steps_the_frame_slider(tiny_demo):
    from moegs.view.server import Viewer, ViewerOptions

    artifact = tiny_demo.steps["moe"].artifact
    viewer = Viewer(load_model(artifact, CPU), Dataset.load(dataset_of(artifact).path), ViewerOptions(port=0, height=32))
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", viewer.url) and not viewer.url.endswith(":0")
        assert viewer.mode.value == "blend" and viewer.height.value == 32
        viewer.fps.value = 50.0
        time.sleep(0.3)
        assert viewer.frame_slider.value == 0  # paused
        viewer.play.value = True
        deadline = time.monotonic() + 10
        while viewer.frame_slider.value < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert viewer.frame_slider.value >= 3
        viewer.play.value = False
    finally:
        viewer.stop()


def test_view_and_export_help_say_what_they_do():
    def plain(args: list[str]) -> str:  # without ANSI codes and box drawing, whitespace collapsed
        text = re.sub(r"\x1b\[[0-9;]*m", "", CliRunner().invoke(app, args, env={"COLUMNS": "200"}).output)
        return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())

    view_help = plain(["view", "--help"])
    assert "--host" in view_help and "--port" in view_help and "127.0.0.1" in view_help
    export_help = plain(["export", "--help"])
    assert "ply-sequence" in export_help and "splatv" in export_help and "mean gate" in export_help


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (apt-get install chromium)")
def test_jump_to_a_dataset_camera_and_grid_mode_in_a_real_browser(tiny_demo):
    """The camera dropdown moves the browser's camera onto a training camera (and it stays there after the
    browser reports back); the grid then carries the ground-truth tile, as the readout says."""
    import threading

    from moegs.view.server import Viewer, ViewerOptions
    from tests.browser import screenshot_when

    artifact = tiny_demo.steps["moe"].artifact
    dataset = Dataset.load(dataset_of(artifact).path)
    target = dataset.train_cameras[-1]
    viewer = Viewer(load_model(artifact, CPU), dataset, ViewerOptions(port=0, height=72))

    def on_camera(name: str) -> bool:
        for state in viewer.clients():
            if state.has_camera:
                cam = state.client.camera
                pose = BrowserPose(tuple(cam.wxyz), tuple(cam.position), float(cam.fov), float(cam.aspect))
                found = matching_camera(pose, dataset.cameras)
                return found is not None and found.name == name
        return False

    steps: list[str] = []
    finished = threading.Event()

    def drive() -> None:
        try:
            deadline = time.monotonic() + 90
            while not on_camera(dataset.test_cameras[0].name) and time.monotonic() < deadline:
                time.sleep(0.1)
            steps.append("started on the test camera")
            viewer.mode.value = GRID
            viewer.camera_choice.value = f"train {target.name}"
            time.sleep(3.0)  # several camera reports from the browser, and a render
            if on_camera(target.name) and f"on dataset camera **{target.name}**" in viewer.readout.content:
                steps.append("stays on the chosen camera")
        finally:
            finished.set()

    try:
        threading.Thread(target=drive, daemon=True).start()
        screenshot_when(viewer.url, lambda _shot: finished.is_set(), timeout=120)  # the browser stays open meanwhile
    finally:
        viewer.stop()
    assert steps == ["started on the test camera", "stays on the chosen camera"]
