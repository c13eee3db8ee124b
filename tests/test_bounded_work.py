"""Stages score a bounded, evenly spread sample of frames and views, so their work does not grow with the capture."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from moegs.benchmark import BenchConfig
from moegs.cameras import Camera
from moegs.errors import InputError
from moegs.evaluation import EVAL_FRAMES, evaluation_frames
from moegs.moe.prune import PruneConfig, score_views


def test_evaluation_frames_are_spread_and_bounded() -> None:
    assert evaluation_frames(24, EVAL_FRAMES) == list(range(24))  # a demo capture: every frame, as before
    frames = evaluation_frames(300, 30)
    assert len(frames) == 30 and frames[0] == 0 and frames[-1] == 299
    assert max(np.diff(frames)) - min(np.diff(frames)) <= 1  # even steps
    assert evaluation_frames(300, 0) == list(range(300))  # 0: all, when asked
    with pytest.raises(InputError):
        BenchConfig(eval_frames=-1)
    with pytest.raises(InputError):
        BenchConfig(fps_frames=-1)


def test_score_views_cover_every_camera_at_differing_frames() -> None:
    cameras = [Camera(f"cam{i:02d}", 8, 6, np.eye(3), np.eye(3), np.zeros(3)) for i in range(19)]
    views = score_views(cameras, 300, frame_stride=1, limit=64)
    per_camera = Counter(cam.name for cam, _ in views)
    assert len(views) == 64 and len(per_camera) == 19 and max(per_camera.values()) - min(per_camera.values()) <= 1
    assert len({frame for _, frame in views}) > 32  # not the same few frames on every camera
    assert score_views(cameras[:2], 6, frame_stride=2, limit=0) == [(c, f) for c in cameras[:2] for f in (0, 2, 4)]
    assert PruneConfig().score_views >= 9 * 24  # by default every view of a demo-sized capture
