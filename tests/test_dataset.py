"""build_dataset -> Dataset.load on a tiny fake N3V capture (random init; COLMAP is covered on real
data in test_colmap_init.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moegs.cameras import Camera, cameras_to_llff
from moegs.data.build import build_dataset
from moegs.data.preprocess_config import PreprocessConfig
from moegs.data.dataset import Dataset
from moegs.data.video import write_video
from moegs.errors import InputError

W, H, T = 64, 48, 5


def make_raw(root: Path, flat: bool = False) -> list[Camera]:
    """Three cameras of a fake N3V capture with region labels (left half 0, right half camera index)."""
    root.mkdir(parents=True)
    (root / "labels").mkdir()
    cams = []
    for i in range(3):
        K = np.array([[60.0, 0, W / 2], [0, 60.0, H / 2], [0, 0, 1]])
        cam = Camera(f"cam{i:02d}", W, H, K, np.eye(3), np.array([-0.3 * i, 0.0, 4.0]), near=1.0, far=10.0)
        cams.append(cam)
        rng = np.random.default_rng(i)
        video = np.full((T, H, W, 3), 128, np.uint8) if flat else rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8)
        write_video(root / f"{cam.name}.mp4", video, fps=30)
        labels = np.zeros((T, H, W), np.uint8)
        labels[:, :, W // 2:] = i + 1
        np.savez(root / "labels" / f"{cam.name}.npz", labels=labels)
    np.save(root / "poses_bounds.npy", cameras_to_llff(cams))
    (root / "regions.json").write_text(json.dumps({"names": ["bg", "a", "b", "c"]}))
    return cams


def test_build_and_load(tmp_path) -> None:
    cams = make_raw(tmp_path / "raw")
    out = tmp_path / "ds"
    out.mkdir()
    result = build_dataset(tmp_path / "raw", out, PreprocessConfig(frame_start=1, frame_stop=4, downscale=2.0, init="random",
                           init_points=300, test_cameras=["cam02"]), progress=False)
    m, compat = result["metrics"], result["compat"]
    assert (m["n_cameras"], m["n_frames"], m["width"], m["height"], m["points"]) == (3, 3, 32, 24, 300)
    assert m["reproj_error_mean"] is None
    assert compat["frame_range"] == [1, 4] and compat["time_normalisation"] == "i/T"
    assert len(compat["cameras_hash"]) == 64
    for name in ("cameras.json", "times.json", "points.ply", "preview.png", "regions.json", "labels/cam01.npz",
                 "frames/cam02/00002.png"):
        assert (out / name).is_file(), name

    ds = Dataset.load(out)
    assert ds.n_frames == 3 and ds.source_frames == [1, 2, 3]
    np.testing.assert_allclose(ds.times, [0, 1 / 3, 2 / 3], rtol=1e-6)
    assert [c.name for c in ds.test_cameras] == ["cam02"] and [c.name for c in ds.train_cameras] == ["cam00", "cam01"]
    cam = ds.camera("cam01")
    np.testing.assert_allclose(cam.K, [[30, 0, 16], [0, 30, 12], [0, 0, 1]])
    np.testing.assert_allclose(cam.project(np.zeros((1, 3)))[0], cams[1].project(np.zeros((1, 3)))[0] / 2)
    assert (cam.near, cam.far) == (1.0, 10.0)  # N3V bounds carried through
    assert ds.frame("cam01", 2).shape == (24, 32, 3) and ds.frame("cam01", 2) is ds.frame("cam01", 2)
    tensor = ds.frames_tensor("cam00")
    assert tensor.shape == (3, 24, 32, 3) and tensor.dtype == torch.float32 and 0 <= tensor.min() <= tensor.max() <= 1
    labels = ds.labels("cam01")
    assert labels.shape == (3, 24, 32) and labels.dtype == np.uint8
    assert set(np.unique(labels[:, :, :16])) == {0} and set(np.unique(labels[:, :, 16:])) == {2}  # nearest: no blends
    assert ds.region_names == ["bg", "a", "b", "c"]
    assert len(ds.points) == 300 and ds.points.time.dtype == np.float32
    assert ds.scene_extent == pytest.approx(1.1 * 0.15)  # train centres x = 0, 0.3
    with pytest.raises(InputError, match="frame 7 outside"):
        ds.frame("cam00", 7)

    again = tmp_path / "ds2"
    again.mkdir()
    same = build_dataset(tmp_path / "raw", again, PreprocessConfig(frame_start=1, frame_stop=4, downscale=2.0, init="random",
                         init_points=300, test_cameras=["cam02"]), progress=False)
    assert same["compat"]["cameras_hash"] == compat["cameras_hash"]


def test_build_input_errors(tmp_path) -> None:
    make_raw(tmp_path / "raw")
    with pytest.raises(InputError, match=r"test camera\(s\) \['cam09'\]"):
        build_dataset(tmp_path / "raw", tmp_path / "o1", PreprocessConfig(test_cameras=["cam09"], init="random"),
                      progress=False)
    with pytest.raises(InputError, match=r"frame range \[2, 9\) outside the 5 frames"):
        build_dataset(tmp_path / "raw", tmp_path / "o2", PreprocessConfig(frame_start=2, frame_stop=9, init="random"),
                      progress=False)
    with pytest.raises(InputError, match="unknown init"):
        build_dataset(tmp_path / "raw", tmp_path / "o3", PreprocessConfig(init="dense"), progress=False)


def test_colmap_too_few_points(tmp_path) -> None:
    make_raw(tmp_path / "raw", flat=True)
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="COLMAP triangulated 0 points"):
        build_dataset(tmp_path / "raw", tmp_path / "out", PreprocessConfig(frame_stop=1, init="colmap"), progress=False)


def test_load_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="cameras.json: cameras file not found"):
        Dataset.load(tmp_path)
