"""The common view of a raw multi-view capture, whatever format it came in.

Each format module (``n3v``, ``technicolor``, ``multiview``) finds the cameras, the frame sources
and their sizes and counts, then hands them to :func:`assemble_capture`, which applies the checks
every format shares (frame counts, frame size versus calibration, optional region labels). Nothing
is decoded until :meth:`Capture.read_frames` is called.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import imageio.v3 as iio
import numpy as np

from moegs.cameras import Camera
from moegs.errors import InputError

Format = Literal["n3v", "technicolor", "multiview"]
SizeMismatch = Literal["keep", "scale", "crop"] | None
SIZE_MISMATCH_CHOICES: tuple[str, ...] = ("keep", "scale", "crop")
ASPECT_TOLERANCE_PX = 1.0
"""``scale`` accepts a size whose aspect ratio differs from the calibration's by at most this many pixels."""
FORMATS: tuple[str, ...] = ("n3v", "technicolor", "multiview")

FrameReader = Callable[[str, int, int, "tuple[int, int] | None"], Iterator[np.ndarray]]
"""(camera, start, stop, size hint) -> frames; a video reader scales to the (width, height) hint while
decoding, an image-sequence reader ignores it."""


@dataclass
class Capture:
    """Cameras, split, frame sources and optional labels of one raw capture.

    ``cameras`` already match the frames ``read_frames`` returns (rescaled or cropped per
    ``size_mismatch``); ``frame_size_per_camera`` is the size stored in the source, as (width, height).
    ``n_frames`` is the common frame count (the shortest when truncating); ``frame_ids[i]`` is the
    source's own number of frame ``i`` (file numbering for image sequences).
    """

    src: Path
    fmt: str
    cameras: list[Camera]
    test_cameras: list[str]
    fps: float | None
    n_frames_per_camera: dict[str, int]
    frame_size_per_camera: dict[str, tuple[int, int]]
    n_frames: int
    frame_ids: list[int]
    region_names: list[str] | None
    reader: FrameReader = field(repr=False)
    crop_offsets: dict[str, tuple[int, int]] = field(default_factory=dict)
    label_files: dict[str, Path] = field(default_factory=dict)

    def camera(self, name: str) -> Camera:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise InputError(f"{self.src}: no camera named {name!r} (have {[c.name for c in self.cameras]})")

    @property
    def has_labels(self) -> bool:
        return bool(self.label_files)

    def iter_frames(self, name: str, start: int = 0, stop: int | None = None,
                    size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
        """uint8 frames [H, W, 3] of camera ``name`` for ``start <= i < stop``, one at a time (videos decode once).

        ``size`` (width, height) asks a video to be scaled by ffmpeg while decoding (much cheaper than
        decoding full size and resizing); it is ignored for cropped cameras and image sequences, so
        callers still check the size they got.
        """
        start, stop = self._range(start, stop)
        self.camera(name)
        count = 0
        hint = None if name in self.crop_offsets else size
        for frame in self.reader(name, start, stop, hint):
            count += 1
            yield self._crop(name, frame[None])[0]
        if count != stop - start:
            raise InputError(f"{self.src}: camera {name}: got {count} frames for range [{start}, {stop})")

    def read_frames(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """uint8 frames [T, H, W, 3] of camera ``name`` for ``start <= i < stop`` at the camera's size."""
        return np.stack(list(self.iter_frames(name, start, stop)))

    def labels(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray | None:
        """uint8 region labels [T, H, W] for the same frames as :meth:`read_frames`, or None."""
        if name not in self.label_files:
            return None
        start, stop = self._range(start, stop)
        return self._crop(name, _load_labels(self.label_files[name])[start:stop])

    def _range(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.n_frames if stop is None else stop
        if not 0 <= start < stop <= self.n_frames:
            raise InputError(f"{self.src}: frame range [{start}, {stop}) outside the {self.n_frames} frames available")
        return start, stop

    def _crop(self, name: str, array: np.ndarray) -> np.ndarray:
        if name not in self.crop_offsets:
            return array
        cam = self.camera(name)
        x0, y0 = self.crop_offsets[name]
        return np.ascontiguousarray(array[:, y0:y0 + cam.height, x0:x0 + cam.width])


def open_capture(src: Path, fmt: Format, *, truncate: bool = False, size_mismatch: SizeMismatch = None) -> Capture:
    """Open a raw capture folder of format ``fmt`` (``n3v``, ``technicolor`` or ``multiview``)."""
    src = Path(src)
    if fmt not in FORMATS:
        raise InputError(f"unknown input format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if size_mismatch is not None and size_mismatch not in SIZE_MISMATCH_CHOICES:
        raise InputError(f"unknown size_mismatch {size_mismatch!r}; expected one of {', '.join(SIZE_MISMATCH_CHOICES)}")
    if not src.is_dir():
        raise InputError(f"{src}: input folder not found")
    if fmt == "n3v":
        from moegs.data.n3v import open_n3v as opener
    elif fmt == "technicolor":
        from moegs.data.technicolor import open_technicolor as opener
    else:
        from moegs.data.multiview import open_multiview as opener
    return opener(src, truncate=truncate, size_mismatch=size_mismatch)


def assemble_capture(
    src: Path,
    fmt: str,
    cameras: list[Camera],
    test_cameras: list[str],
    fps: float | None,
    sources: dict[str, str],
    counts: dict[str, int],
    sizes: dict[str, tuple[int, int]],
    reader: FrameReader,
    *,
    frame_ids: dict[str, list[int]] | None = None,
    truncate: bool = False,
    size_mismatch: SizeMismatch = None,
) -> Capture:
    """Apply the shared checks and build a :class:`Capture`.

    ``sources[name]`` is the file or folder holding camera ``name``'s frames (for messages);
    ``sizes[name]`` the (width, height) found there.
    """
    names = [cam.name for cam in cameras]
    n_frames = _common_frame_count(src, names, counts, truncate)
    cameras, crops = _match_sizes(cameras, sources, sizes, size_mismatch)
    ids = (frame_ids or {}).get(names[0], list(range(counts[names[0]])))[:n_frames]
    label_files, region_names = _find_labels(src, names, counts, sizes)
    return Capture(
        src=src, fmt=fmt, cameras=cameras, test_cameras=list(test_cameras), fps=fps,
        n_frames_per_camera=dict(counts), frame_size_per_camera=dict(sizes), n_frames=n_frames,
        frame_ids=ids, region_names=region_names, reader=reader, crop_offsets=crops, label_files=label_files,
    )


def _common_frame_count(src: Path, names: list[str], counts: dict[str, int], truncate: bool) -> int:
    distinct = {counts[n] for n in names}
    shortest = min(distinct)
    if len(distinct) > 1 and not truncate:
        listing = ", ".join(f"{n}: {counts[n]}" for n in names)
        raise InputError(f"{src}: cameras have different frame counts ({listing}); "
                         f"use --truncate to keep the first {shortest} of each")
    return shortest


def _match_sizes(cameras: list[Camera], sources: dict[str, str], sizes: dict[str, tuple[int, int]],
                 size_mismatch: SizeMismatch) -> tuple[list[Camera], dict[str, tuple[int, int]]]:
    """Reconcile each camera's calibrated size with its frames' real size, per ``size_mismatch``.

    ``keep``: the intrinsics stay and the camera takes the frames' size (the usual case: a video
    cut at its right or bottom edge). ``scale``: intrinsics rescale to the frames, only when the
    aspect ratio agrees within a pixel. ``crop``: frames are centre-cropped to the calibration.
    Every camera that cannot be reconciled is named in one error.
    """
    out, crops, problems = [], {}, []
    for cam in cameras:
        width, height = sizes[cam.name]
        if (width, height) == (cam.width, cam.height):
            out.append(cam)
            continue
        where = f"{sources[cam.name]} (camera {cam.name}): frames {width}x{height}, calibration {cam.width}x{cam.height}"
        if size_mismatch is None:
            problems.append(where)
        elif size_mismatch == "keep":
            cx, cy = cam.K[0, 2], cam.K[1, 2]
            if not (0 < cx < width and 0 < cy < height):
                problems.append(f"{where}: principal point ({cx:.1f}, {cy:.1f}) lies outside the frames")
            else:
                out.append(_with_size(cam, width, height))
        elif size_mismatch == "scale":
            off = aspect_mismatch_px(cam.width, cam.height, width, height)
            if off > ASPECT_TOLERANCE_PX:
                problems.append(f"{where}: aspect ratio {width / height:.4f} vs {cam.width / cam.height:.4f} "
                                f"({off:.1f} px off)")
            else:
                out.append(cam.resized(width, height))
        elif width < cam.width or height < cam.height:
            problems.append(f"{where}: cannot crop to a larger size")
        else:
            crops[cam.name] = ((width - cam.width) // 2, (height - cam.height) // 2)
            out.append(cam)
    if problems:
        advice = {
            None: "use --size-mismatch keep (keep the intrinsics, use the frames' size), scale (rescale the "
                  "intrinsics) or crop (centre-crop the frames)",
            "keep": "check the calibration, or use --size-mismatch scale or crop",
            "scale": "scaling would make the intrinsics anisotropic; use --size-mismatch keep or crop",
            "crop": "use --size-mismatch keep or scale",
        }[size_mismatch]
        count = f"{len(problems)} of {len(cameras)} cameras" if len(cameras) > 1 else "the camera"
        raise InputError(f"frame size differs from the calibration for {count}: " + "; ".join(problems) + f"; {advice}")
    return out, crops


def _with_size(cam: Camera, width: int, height: int) -> Camera:
    """The same intrinsics and pose for frames of another size (pixels keep their coordinates)."""
    return Camera(cam.name, width, height, cam.K.copy(), cam.R.copy(), cam.t.copy(),
                  None if cam.dist is None else cam.dist.copy(), cam.near, cam.far)


def aspect_mismatch_px(calib_width: int, calib_height: int, width: int, height: int) -> float:
    """How many pixels the frames' height (or width) differs from the calibration's aspect ratio at the frames' size."""
    return max(abs(calib_height * width / calib_width - height), abs(calib_width * height / calib_height - width))


def _find_labels(src: Path, names: list[str], counts: dict[str, int],
                 sizes: dict[str, tuple[int, int]]) -> tuple[dict[str, Path], list[str] | None]:
    """Optional ``labels/<cam>.npz`` (uint8 ``labels`` [T, H, W]) and ``regions.json`` {"names": [...]}."""
    label_dir = src / "labels"
    files: dict[str, Path] = {}
    if label_dir.is_dir():
        found = {p.stem: p for p in sorted(label_dir.glob("*.npz"))}
        stray = sorted(set(found) - set(names))
        if stray:
            raise InputError(f"{label_dir}: labels for unknown camera(s) {stray}")
        missing = [n for n in names if n not in found]
        if found and missing:
            raise InputError(f"{label_dir}: no labels for camera(s) {missing} (give all cameras labels or none)")
        for name, path in found.items():
            labels = _load_labels(path)
            width, height = sizes[name]
            if labels.shape != (counts[name], height, width):
                raise InputError(f"{path}: camera {name}: labels have shape {labels.shape}, "
                                 f"expected {(counts[name], height, width)} (frames, height, width)")
            files[name] = path
    regions_path = src / "regions.json"
    region_names = None
    if regions_path.is_file():
        try:
            region_names = json.loads(regions_path.read_text())["names"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{regions_path}: expected {{\"names\": [...]}} ({exc})") from None
        if not isinstance(region_names, list) or not all(isinstance(n, str) for n in region_names):
            raise InputError(f"{regions_path}: 'names' must be a list of strings")
    return files, region_names


def _load_labels(path: Path) -> np.ndarray:
    try:
        with np.load(path) as data:
            labels = data["labels"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: not an .npz with a 'labels' array ({exc})") from None
    if labels.dtype != np.uint8 or labels.ndim != 3:
        raise InputError(f"{path}: labels must be uint8 [T, H, W], got {labels.dtype} {labels.shape}")
    return labels


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file from its header."""
    try:
        props = iio.improps(path, plugin="pillow")
    except Exception as exc:  # imageio raises plugin-specific errors for corrupt files
        raise InputError(f"{path}: not a readable image ({exc})") from None
    return int(props.shape[1]), int(props.shape[0])


def read_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One RGB uint8 image [H, W, 3]; a grey or RGBA file is converted, a wrong size refused."""
    try:
        image = iio.imread(path, plugin="pillow")
    except Exception as exc:  # imageio raises plugin-specific errors for corrupt files
        raise InputError(f"{path}: not a readable image ({exc})") from None
    if image.dtype != np.uint8:
        raise InputError(f"{path}: expected 8-bit image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] < 3:
        image = np.repeat(image[:, :, :1], 3, axis=2)
    image = image[:, :, :3]
    if (image.shape[1], image.shape[0]) != size:
        raise InputError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, expected {size[0]}x{size[1]}")
    return image
