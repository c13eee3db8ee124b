"""Cheap "is this file readable as what its name says" checks, run on every payload file at commit.

A writer that was cut short (disk full, file-size limit, a killed encoder) can leave a file that
exists and hashes fine but cannot be read. The commit runs these checks so such a file is never
recorded as part of a finished artifact. Each check reads headers or container indexes, not the
whole payload (videos are demuxed, not decoded).
"""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

PLY_TYPES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
             "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


def unreadable_reason(path: Path) -> str | None:
    """Why ``path`` is not a readable file of the format its suffix names, or None when it is (or is unchecked)."""
    check = CHECKS.get(Path(path).suffix.lower())
    if check is None:
        return None
    try:
        return check(Path(path))
    except (OSError, ValueError, KeyError, IndexError, TypeError, struct.error, zipfile.BadZipFile, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _json(path: Path) -> str | None:
    json.loads(path.read_text())
    return None


def _safetensors(path: Path) -> str | None:
    """8-byte little-endian header length, a JSON header, and tensor data that ends exactly at the file end."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "shorter than the 8-byte header length"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return f"header length {length} exceeds the file size {size}"
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        return "header is not a JSON object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, stop = info["data_offsets"]
        if not 0 <= begin <= stop:
            return f"tensor {name} has offsets {begin}..{stop}"
        end = max(end, stop)
    if 8 + length + end != size:
        return f"tensor data ends at byte {8 + length + end} but the file has {size}"
    return None


def _image(path: Path) -> str | None:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    return None


def _zip(path: Path) -> str | None:
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    return None if bad is None else f"member {bad} fails its CRC"


def _ply(path: Path) -> str | None:
    """A header ending in ``end_header`` and, for binary files, a body of exactly the declared size."""
    with open(path, "rb") as handle:
        lines = []
        while True:
            line = handle.readline(1000)
            if not line:
                return "no end_header line"
            lines.append(line.decode("ascii").strip())
            if lines[-1] == "end_header":
                break
        body_start = handle.tell()
    if lines[0] != "ply":
        return "does not start with 'ply'"
    fmt = next((ln.split()[1] for ln in lines if ln.startswith("format ")), None)
    if fmt is None or fmt == "ascii":
        return None
    expected, count, stride = 0, 0, 0
    for line in lines:
        words = line.split()
        if words[0] == "element":
            expected += count * stride
            count, stride = int(words[2]), 0
        elif words[0] == "property":
            if words[1] == "list":
                return None  # variable-length rows: size cannot be checked from the header
            stride += PLY_TYPES[words[1]]
    expected += count * stride
    actual = path.stat().st_size - body_start
    return None if actual == expected else f"body has {actual} bytes, the header declares {expected}"


def _video(path: Path) -> str | None:
    import imageio_ffmpeg

    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return None if frames > 0 else "no video frames"


CHECKS: dict[str, Callable[[Path], str | None]] = {
    ".json": _json,
    ".safetensors": _safetensors,
    ".png": _image,
    ".jpg": _image,
    ".npz": _zip,
    ".ply": _ply,
    ".mp4": _video,
}
