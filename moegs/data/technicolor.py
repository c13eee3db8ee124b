"""Reader for the Technicolor light-field videos: ``<Scene>_undist_<frame:05d>_<cam:02d>.png``
plus ``cameras_parameters.txt`` (undistorted release).

Cameras are named ``camXX`` after the two-digit suffix; line k of the parameter file is camera k.
The test camera is ``cam10`` as in STG, Ex4DGS and E-D3DGS (the first camera if the rig has no
``cam10``). The calibration does not store the image size, so it is read from the first PNG.
Frame index i is the i-th frame number present for a camera (clips usually start at 1, Painter at 0);
the file numbers are kept in :attr:`Capture.frame_ids`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from moegs.cameras import cameras_from_technicolor
from moegs.data.capture import Capture, SizeMismatch, assemble_capture, png_size, read_png
from moegs.errors import InputError

PATTERN = re.compile(r"^(?P<scene>.+)_undist_(?P<frame>\d{5})_(?P<cam>\d{2})\.png$")
TEST_CAMERA = "cam10"
FPS = 30.0


def open_technicolor(src: Path, *, truncate: bool = False, size_mismatch: SizeMismatch = None) -> Capture:
    """Open a Technicolor folder (PNG headers are read; pixels are decoded on demand)."""
    src = Path(src)
    params = src / "cameras_parameters.txt"
    if not params.is_file():
        raise InputError(f"{params}: cameras_parameters.txt not found (Technicolor format needs it next to the PNGs)")
    files: dict[str, dict[int, Path]] = defaultdict(dict)
    scenes = set()
    for path in sorted(src.glob("*.png")):
        match = PATTERN.match(path.name)
        if match:
            scenes.add(match["scene"])
            files[f"cam{int(match['cam']):02d}"][int(match["frame"])] = path
    if not files:
        raise InputError(f"{src}: no <Scene>_undist_<frame:05d>_<cam:02d>.png images found")
    if len(scenes) > 1:
        raise InputError(f"{src}: images of several scenes mixed in one folder: {sorted(scenes)}")
    first_png = min(next(iter(f.values())) for f in files.values())
    cameras = cameras_from_technicolor(params, *png_size(first_png))
    names = [cam.name for cam in cameras]
    stray = sorted(set(files) - set(names))
    if stray:
        raise InputError(f"{src}: images for camera(s) {stray} that {params.name} does not list ({len(names)} cameras)")
    missing = [n for n in names if n not in files]
    if missing:
        raise InputError(f"{params}: camera(s) {missing} have no images in {src}")
    ordered = {n: [files[n][k] for k in sorted(files[n])] for n in names}
    sizes = {n: png_size(paths[0]) for n, paths in ordered.items()}

    def reader(name: str, start: int, stop: int, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
        return (read_png(p, sizes[name]) for p in ordered[name][start:stop])

    test = [TEST_CAMERA] if TEST_CAMERA in names else [names[0]]
    return assemble_capture(
        src, "technicolor", cameras, test, FPS,
        sources={n: str(ordered[n][0]) for n in names},
        counts={n: len(ordered[n]) for n in names},
        sizes=sizes, reader=reader,
        frame_ids={n: sorted(files[n]) for n in names},
        truncate=truncate, size_mismatch=size_mismatch,
    )
