"""Built-in synthetic dynamic scene: the demo input and the quality benchmark we control.

An analytic numpy ray caster (not Gaussian splatting, so the ground truth is not drawn from the
model class) renders a forward-facing rig like N3V and writes a raw N3V folder, so the demo goes
through the same reader as real data:

- ``cam00.mp4 .. camNN.mp4`` (H.264, 30 fps); ``cam00`` sits in the middle of the rig and is the
  held-out test camera, as in N3V;
- ``poses_bounds.npy``: LLFF rows ``[c2w 3x5 (down, right, back | centre | H, W, f), near, far]``;
- ``labels/camNN.npz``: ``labels`` uint8 [T, H, W], region id of the surface seen per pixel;
- ``regions.json`` (``{"names": REGION_NAMES}``) and ``scene.json`` (primitives, motion, rig,
  preset and seed: enough to recompute every surface, see :func:`surface_distance`).

Each region moves differently so different dynamic experts win different places: a static
textured room, a rigid box on a smooth trajectory, a small fast bouncing ball, a waving flag
(non-rigid) and a static panel whose colour changes. Frame ``i`` is time ``t = i / n_frames``.

``rig="surround"`` instead gathers the same regions in a closed textured room and puts six
cameras around them, 55-65 degrees apart (like most labs' 4-8 camera rigs): COLMAP matches
little between such views, which is what space carving (:mod:`moegs.data.carving`) is for.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moegs.data.synth_render import SUPERSAMPLE, RigCamera, look_at, render_camera
from moegs.data.synth_scene import Box, HeightField, Rect, Scene, Sphere, Tint, Wave
from moegs.data.synth_texture import make_texture
from moegs.data.video import write_video
from moegs.errors import InputError
from moegs.pools import pool_size
from moegs.progress import progress_bar

REGION_NAMES: list[str] = ["background", "rigid", "fast", "deforming", "colour"]
TEST_CAMERA = "cam00"
FPS = 30.0
# imageio-ffmpeg quality 9 is x264 CRF 5: decoded frames stay > 35 dB PSNR from the raw render.
VIDEO_QUALITY = 9
HFOV_DEG = 60.0
FLOOR_Y = 1.2
# Where every camera looks: the middle of the moving objects, ~4 units in front of the rig.
RIG_TARGET = (0.0, 0.0, 4.0)
# Half-axes of the ellipse the outer cameras sit on (x, y), and how far its sides curve forward.
RIG_RADII = (1.0, 0.4)
RIG_CURVE = 0.15


@dataclass(frozen=True)
class SynthPreset:
    """Rig size, image size and clip length of one generator preset."""

    n_cams: int
    width: int
    height: int
    n_frames: int

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2 or self.width < 16 or self.height < 16:
            raise InputError(f"synthetic preset: size {self.width}x{self.height} must be even and at least 16")
        if not 3 <= self.n_cams <= 100 or self.n_frames < 1:
            raise InputError(f"synthetic preset: need 3-100 cameras and at least 1 frame, got {self}")


PRESETS: dict[str, SynthPreset] = {
    "tiny": SynthPreset(n_cams=8, width=96, height=72, n_frames=8),
    "demo": SynthPreset(n_cams=10, width=256, height=192, n_frames=24),
    "large": SynthPreset(n_cams=12, width=640, height=480, n_frames=60),
}


def build_scene(rng: np.random.Generator) -> Scene:
    """The fixed layout, with motion phases and orientations drawn from ``rng``."""
    two_pi = 2.0 * np.pi
    return Scene(
        primitives=(
            Rect(name="back_wall", region=0, texture="rich", texel=0.03,
                 origin=(-7.5, -4.0, 6.0), u_axis=(1.0, 0.0, 0.0), v_axis=(0.0, 1.0, 0.0), size=(15.0, 4.0 + FLOOR_Y)),
            Rect(name="floor", region=0, texture="rich", texel=0.03,
                 origin=(-7.5, FLOOR_Y, -0.5), u_axis=(1.0, 0.0, 0.0), v_axis=(0.0, 0.0, 1.0), size=(15.0, 6.5)),
            Rect(name="colour_panel", region=4, texture="grey", texel=0.012,
                 origin=(-2.4, -1.75, 5.2), u_axis=(1.0, 0.0, 0.0), v_axis=(0.0, 1.0, 0.0), size=(1.7, 0.9),
                 tint=Tint(hue_cycles=1.0, pulse_cycles=2.0, phase=float(rng.uniform()), saturation=0.15)),
            Box(name="rigid_box", region=1, texture="faces", texel=0.01,
                half_size=(0.3, 0.25, 0.3), centre=(-1.3, 0.15, 3.9), amplitude=(0.35, 0.12, 0.3),
                frequency=(1.0, 2.0, 1.0), phase=tuple(float(x) for x in rng.uniform(0.0, two_pi, 3)),
                axis=tuple(float(x) for x in np.array([0.3, 1.0, 0.2]) + rng.uniform(-0.15, 0.15, 3)),
                angle0=float(rng.uniform(0.0, two_pi)), spin=1.5 * np.pi),
            Sphere(name="fast_ball", region=2, texture="checker", texel=0.004,
                   radius=0.15, floor_y=FLOOR_Y, x0=0.35, x_amplitude=0.45, x_cycles=1.0, z0=3.0, z_amplitude=0.25,
                   height=0.85, bounces=3.0, bounce_phase=float(rng.uniform(0.1, 0.5)),
                   axis=(0.2, 0.3, 1.0), spin=6.0 * np.pi),
            HeightField(name="flag", region=3, texture="flag", texel=0.01,
                        x0=0.55, y0=-1.35, width=1.4, height=1.1, z0=4.5,
                        waves=(Wave(amplitude=0.13, kx=two_pi, ky=0.0, omega=two_pi * 1.5,
                                    phase=float(rng.uniform(0.0, two_pi))),
                               Wave(amplitude=0.04, kx=1.5, ky=two_pi / 1.5, omega=two_pi,
                                    phase=float(rng.uniform(0.0, two_pi))))),
        ),
        light=(-0.3, -0.7, -0.65),
        ambient=0.5,
        diffuse=0.6,
        sky=(0.6, 0.7, 0.8),
    )  # fmt: skip


# Surround rig: cameras on a circle around SURROUND_CENTRE (angles about the vertical axis, 0 = looking
# along +z), 55-65 degrees apart, inside a closed textured room; cam00 is held out. They hang 3.2 m
# above the floor looking down at the scene, as studio rigs are mounted: from eye height, most of a
# view was room wall that only one training camera (or none) sees, which no method can reconstruct
# for the held-out camera (see tests/test_surround.py, coverage of the held-out view).
SURROUND_ANGLES_DEG = (0.0, 55.0, 115.0, 180.0, 240.0, 300.0)
SURROUND_CENTRE = (0.0, 0.4, 4.0)
SURROUND_RADIUS = 3.2
SURROUND_HEIGHT = -2.0
SURROUND_HFOV_DEG = 65.0
# Texel of the surround room's walls and floor (the forward scene's is 0.03): its finest noise is then
# 3 texels = 18 cm, about 2.5 pixels at 5 m in the tiny preset, where 0.03 put it below 1.5 pixels,
# detail no view 55-65 degrees away can place (it reaches a held-out view as noise, or not at all).
ROOM_TEXEL = 0.06
RIGS: tuple[str, ...] = ("forward", "surround")


def build_surround_scene(rng: np.random.Generator) -> Scene:
    """The same five regions gathered around :data:`SURROUND_CENTRE` in a closed room, for a surround rig."""
    two_pi = 2.0 * np.pi
    top, height = -4.0, 4.0 + FLOOR_Y
    walls = (
        Rect(name="wall_back", region=0, texture="rich", texel=ROOM_TEXEL,
             origin=(-5.0, top, 9.0), u_axis=(1.0, 0.0, 0.0), v_axis=(0.0, 1.0, 0.0), size=(10.0, height)),
        Rect(name="wall_front", region=0, texture="rich", texel=ROOM_TEXEL,
             origin=(-5.0, top, -1.0), u_axis=(1.0, 0.0, 0.0), v_axis=(0.0, 1.0, 0.0), size=(10.0, height)),
        Rect(name="wall_left", region=0, texture="rich", texel=ROOM_TEXEL,
             origin=(-5.0, top, -1.0), u_axis=(0.0, 0.0, 1.0), v_axis=(0.0, 1.0, 0.0), size=(10.0, height)),
        Rect(name="wall_right", region=0, texture="rich", texel=ROOM_TEXEL,
             origin=(5.0, top, -1.0), u_axis=(0.0, 0.0, 1.0), v_axis=(0.0, 1.0, 0.0), size=(10.0, height)),
        Rect(name="floor", region=0, texture="rich", texel=ROOM_TEXEL,
             origin=(-5.0, FLOOR_Y, -1.0), u_axis=(1.0, 0.0, 0.0), v_axis=(0.0, 0.0, 1.0), size=(10.0, 10.0)),
    )
    movers = (
        Rect(name="colour_panel", region=4, texture="grey", texel=0.012,
             origin=(-1.6, -1.4, 4.9), u_axis=(1.0, 0.0, 0.0), v_axis=(0.0, 1.0, 0.0), size=(1.0, 0.7),
             tint=Tint(hue_cycles=1.0, pulse_cycles=2.0, phase=float(rng.uniform()), saturation=0.15)),
        Box(name="rigid_box", region=1, texture="faces", texel=0.01,
            half_size=(0.3, 0.25, 0.3), centre=(-0.6, 0.5, 3.4), amplitude=(0.3, 0.1, 0.25),
            frequency=(1.0, 2.0, 1.0), phase=tuple(float(x) for x in rng.uniform(0.0, two_pi, 3)),
            axis=tuple(float(x) for x in np.array([0.3, 1.0, 0.2]) + rng.uniform(-0.15, 0.15, 3)),
            angle0=float(rng.uniform(0.0, two_pi)), spin=1.5 * np.pi),
        Sphere(name="fast_ball", region=2, texture="checker", texel=0.004,
               radius=0.18, floor_y=FLOOR_Y, x0=0.6, x_amplitude=0.4, x_cycles=1.0, z0=3.6, z_amplitude=0.3,
               height=0.85, bounces=3.0, bounce_phase=float(rng.uniform(0.1, 0.5)),
               axis=(0.2, 0.3, 1.0), spin=6.0 * np.pi),
        HeightField(name="flag", region=3, texture="flag", texel=0.01,
                    x0=0.0, y0=-1.2, width=1.1, height=0.9, z0=4.7,
                    waves=(Wave(amplitude=0.08, kx=two_pi, ky=0.0, omega=two_pi * 1.5,
                                phase=float(rng.uniform(0.0, two_pi))),
                           Wave(amplitude=0.03, kx=1.5, ky=two_pi / 1.5, omega=two_pi,
                                phase=float(rng.uniform(0.0, two_pi))))),
    )
    return Scene(primitives=walls + movers, light=(-0.3, -0.7, -0.65), ambient=0.5, diffuse=0.6, sky=(0.6, 0.7, 0.8))  # fmt: skip


def make_surround_rig(preset: SynthPreset) -> list[RigCamera]:
    """Cameras at :data:`SURROUND_ANGLES_DEG` around the scene, all looking at its centre (``n_cams`` ignored)."""
    focal = 0.5 * preset.width / np.tan(np.radians(0.5 * SURROUND_HFOV_DEG))
    target = np.asarray(SURROUND_CENTRE)
    cams = []
    for i, angle in enumerate(np.radians(SURROUND_ANGLES_DEG)):
        centre = np.array([-np.sin(angle) * SURROUND_RADIUS, SURROUND_HEIGHT, target[2] - np.cos(angle) * SURROUND_RADIUS])
        cams.append(look_at(f"cam{i:02d}", centre, target, preset.width, preset.height, focal))
    return cams


def make_rig(preset: SynthPreset) -> list[RigCamera]:
    """``cam00`` at the origin, the others evenly on a forward-curved ellipse around it, all
    looking at :data:`RIG_TARGET`; horizontal field of view :data:`HFOV_DEG`."""
    focal = 0.5 * preset.width / np.tan(np.radians(0.5 * HFOV_DEG))
    centres = [np.zeros(3)]
    for k in range(preset.n_cams - 1):
        angle = np.pi + 2.0 * np.pi * k / (preset.n_cams - 1)
        x, y = RIG_RADII[0] * np.cos(angle), RIG_RADII[1] * np.sin(angle)
        centres.append(np.array([x, y, RIG_CURVE * (x / RIG_RADII[0]) ** 2]))
    target = np.asarray(RIG_TARGET)
    return [look_at(f"cam{i:02d}", c, target, preset.width, preset.height, focal) for i, c in enumerate(centres)]


def llff_row(cam: RigCamera, near: float, far: float) -> np.ndarray:
    """One poses_bounds row: c2w columns (down, right, back) = OpenCV (y, x, -z), centre, (H, W, f)."""
    c2w = cam.R.T
    pose = np.stack([c2w[:, 1], c2w[:, 0], -c2w[:, 2], cam.centre, [cam.height, cam.width, cam.focal]], axis=1)
    return np.concatenate([pose.ravel(), [near, far]])


def generate(out_dir: Path, preset: str = "demo", seed: int = 0, progress: bool = True,
             rig: str = "forward") -> dict[str, Any]:
    """Render the scene and write a raw N3V folder at ``out_dir`` (missing or empty).

    ``rig="forward"`` is the N3V-like rig; ``"surround"`` puts :data:`SURROUND_ANGLES_DEG` cameras
    around a closed room (the preset gives image size and clip length).

    Everything is written to ``<out_dir>.partial`` first and renamed at the end, so an interrupted
    run never leaves a folder that looks complete. Returns a summary with ``cams``, ``size``
    ([W, H]), ``frames`` and ``seconds``.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown synthetic preset {preset!r} (choose from {', '.join(PRESETS)})")
    if rig not in RIGS:
        raise InputError(f"unknown synthetic rig {rig!r} (choose from {', '.join(RIGS)})")
    spec = PRESETS[preset]
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: already exists and is not an empty folder")
    start = time.perf_counter()

    layout_seq, texture_seq = np.random.SeedSequence(seed).spawn(2)
    scene = _layout(layout_seq, rig)
    texture_rngs = [np.random.default_rng(s) for s in texture_seq.spawn(len(scene.primitives))]
    textures = {p.name: make_texture(p, rng) for p, rng in zip(scene.primitives, texture_rngs)}
    cams = make_rig(spec) if rig == "forward" else make_surround_rig(spec)

    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    (partial / "labels").mkdir(parents=True)
    with progress_bar(f"synthetic scene ({preset}, {rig})", total=len(cams) * spec.n_frames, enabled=progress) as bar:

        def write_camera(cam: RigCamera) -> tuple[float, float]:
            result = render_camera(scene, textures, cam, spec.n_frames, bar.advance)
            write_video(partial / f"{cam.name}.mp4", result.frames, fps=FPS, quality=VIDEO_QUALITY)
            np.savez_compressed(partial / "labels" / f"{cam.name}.npz", labels=result.labels)
            return 0.9 * result.depth_min, 1.1 * result.depth_max

        # Cameras render independently (numpy lets go of the GIL): one per core, at most 4 at once,
        # as each holds its supersampled rays and its frames.
        with ThreadPoolExecutor(max_workers=pool_size(len(cams), cap=4)) as pool:
            bounds = list(pool.map(write_camera, cams))
    np.save(partial / "poses_bounds.npy", np.stack([llff_row(cam, *nf) for cam, nf in zip(cams, bounds)]))
    (partial / "regions.json").write_text(json.dumps({"names": REGION_NAMES}, indent=2) + "\n")
    info = {
        "generator": "moegs.data.synthetic",
        "version": 1,
        "preset": {"name": preset, **asdict(spec)},
        "rig": rig,
        "seed": seed,
        "fps": FPS,
        "n_frames": spec.n_frames,
        "time": "t = frame / n_frames",
        "world": "OpenCV-like axes: x right, y down, z away from the rig; units ~ metres",
        "supersample": SUPERSAMPLE,
        "region_names": REGION_NAMES,
        "test_camera": TEST_CAMERA,
        "scene": scene.to_json(),
        "cameras": [{**cam.to_json(), "near": nf[0], "far": nf[1]} for cam, nf in zip(cams, bounds)],
    }
    (partial / "scene.json").write_text(json.dumps(info, indent=2) + "\n")
    if out_dir.exists():
        out_dir.rmdir()
    partial.rename(out_dir)
    return {
        "out_dir": str(out_dir),
        "preset": preset,
        "rig": rig,
        "seed": seed,
        "cams": len(cams),
        "size": [spec.width, spec.height],
        "frames": spec.n_frames,
        "test_camera": TEST_CAMERA,
        "near": float(min(b[0] for b in bounds)),
        "far": float(max(b[1] for b in bounds)),
        "seconds": round(time.perf_counter() - start, 3),
    }


def load_scene_info(raw_dir: Path) -> tuple[dict[str, Any], Scene]:
    """``scene.json`` of a generated folder, and the scene rebuilt from it."""
    path = Path(raw_dir) / "scene.json"
    if not path.is_file():
        raise InputError(f"{path}: not found (not a folder written by the synthetic generator?)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if "scene" not in info or "n_frames" not in info:
        raise InputError(f"{path}: missing 'scene' or 'n_frames'")
    return info, Scene.from_json(info["scene"])


def surface_distance(raw_dir: Path, points: np.ndarray, frame: int = 0) -> np.ndarray:
    """Distance of each world point [N, 3] to the nearest true surface at ``frame``.

    Used to score COLMAP triangulation against the exact geometry (all surfaces, static and
    moving, at time ``frame / n_frames``).
    """
    info, scene = load_scene_info(raw_dir)
    n_frames = int(info["n_frames"])
    if not 0 <= frame < n_frames:
        raise InputError(f"frame {frame} is outside [0, {n_frames})")
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"points must have shape [N, 3], got {list(points.shape)}")
    return scene.distance(points, frame / n_frames)


def view_coverage(raw_dir: Path, camera: str, others: list[str], frame: int = 0) -> np.ndarray:
    """Per pixel of ``camera`` [H, W]: how many of the cameras ``others`` see the surface point that
    pixel shows at ``frame`` (inside their image and not hidden by anything in front).

    A held-out view is only learnable where training cameras see its content: one view fixes a
    colour along a ray but not the depth; two or more fix the point.
    """
    info, scene = load_scene_info(raw_dir)
    rig = {c["name"]: c for c in info["cameras"]}
    unknown = sorted({camera, *others} - set(rig))
    if unknown:
        raise InputError(f"{raw_dir}: no camera(s) {unknown} in scene.json")
    t = frame / int(info["n_frames"])
    cam = RigCamera.from_json(rig[camera])
    v, u = np.mgrid[0 : cam.height, 0 : cam.width]
    points = _pixel_hits(scene, cam, np.stack([u.ravel(), v.ravel()], axis=1) + 0.5, t)
    count = np.zeros(len(points), dtype=np.int32)
    for name in others:
        other = RigCamera.from_json(rig[name])
        x_cam = (points - other.centre) @ other.R.T
        depth = x_cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = x_cam[:, :2] / depth[:, None] * other.focal + other.K[:2, 2]
            inside = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < other.width) & (uv[:, 1] >= 0) & (uv[:, 1] < other.height)
            ray = (points - other.centre) / depth[:, None]  # camera z = 1, so a hit's s is its depth
        ray[~inside] = other.R[2]
        unhidden = _first_hit(scene, other.centre, ray, t) >= depth * (1 - 1e-4) - 1e-4
        count += inside & unhidden
    return count.reshape(cam.height, cam.width)


def surface_samples(preset: str, n: int, seed: int = 0, scene_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points [n, 3] on the surfaces the forward rig sees, and their times [n] in [0, 1).

    Each point is the first hit of the ray through a random pixel of a random camera at a random
    frame of the scene ``generate(preset, seed=scene_seed)`` renders: what a structure-from-motion
    initialisation over every frame finds, with the truth's density per view. For benchmarks that
    need a scene's Gaussians without its frames."""
    if preset not in PRESETS:
        raise InputError(f"unknown synthetic preset {preset!r} (choose from {', '.join(PRESETS)})")
    if n <= 0:
        raise InputError(f"need a positive number of surface samples, got {n}")
    spec = PRESETS[preset]
    scene = _layout(np.random.SeedSequence(scene_seed).spawn(2)[0], "forward")
    cams = make_rig(spec)
    rng = np.random.default_rng(seed)
    cam_of, frame_of = rng.integers(len(cams), size=n), rng.integers(spec.n_frames, size=n)
    pixels = rng.uniform(0.0, 1.0, size=(n, 2)) * [spec.width, spec.height]
    points = np.empty((n, 3))
    for c, cam in enumerate(cams):
        for f in range(spec.n_frames):
            rows = np.nonzero((cam_of == c) & (frame_of == f))[0]
            if rows.size == 0:
                continue
            points[rows] = _pixel_hits(scene, cam, pixels[rows], f / spec.n_frames)
    hit = np.isfinite(points).all(axis=1)
    return points[hit], (frame_of / spec.n_frames)[hit]


def _layout(layout_seq: np.random.SeedSequence, rig: str) -> Scene:
    """The scene of a rig laid out from the layout half of a seed (``generate`` spawns it)."""
    return (build_scene if rig == "forward" else build_surround_scene)(np.random.default_rng(layout_seq))


def _pixel_hits(scene: Scene, cam: RigCamera, pixels: np.ndarray, t: float) -> np.ndarray:
    """World points [n, 3] the image positions ``pixels`` [n, 2] (x, y in pixels) of ``cam`` show at
    time t: the first hit along each ray (inf where it hits nothing)."""
    dirs = np.column_stack([(pixels - cam.K[:2, 2]) / cam.focal, np.ones(len(pixels))]) @ cam.R
    return cam.centre + _first_hit(scene, cam.centre, dirs, t)[:, None] * dirs


def _first_hit(scene: Scene, origin: np.ndarray, dirs: np.ndarray, t: float) -> np.ndarray:
    return np.min([p.intersect(origin, dirs, t).s for p in scene.primitives], axis=0)
