"""One uint8 ``[T, H, W, 3]`` array per camera, written once by preprocess and read one frame at a time.

The file is a plain ``.npy`` (``np.load(path, mmap_mode="r")`` opens it anywhere), but moegs reads a
frame with a positioned file read instead of a memory map: pages of a map that training touches
stay counted in the process's resident memory, so random access over a 300-frame capture would
grow RSS towards the whole array; a read copies one frame and leaves the rest to the OS page cache.
Writing is sequential (header, then one frame after another), so preprocess holds one frame per
camera in memory, never the array.

Beside each store the writer leaves ``<cam>.sha256``: one hex sha256 per line, of the header and of
every frame. The artifact checks that small file eagerly and leaves the store itself to
:class:`FrameStore`, which hashes each frame the first time it reads it. So opening a dataset costs
nothing per gigabyte (a whole N3V capture is about 25 GB), a short stage hashes only the frames it
uses, and a modified byte is still found before it is used.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from types import TracebackType

import numpy as np

from moegs.artifacts import remember_digest
from moegs.errors import DamagedArtifactError, InputError

SUFFIX = ".npy"
DIGESTS_SUFFIX = ".sha256"
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def digests_path(store: Path) -> Path:
    """The per-frame digests file of a store: ``frames/cam00.npy`` -> ``frames/cam00.sha256``."""
    return Path(store).with_suffix(DIGESTS_SUFFIX)


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class FrameStoreWriter:
    """Appends frames of one camera to ``path``; :meth:`close` checks that all ``n_frames`` arrived, writes
    the digests file and hands the whole file's sha256 (computed as it was written) to the artifact layer."""

    def __init__(self, path: Path, n_frames: int, height: int, width: int) -> None:
        self.path = Path(path)
        self.shape = (int(n_frames), int(height), int(width), 3)
        self.written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": self.shape}
        np.lib.format.write_array_header_2_0(self._file, header)
        self._file.flush()
        head = self.path.read_bytes()  # the header alone, just written
        self._digests = [_sha256(head)]
        self._whole = hashlib.sha256(head)

    def write(self, image: np.ndarray) -> None:
        if image.shape != self.shape[1:] or image.dtype != np.uint8:
            raise ValueError(f"{self.path}: frame {self.written} is {image.dtype} {image.shape}, "
                             f"the store holds uint8 {self.shape[1:]}")
        if self.written >= self.shape[0]:
            raise ValueError(f"{self.path}: more than the {self.shape[0]} frames declared")
        data = np.ascontiguousarray(image).data
        self._file.write(data)
        self._digests.append(_sha256(data))
        self._whole.update(data)
        self.written += 1

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.close()
        if self.written != self.shape[0]:
            raise ValueError(f"{self.path}: {self.written} of {self.shape[0]} frames written")
        digests_path(self.path).write_text("\n".join(self._digests) + "\n")
        remember_digest(self.path, self._whole.hexdigest())

    def __enter__(self) -> FrameStoreWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()


class FrameStore:
    """Random access to the frames of one camera's store; checks shape and size on open and, where the
    digests file exists, the header on open and each frame the first time it is read."""

    def __init__(self, path: Path, n_frames: int, height: int, width: int) -> None:
        self.path = Path(path)
        self.shape = (int(n_frames), int(height), int(width), 3)
        self.frame_bytes = self.shape[1] * self.shape[2] * 3
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 (kept open for reads; closed in close())
        except OSError as exc:
            raise InputError(f"{self.path}: frame store not readable ({exc.strerror})") from None
        self._offset = self._read_header()
        size = self.path.stat().st_size
        expected = self._offset + self.shape[0] * self.frame_bytes
        if size != expected:
            self._file.close()
            raise InputError(f"{self.path}: frame store is {size} bytes, expected {expected} "
                             f"for {self.shape[0]} frames of {self.shape[2]}x{self.shape[1]} (truncated or stale)")
        self._lock = threading.Lock()
        self._digests = self._read_digests()
        self._checked: set[int] = set()

    def _read_digests(self) -> list[str] | None:
        """The recorded digests (header first), the header checked against its one; None without the file."""
        source = digests_path(self.path)
        if not source.is_file():
            return None  # written before digests files: the artifact hashed the whole store on load
        digests = source.read_text().split()
        if len(digests) != self.shape[0] + 1:
            self._file.close()
            raise DamagedArtifactError(f"{source}: {len(digests)} digests for a header and {self.shape[0]} frames")
        self._file.seek(0)
        if _sha256(self._file.read(self._offset)) != digests[0]:
            self._file.close()
            raise DamagedArtifactError(f"{self.path}: header does not match its sha256 in {source.name} "
                                       "(modified after the commit); rebuild it with --force")
        return digests

    def _read_header(self) -> int:
        try:
            version = np.lib.format.read_magic(self._file)
            read_header = _HEADER_READERS.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read_header(self._file)
        except ValueError as exc:
            self._file.close()
            raise InputError(f"{self.path}: not a .npy frame store ({exc})") from None
        if dtype != np.uint8 or fortran or tuple(shape) != self.shape:
            self._file.close()
            raise InputError(f"{self.path}: frame store holds {dtype} {tuple(shape)}"
                             f"{' (Fortran order)' if fortran else ''}, the dataset expects uint8 {self.shape}")
        return self._file.tell()

    def read(self, index: int) -> np.ndarray:
        """A fresh uint8 [H, W, 3] copy of frame ``index`` (checked against its digest on the first read)."""
        if not 0 <= index < self.shape[0]:
            raise InputError(f"{self.path}: frame {index} outside 0..{self.shape[0] - 1}")
        image = np.empty(self.shape[1:], np.uint8)
        with self._lock:
            self._file.seek(self._offset + index * self.frame_bytes)
            got = self._file.readinto(memoryview(image).cast("B"))
        if got != self.frame_bytes:
            raise InputError(f"{self.path}: short read of frame {index} ({got} of {self.frame_bytes} bytes)")
        if self._digests is not None and index not in self._checked:
            if _sha256(memoryview(image).cast("B")) != self._digests[index + 1]:
                raise DamagedArtifactError(f"{self.path}: frame {index} does not match its sha256 in "
                                           f"{digests_path(self.path).name} (modified after the commit); "
                                           "rebuild it with --force")
            self._checked.add(index)
        return image

    def close(self) -> None:
        self._file.close()
