"""The per-camera uint8 frame store: written sequentially, read one frame at a time, checked on open and per frame."""

from __future__ import annotations

import numpy as np
import pytest

from moegs.data.frame_store import FrameStore, FrameStoreWriter, digests_path
from moegs.errors import DamagedArtifactError, InputError

T, H, W = 4, 6, 5


def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (T, H, W, 3), dtype=np.uint8)


def write(path, data: np.ndarray) -> None:
    with FrameStoreWriter(path, len(data), data.shape[1], data.shape[2]) as writer:
        for image in data:
            writer.write(image)


def test_round_trip_and_numpy_compatibility(tmp_path) -> None:
    data = frames()
    path = tmp_path / "cam.npy"
    write(path, data)
    np.testing.assert_array_equal(np.load(path, mmap_mode="r"), data)  # a plain .npy for any tool
    store = FrameStore(path, T, H, W)
    for i in (3, 0, 2):
        image = store.read(i)
        np.testing.assert_array_equal(image, data[i])
        assert image.flags.writeable and image.flags.c_contiguous
    with pytest.raises(InputError, match=r"frame 4 outside 0..3"):
        store.read(4)
    store.close()


def test_writer_refuses_wrong_frames_and_missing_ones(tmp_path) -> None:
    writer = FrameStoreWriter(tmp_path / "a.npy", 2, H, W)
    with pytest.raises(ValueError, match=r"frame 0 is uint8 \(6, 4, 3\)"):
        writer.write(np.zeros((H, W - 1, 3), np.uint8))
    with pytest.raises(ValueError, match="frame 0 is float32"):
        writer.write(np.zeros((H, W, 3), np.float32))
    writer.write(np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ValueError, match="1 of 2 frames written"):
        writer.close()
    with FrameStoreWriter(tmp_path / "b.npy", 1, H, W) as full:
        full.write(np.zeros((H, W, 3), np.uint8))
        with pytest.raises(ValueError, match="more than the 1 frames"):
            full.write(np.zeros((H, W, 3), np.uint8))


def test_open_checks_shape_dtype_and_size(tmp_path) -> None:
    data = frames()
    path = tmp_path / "cam.npy"
    write(path, data)
    with pytest.raises(InputError, match=r"holds uint8 \(4, 6, 5, 3\), the dataset expects uint8 \(5, 6, 5, 3\)"):
        FrameStore(path, T + 1, H, W)
    np.save(tmp_path / "f.npy", data.astype(np.float32))
    with pytest.raises(InputError, match="holds float32"):
        FrameStore(tmp_path / "f.npy", T, H, W)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(InputError, match="truncated or stale"):
        FrameStore(path, T, H, W)
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(InputError, match="not a .npy frame store"):
        FrameStore(tmp_path / "junk.npy", T, H, W)
    with pytest.raises(InputError, match="frame store not readable"):
        FrameStore(tmp_path / "missing.npy", T, H, W)


def test_each_frame_is_checked_against_its_digest_on_first_read(tmp_path) -> None:
    data = frames()
    path = tmp_path / "cam.npy"
    write(path, data)
    assert len(digests_path(path).read_text().split()) == T + 1  # the header, then every frame
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1  # the last byte of the last frame
    path.write_bytes(bytes(raw))
    store = FrameStore(path, T, H, W)  # opening hashes only the header
    np.testing.assert_array_equal(store.read(0), data[0])
    with pytest.raises(DamagedArtifactError, match=rf"cam.npy: frame {T - 1} does not match its sha256 in cam.sha256"):
        store.read(T - 1)
    store.close()
    raw[-1] ^= 1
    header_end = raw.index(b"\n")
    raw[header_end - 1] = ord("\t")  # the header's space padding: numpy still parses it, the digest does not match
    path.write_bytes(bytes(raw))
    with pytest.raises(DamagedArtifactError, match="cam.npy: header does not match its sha256"):
        FrameStore(path, T, H, W)
    raw[header_end - 1] = ord(" ")
    path.write_bytes(bytes(raw))
    digests_path(path).write_text("\n".join(digests_path(path).read_text().split()[:-1]))
    with pytest.raises(DamagedArtifactError, match=rf"cam.sha256: {T} digests for a header and {T} frames"):
        FrameStore(path, T, H, W)
