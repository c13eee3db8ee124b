"""The streaming video writer: the file appears under its name only once it is complete and checked."""

from __future__ import annotations

import numpy as np
import pytest

from moegs.data.video import VideoWriter, probe_video, read_video, write_video
from moegs.errors import InputError


def frame(value: int, height: int = 32, width: int = 48) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def test_frames_stream_in_and_the_file_appears_on_close(tmp_path) -> None:
    path = tmp_path / "out.mp4"
    with VideoWriter(path, fps=12) as writer:
        for value in (0, 128, 255):
            writer.write(frame(value))
            assert not path.exists()  # still under its hidden temporary name
    assert writer.sent == 3 and probe_video(path).n_frames == 3 and list(tmp_path.iterdir()) == [path]
    assert abs(int(read_video(path)[1].mean()) - 128) <= 2


def test_a_failure_midway_leaves_no_file(tmp_path) -> None:
    path = tmp_path / "out.mp4"

    def frames():
        yield frame(10)
        yield frame(20)
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_video(path, frames())
    with pytest.raises(InputError, match=r"out.mp4: frame 1 is 40x32, the first was 48x32"):
        write_video(path, [frame(0), frame(0, width=40)])
    with pytest.raises(InputError, match="out.mp4: no frames to write"):
        write_video(path, [])
    assert list(tmp_path.iterdir()) == []
