"""Video reading and writing through imageio-ffmpeg's bundled ffmpeg (no system ffmpeg needed).

Every failure becomes an :class:`~moegs.errors.InputError` naming the file, so a corrupt or
missing video never surfaces as an ffmpeg traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from moegs.errors import InputError


@dataclass(frozen=True)
class VideoInfo:
    """What ffmpeg reports about a video before any frame is decoded."""

    width: int
    height: int
    fps: float
    n_frames: int


def probe_video(path: Path) -> VideoInfo:
    """Size, frame rate and exact frame count (decodes the stream once; cheap for short clips)."""
    reader, meta = _open(path)
    reader.close()
    try:
        n_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (RuntimeError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable video ({_first_line(exc)})") from None
    width, height = meta["size"]
    if n_frames <= 0 or width <= 0 or height <= 0:
        raise InputError(f"{path}: video has no decodable frames")
    return VideoInfo(width=int(width), height=int(height), fps=float(meta.get("fps") or 0.0), n_frames=int(n_frames))


def iter_video(path: Path, start: int = 0, stop: int | None = None,
               size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Yield frames ``start <= i < stop`` as uint8 arrays [H, W, 3]; stops early without decoding the rest.

    With ``size`` (width, height) ffmpeg's Lanczos scaler resizes each frame while decoding, so a
    2704x2028 source never exists in Python at full size.
    """
    reader, meta = _open(path, size)
    width, height = meta["size"]
    frame_bytes = width * height * 3
    try:
        for index, raw in enumerate(reader):
            if stop is not None and index >= stop:
                break
            if index < start:
                continue
            if len(raw) != frame_bytes:
                raise InputError(f"{path}: frame {index} is truncated ({len(raw)} of {frame_bytes} bytes)")
            yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
    except RuntimeError as exc:
        raise InputError(f"{path}: video is corrupt ({_first_line(exc)})") from None
    finally:
        reader.close()


def read_video(path: Path, start: int = 0, stop: int | None = None) -> np.ndarray:
    """All frames in ``[start, stop)`` as one uint8 array [T, H, W, 3]."""
    frames = list(iter_video(path, start, stop))
    if not frames:
        raise InputError(f"{path}: no frames in range [{start}, {stop})")
    return np.stack(frames)


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float = 30.0, quality: int = 8) -> None:
    """Encode uint8 [H, W, 3] frames as H.264 MP4.

    yuv420p chroma needs even sizes, so an odd row or column at the bottom/right is cropped; the
    macro-block rule is set to 2 so an even size comes back unchanged instead of being rescaled.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for frame in frames:
            height, width = frame.shape[:2]
            frame = np.ascontiguousarray(frame[: height - height % 2, : width - width % 2], dtype=np.uint8)
            if writer is None:
                height, width = frame.shape[:2]
                writer = imageio_ffmpeg.write_frames(
                    str(path),
                    (width, height),
                    fps=fps,
                    codec="libx264",
                    quality=quality,
                    macro_block_size=2,
                    ffmpeg_log_level="error",
                )
                writer.send(None)
            writer.send(frame)
    finally:
        if writer is not None:
            writer.close()


def _open(path: Path, size: tuple[int, int] | None = None) -> tuple[Iterator[bytes], dict]:
    """An ffmpeg frame reader positioned after its metadata (frames scaled to ``size``), or a one-line InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: video file not found")
    output_params = [] if size is None else ["-vf", f"scale={int(size[0])}:{int(size[1])}:flags=lanczos"]
    try:
        reader = imageio_ffmpeg.read_frames(str(path), output_params=output_params)
        return reader, reader.__next__()
    except (RuntimeError, OSError, StopIteration, ValueError) as exc:
        raise InputError(f"{path}: not a readable video ({_first_line(exc)})") from None


class _DropScalingNotice(logging.Filter):
    """imageio-ffmpeg warns whenever the output size differs from the source: here that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "different from the source frame size" not in record.getMessage()


logging.getLogger("imageio_ffmpeg").addFilter(_DropScalingNotice())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
