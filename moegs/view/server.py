"""The ``moegs view`` web viewer: viser serves the page, we render every frame on this side.

Each browser tab (viser client) gets one render thread. Camera moves and control changes only set
that thread's "dirty" event, so a burst of camera messages costs one render of the latest state
instead of a queue of stale ones. A play thread steps the time slider at the chosen FPS; when
rendering is slower than that, frames are skipped rather than queued.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from moegs.cameras import Camera
from moegs.context import CPU, RenderContext
from moegs.data.dataset import Dataset
from moegs.errors import MissingDependencyError
from moegs.renderable import Renderable
from moegs.view.camera import BrowserPose, at_height, browser_camera, matching_camera, pose_of, widened
from moegs.view.frames import GRID, render_view, resize_image, view_modes
from moegs.visuals import legend_image

log = logging.getLogger("moegs")

FREE_VIEW = "(free view)"
JPEG_QUALITY = 90


@dataclass
class ViewerOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    height: int = 240
    """Initial render height in pixels (width follows the browser window's aspect)."""
    fps: float | None = None
    """Playback FPS (default: the dataset's, else 10)."""
    ctx: RenderContext = CPU


@dataclass
class ClientState:
    """One browser tab, its render thread's wake-up event, and whether its camera has arrived yet."""

    client: Any
    dirty: threading.Event = field(default_factory=threading.Event)
    has_camera: bool = False


class Viewer:
    """A running viewer of ``model`` with the cameras and frames of ``dataset``."""

    def __init__(self, model: Renderable, dataset: Dataset, options: ViewerOptions) -> None:
        try:
            import viser
        except ImportError as exc:  # pragma: no cover - viser is a main dependency
            raise MissingDependencyError(f"moegs view needs viser ({exc}); pip install viser==1.1.1") from None
        self.model = model
        self.dataset = dataset
        self.options = options
        self.cameras = {f"{'test' if c.name in dataset.test_names else 'train'} {c.name}": c for c in dataset.cameras}
        self.near = min(c.near for c in dataset.cameras)
        self.far = max(c.far for c in dataset.cameras)
        self._clients: dict[int, ClientState] = {}
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()
        """One render at a time: numba's default threading layer must not be entered from two threads."""
        self._stop = threading.Event()
        self._fps_window: list[float] = []
        start_camera = dataset.test_cameras[0] if dataset.test_cameras else dataset.cameras[0]
        # one render before serving compiles the CPU kernels, so the first browser frame is not a long wait
        render_view(model, at_height(start_camera, 16), 0.0, view_modes(model.families)[0], ctx=options.ctx)
        self.server = viser.ViserServer(host=options.host, port=options.port, label="moegs view", verbose=False)
        self._set_initial_camera(start_camera)
        self._build_gui()
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)
        self._player = threading.Thread(target=self._play_loop, name="moegs-view-play", daemon=True)
        self._player.start()

    # ---- public ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.server.get_host()}:{self.server.get_port()}"

    def clients(self) -> list[ClientState]:
        with self._lock:
            return list(self._clients.values())

    def stop(self) -> None:
        """Stop playback, the render threads and the server."""
        self._stop.set()
        for state in self.clients():
            state.dirty.set()
        self.server.stop()

    # ---- GUI --------------------------------------------------------------------------------------
    def _build_gui(self) -> None:
        gui = self.server.gui
        n_frames = self.dataset.n_frames
        fps = self.options.fps or self.dataset.fps or 10.0
        with gui.add_folder("time"):
            self.frame_slider = gui.add_slider("frame", min=0, max=max(n_frames - 1, 1), step=1, initial_value=0,
                                               disabled=n_frames < 2)
            self.play = gui.add_checkbox("play", initial_value=False)
            self.fps = gui.add_number("playback FPS", initial_value=float(fps), min=0.1, max=120.0, step=0.1)
        with gui.add_folder("view"):
            modes = view_modes(self.model.families)
            self.mode = gui.add_dropdown("mode", modes, initial_value=modes[0])
            self.camera_choice = gui.add_dropdown("dataset camera", [FREE_VIEW, *self.cameras], initial_value=FREE_VIEW)
            max_height = max(1080, 2 * max(c.height for c in self.dataset.cameras))
            self.height = gui.add_slider("render height", min=16, max=max_height, step=1,
                                         initial_value=min(self.options.height, max_height))
        if len(self.model.families) > 1:
            gui.add_image(legend_image(self.model.families), label="experts (gate colours)", format="png")
        self.readout = gui.add_markdown("waiting for a browser...")
        for handle in (self.frame_slider, self.mode, self.height):
            handle.on_update(lambda _event: self._invalidate_all())
        self.camera_choice.on_update(lambda _event: self._jump_all())

    def _set_initial_camera(self, camera: Camera) -> None:
        """New tabs start looking through ``camera`` (look-at one unit ahead, up = the camera's -y)."""
        initial = self.server.initial_camera
        c2w = camera.R.T
        initial.fov = pose_of(camera).fov
        initial.position = camera.center
        initial.look_at = camera.center + c2w[:, 2]
        initial.up = -c2w[:, 1]

    # ---- clients ----------------------------------------------------------------------------------
    def _connect(self, client: Any) -> None:
        state = ClientState(client)
        with self._lock:
            self._clients[client.client_id] = state

        def camera_moved(_camera: Any) -> None:
            state.has_camera = True
            state.dirty.set()

        client.camera.on_update(camera_moved)
        threading.Thread(target=self._render_loop, args=(state,), name=f"moegs-view-{client.client_id}",
                         daemon=True).start()

    def _disconnect(self, client: Any) -> None:
        with self._lock:
            state = self._clients.pop(client.client_id, None)
        if state is not None:
            state.dirty.set()

    def _invalidate_all(self) -> None:
        for state in self.clients():
            state.dirty.set()

    def _jump_all(self) -> None:
        camera = self.cameras.get(self.camera_choice.value)
        if camera is None:
            return
        pose = pose_of(camera)
        c2w = camera.R.T
        for state in self.clients():
            if not state.has_camera:  # viser moves a camera only once the tab has reported one
                continue
            handle = state.client.camera
            with state.client.atomic():
                handle.fov = pose.fov
                handle.position = camera.center
                handle.look_at = camera.center + c2w[:, 2]
                handle.up_direction = -c2w[:, 1]
            state.dirty.set()
        self.camera_choice.value = FREE_VIEW  # so that picking the same camera again jumps again

    # ---- rendering --------------------------------------------------------------------------------
    def _render_loop(self, state: ClientState) -> None:
        while not self._stop.is_set():
            if not state.dirty.wait(timeout=0.5):
                continue
            state.dirty.clear()
            with self._lock:
                connected = state.client.client_id in self._clients
            if not connected or self._stop.is_set():
                return
            if not state.has_camera:  # a control changed before the tab sent its first camera
                continue
            try:
                self._render_for(state)
            except Exception:  # a render failure must not kill the tab's loop; it is logged with its traceback
                log.exception("moegs view: rendering failed")

    def _render_for(self, state: ClientState) -> None:
        cam = state.client.camera
        pose = BrowserPose(tuple(cam.wxyz), tuple(cam.position), float(cam.fov), float(cam.aspect))
        height, mode = int(self.height.value), self.mode.value
        dataset_camera = matching_camera(pose, self.dataset.cameras)
        if dataset_camera is not None:  # its own intrinsics; the grid keeps its frame to sit beside the ground truth
            camera = at_height(dataset_camera, height)
            if mode != GRID:
                camera = widened(camera, pose.aspect)
        else:
            camera = browser_camera(pose, height, self.near, self.far)
        frame = int(self.frame_slider.value)
        ground_truth = None
        if dataset_camera is not None and mode == GRID:
            ground_truth = resize_image(self.dataset.frame(dataset_camera.name, frame), camera.width, camera.height)
        with self._render_lock:
            start = time.perf_counter()
            image = render_view(self.model, camera, float(self.dataset.times[frame]), mode,
                                ctx=self.options.ctx, ground_truth=ground_truth)
            elapsed = time.perf_counter() - start
        state.client.scene.set_background_image(image, format="jpeg", jpeg_quality=JPEG_QUALITY)
        self._report(elapsed, camera, None if dataset_camera is None else dataset_camera.name)

    def _report(self, elapsed: float, camera: Camera, on_camera: str | None) -> None:
        with self._lock:
            self._fps_window = (self._fps_window + [elapsed])[-20:]
            fps = len(self._fps_window) / max(sum(self._fps_window), 1e-9)
        where = f"on dataset camera **{on_camera}**" if on_camera else "free view"
        ctx = self.options.ctx
        self.readout.content = (f"backend **{ctx.backend}** on {ctx.device} · **{fps:.1f}** render FPS · "
                                f"{camera.width}x{camera.height} · {where}")

    def _play_loop(self) -> None:
        """Step the frame slider while 'play' is on (wrapping around), at the chosen FPS."""
        while not self._stop.is_set():
            fps = max(float(self.fps.value), 0.1)
            if self._stop.wait(1.0 / fps):
                return
            if self.play.value and self.dataset.n_frames > 1:
                self.frame_slider.value = (int(self.frame_slider.value) + 1) % self.dataset.n_frames


def serve(viewer: Viewer, announce: Any = print) -> None:
    """Block until Ctrl-C, then stop the viewer cleanly."""
    announce(f"moegs view: open {viewer.url} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        announce("moegs view: stopped")
    finally:
        viewer.stop()
