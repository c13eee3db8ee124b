"""Reader for our generic calibrated-rig format: ``cameras.json`` + ``videos/<name>.mp4`` or
``frames/<name>/*.png`` (frames in file-name order).

Cameras may carry OpenCV distortion; the reader returns the frames as stored and
:mod:`moegs.data.undistort` turns them into pinhole images when the dataset is built. Test cameras
come from the file, else the first camera.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from moegs.cameras import cameras_from_json
from moegs.data.capture import Capture, SizeMismatch, assemble_capture, png_size, read_png
from moegs.data.video import iter_video, probe_video
from moegs.errors import InputError


def open_multiview(src: Path, *, truncate: bool = False, size_mismatch: SizeMismatch = None) -> Capture:
    """Open a multiview folder; videos are probed and PNG headers read, nothing decoded."""
    src = Path(src)
    cam_path = src / "cameras.json"
    if not cam_path.is_file():
        raise InputError(f"{cam_path}: cameras.json not found (multiview format needs it)")
    parsed = cameras_from_json(cam_path)
    names = [cam.name for cam in parsed.cameras]
    video_dir, frame_dir = src / "videos", src / "frames"
    videos = {p.stem: p for p in sorted(video_dir.glob("*.mp4"))} if video_dir.is_dir() else {}
    sequences = {p.name: p for p in sorted(frame_dir.iterdir()) if p.is_dir()} if frame_dir.is_dir() else {}
    stray = sorted((set(videos) | set(sequences)) - set(names))
    if stray:
        raise InputError(f"{src}: video/frames for camera(s) {stray} that {cam_path.name} does not list")

    sources: dict[str, str] = {}
    counts: dict[str, int] = {}
    sizes: dict[str, tuple[int, int]] = {}
    pngs: dict[str, list[Path]] = {}
    fps_found: list[float] = []
    for name in names:
        if name in videos:
            info = probe_video(videos[name])
            sources[name], counts[name], sizes[name] = str(videos[name]), info.n_frames, (info.width, info.height)
            if info.fps > 0:
                fps_found.append(info.fps)
        elif name in sequences:
            pngs[name] = sorted(sequences[name].glob("*.png"))
            if not pngs[name]:
                raise InputError(f"{sequences[name]}: camera {name}: no PNG frames")
            sources[name], counts[name], sizes[name] = str(sequences[name]), len(pngs[name]), png_size(pngs[name][0])
        else:
            raise InputError(f"{cam_path}: camera {name} has no video videos/{name}.mp4 nor frames/{name}/*.png")

    def reader(name: str, start: int, stop: int, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
        if name in pngs:
            return (read_png(p, sizes[name]) for p in pngs[name][start:stop])
        return iter_video(videos[name], start, stop, size=size)

    fps = parsed.fps if parsed.fps is not None else (max(fps_found) if fps_found else None)
    return assemble_capture(
        src, "multiview", parsed.cameras, parsed.test_cameras or [names[0]], fps,
        sources=sources, counts=counts, sizes=sizes, reader=reader,
        truncate=truncate, size_mismatch=size_mismatch,
    )
