"""Video reading and writing through imageio-ffmpeg's bundled ffmpeg (no system ffmpeg needed).

Every read failure becomes an :class:`~moegs.errors.InputError` naming the file, so a corrupt or
missing video never surfaces as an ffmpeg traceback; a write is confirmed by reading it back.
"""

from __future__ import annotations

import errno
import logging
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO

import imageio_ffmpeg
import numpy as np

from moegs.errors import InputError, MoegsError


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


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float = 30.0, quality: int = 8) -> int:
    """Encode uint8 [H, W, 3] frames as H.264 MP4 and return the frame count, confirmed by reading the file back.

    yuv420p chroma needs even sizes, so an odd row or column at the bottom/right is cropped. A
    failed encode (ffmpeg's exit status, or fewer frames in the file than were sent) removes the
    file and raises: an ``OSError`` with ENOSPC/EFBIG when the disk or the file-size limit ran out
    (so the artifact layer cleans up), else a ``MoegsError`` with ffmpeg's message.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as log:
        encoder, sent, shape = None, 0, None
        try:
            for frame in frames:
                height, width = frame.shape[:2]
                frame = np.ascontiguousarray(frame[: height - height % 2, : width - width % 2], dtype=np.uint8)
                if encoder is None:
                    shape = frame.shape
                    encoder = _start_encoder(path, frame.shape[1], frame.shape[0], fps, quality, log)
                elif frame.shape != shape:
                    raise InputError(f"{path}: frame {sent} is {frame.shape[1]}x{frame.shape[0]}, the first was "
                                     f"{shape[1]}x{shape[0]}")
                try:
                    encoder.stdin.write(frame.tobytes())
                except BrokenPipeError:
                    break  # ffmpeg died; its exit status says why
                sent += 1
            if encoder is None:
                raise InputError(f"{path}: no frames to write")
            try:
                encoder.stdin.close()
            except BrokenPipeError:
                pass
            code = encoder.wait()
        except BaseException:
            if encoder is not None:
                encoder.kill()
                encoder.wait()
            path.unlink(missing_ok=True)
            raise
        if code != 0:
            path.unlink(missing_ok=True)
            log.seek(0)
            raise _encoder_failure(path, code, log.read().decode(errors="replace"))
    written = _frames_in(path)
    if written != sent:
        path.unlink(missing_ok=True)
        raise MoegsError(f"{path}: the encoded video holds {written} frames but {sent} were written; removed it")
    return sent


def _start_encoder(path: Path, width: int, height: int, fps: float, quality: int, log: IO[bytes]) -> subprocess.Popen:
    """ffmpeg reading raw RGB frames on stdin; the same settings imageio-ffmpeg used (crf from quality 1-10)."""
    if not 1 <= quality <= 10:
        raise InputError(f"video quality must be within 1..10, got {quality}")
    crf = int((1 - quality / 10.0) * 51)
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}",
        "-pix_fmt", "rgb24", "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an",
        "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", str(crf), "-v", "error", str(path),
    ]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)


def _encoder_failure(path: Path, code: int, stderr: str) -> Exception:
    """The exception for a failed encode: OSError for lack of room (the cleanup path), MoegsError otherwise."""
    if code == -signal.SIGXFSZ or "File too large" in stderr:
        return OSError(errno.EFBIG, "the file-size limit is reached while encoding", str(path))
    if "No space left" in stderr:
        return OSError(errno.ENOSPC, "the disk is full while encoding", str(path))
    detail = next((line for line in stderr.splitlines() if line.strip()), "no message")
    how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    return MoegsError(f"{path}: ffmpeg failed to encode the video ({how}: {detail})")


def _frames_in(path: Path) -> int:
    """Frames in an encoded file, counted by demuxing (no decoding); 0 when unreadable."""
    try:
        return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
    except (RuntimeError, OSError, ValueError):
        return 0


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
