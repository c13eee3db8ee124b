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


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float = 30.0, quality: int = 8,
                preset: str = "medium") -> int:
    """Encode uint8 [H, W, 3] frames as H.264 MP4 and return the frame count, confirmed by reading the file back
    (see :class:`VideoWriter`; this is it fed from an iterable, so a generator is never held whole)."""
    with VideoWriter(path, fps, quality, preset) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.sent


class VideoWriter:
    """A video encoded one frame at a time, so a renderer never holds its output frames.

    ffmpeg writes a hidden temporary file beside ``path``; :meth:`close` checks ffmpeg's exit status
    and that the file holds every frame sent, and only then renames it to ``path``. So a failed or
    interrupted write never leaves a file under the final name: an exception inside the ``with``
    block, a failed encode or a short file removes the temporary and raises, an ``OSError`` with
    ENOSPC/EFBIG when the disk or the file-size limit ran out (so the artifact layer cleans up),
    else a ``MoegsError`` with ffmpeg's message. yuv420p chroma needs even sizes, so an odd row or
    column at the bottom/right is cropped.
    """

    def __init__(self, path: Path, fps: float = 30.0, quality: int = 8, preset: str = "medium") -> None:
        if not 1 <= quality <= 10:
            raise InputError(f"video quality must be within 1..10, got {quality}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.quality, self.preset = fps, quality, preset
        self.sent = 0
        self._temp = self.path.with_name(f".{self.path.name}.tmp")
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close()/abort())
        self._encoder: subprocess.Popen | None = None
        self._shape: tuple[int, ...] | None = None

    def write(self, frame: np.ndarray) -> None:
        height, width = frame.shape[:2]
        frame = np.ascontiguousarray(frame[: height - height % 2, : width - width % 2], dtype=np.uint8)
        if self._encoder is None:
            self._shape = frame.shape
            self._encoder = _start_encoder(self._temp, frame.shape[1], frame.shape[0], self.fps, self.quality,
                                           self.preset, self._log)
        elif frame.shape != self._shape:
            raise InputError(f"{self.path}: frame {self.sent} is {frame.shape[1]}x{frame.shape[0]}, the first was "
                             f"{self._shape[1]}x{self._shape[0]}")
        try:
            self._encoder.stdin.write(frame.tobytes())
        except BrokenPipeError:  # ffmpeg died; its exit status says why
            raise self._failure(self._encoder.wait()) from None
        self.sent += 1

    def close(self) -> int:
        """Finish the encode, check it and move it into place; returns the frame count."""
        if self._encoder is None:
            raise InputError(f"{self.path}: no frames to write")
        try:
            self._encoder.stdin.close()
        except BrokenPipeError:
            pass
        code = self._encoder.wait()
        if code != 0:
            raise self._failure(code)
        written = _frames_in(self._temp)
        if written != self.sent:
            raise MoegsError(f"{self.path}: the encoded video holds {written} frames but {self.sent} were written; "
                             "removed it")
        self._temp.replace(self.path)
        self._log.close()
        return self.sent

    def abort(self) -> None:
        """Stop ffmpeg and remove the unfinished file."""
        if self._encoder is not None and self._encoder.poll() is None:
            self._encoder.kill()
            self._encoder.wait()
        self._temp.unlink(missing_ok=True)
        self._log.close()

    def _failure(self, code: int) -> Exception:
        self._log.seek(0)
        return _encoder_failure(self.path, code, self._log.read().decode(errors="replace"))

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.close()
        except BaseException:
            self.abort()
            raise


def _start_encoder(path: Path, width: int, height: int, fps: float, quality: int, preset: str,
                   log: IO[bytes]) -> subprocess.Popen:
    """ffmpeg reading raw RGB frames on stdin; the same settings imageio-ffmpeg used (crf from quality 1-10).

    ``preset`` trades encode speed for size at the same quality (``ultrafast`` for synthetic captures)."""
    crf = int((1 - quality / 10.0) * 51)
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}",
        "-pix_fmt", "rgb24", "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an",
        "-vcodec", "libx264", "-preset", preset, "-pix_fmt", "yuv420p", "-crf", str(crf), "-f", "mp4", "-v", "error",
        str(path),
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
