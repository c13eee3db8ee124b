"""Reader for the N3V (Neural 3D Video) layout: ``camXX.mp4`` + LLFF ``poses_bounds.npy``.

Row i of ``poses_bounds.npy`` belongs to the i-th video in name order (as every N3V loader
assumes). The test camera is ``cam00`` (the centre camera), or the first camera if there is none.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from moegs.cameras import cameras_from_llff
from moegs.data.capture import Capture, SizeMismatch, assemble_capture
from moegs.data.video import iter_video, probe_video
from moegs.errors import InputError

TEST_CAMERA = "cam00"


def open_n3v(src: Path, *, truncate: bool = False, size_mismatch: SizeMismatch = None) -> Capture:
    """Open an N3V folder; every video is probed (frame count, size) but not decoded."""
    src = Path(src)
    pb_path = src / "poses_bounds.npy"
    if not pb_path.is_file():
        raise InputError(f"{pb_path}: poses_bounds.npy not found (N3V format needs it next to the camXX.mp4 videos)")
    videos = sorted(src.glob("cam*.mp4"))
    if not videos:
        raise InputError(f"{src}: no camXX.mp4 videos found")
    try:
        poses_bounds = np.load(pb_path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{pb_path}: not a readable .npy array ({exc})") from None
    names = [v.stem for v in videos]
    if poses_bounds.ndim == 2 and poses_bounds.shape[0] != len(names):
        raise InputError(f"{pb_path}: {poses_bounds.shape[0]} camera rows but {len(names)} videos "
                         f"({names[0]} .. {names[-1]}); every video needs exactly one row, in name order")
    cameras = cameras_from_llff(poses_bounds, names, where=str(pb_path))
    infos = {v.stem: probe_video(v) for v in videos}
    by_name = {v.stem: v for v in videos}

    def reader(name: str, start: int, stop: int, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
        return iter_video(by_name[name], start, stop, size=size)

    fps_values = {round(info.fps, 3) for info in infos.values() if info.fps > 0}
    test = [TEST_CAMERA] if TEST_CAMERA in names else [names[0]]
    return assemble_capture(
        src, "n3v", cameras, test, max(fps_values) if fps_values else None,
        sources={n: str(p) for n, p in by_name.items()},
        counts={n: i.n_frames for n, i in infos.items()},
        sizes={n: (i.width, i.height) for n, i in infos.items()},
        reader=reader, truncate=truncate, size_mismatch=size_mismatch,
    )
