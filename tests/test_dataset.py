"""build_dataset -> Dataset.load on a tiny fake N3V capture (random init; COLMAP is covered on real
data in test_colmap_init.py)."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
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
                 "frames/cam02.npy", "previews/cam02.png"):
        assert (out / name).is_file(), name
    store = np.load(out / "frames" / "cam01.npy", mmap_mode="r")
    assert store.shape == (3, 24, 32, 3) and store.dtype == np.uint8

    ds = Dataset.load(out)
    assert ds.n_frames == 3 and ds.source_frames == [1, 2, 3]
    np.testing.assert_allclose(ds.times, [0, 1 / 3, 2 / 3], rtol=1e-6)
    assert [c.name for c in ds.test_cameras] == ["cam02"] and [c.name for c in ds.train_cameras] == ["cam00", "cam01"]
    cam = ds.camera("cam01")
    np.testing.assert_allclose(cam.K, [[30, 0, 16], [0, 30, 12], [0, 0, 1]])
    np.testing.assert_allclose(cam.project(np.zeros((1, 3)))[0], cams[1].project(np.zeros((1, 3)))[0] / 2)
    assert (cam.near, cam.far) == (1.0, 10.0)  # N3V bounds carried through
    assert ds.frame("cam01", 2).shape == (24, 32, 3) and ds.frame("cam01", 2) is ds.frame("cam01", 2)
    np.testing.assert_array_equal(ds.frame("cam01", 2), store[2])
    assert ds.frame_cache.bytes_used == len(ds.frame_cache) * 24 * 32 * 3
    on_device = ds.frame_tensor("cam01", 2, "cpu")
    assert on_device.dtype == torch.float32 and torch.equal(on_device, torch.from_numpy(np.array(store[2])).float() / 255)
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


def build_small(tmp_path: Path, name: str = "ds", **options) -> Path:
    if not (tmp_path / "raw").is_dir():
        make_raw(tmp_path / "raw")
    out = tmp_path / name
    out.mkdir()
    decode_workers = options.pop("decode_workers", None)
    build_dataset(tmp_path / "raw", out, PreprocessConfig(init="random", init_points=100, **options),
                  decode_workers=decode_workers, progress=False)
    return out


def test_parallel_decoding_writes_the_same_stores(tmp_path) -> None:
    one = build_small(tmp_path, "one", downscale=2.0, decode_workers=1)
    three = build_small(tmp_path, "three", downscale=2.0, decode_workers=3)
    for cam in ("cam00", "cam01", "cam02"):
        np.testing.assert_array_equal(np.load(one / "frames" / f"{cam}.npy"), np.load(three / "frames" / f"{cam}.npy"))


def test_ffmpeg_scaling_matches_resizing_in_python(tmp_path) -> None:
    """Frames scaled by ffmpeg while decoding stay close to full-size decoding + PIL Lanczos."""
    from PIL import Image

    from moegs.data.video import iter_video

    yy, xx = np.mgrid[0:96, 0:128]
    smooth = [np.stack([(xx * 2 + 9 * k) % 256, (yy * 2) % 256, np.full_like(xx, 90)], -1).astype(np.uint8)
              for k in range(3)]
    write_video(tmp_path / "v.mp4", smooth, fps=30)
    scaled = np.stack(list(iter_video(tmp_path / "v.mp4", size=(64, 48))))
    full = np.stack([np.asarray(Image.fromarray(f).resize((64, 48), Image.Resampling.LANCZOS))
                     for f in iter_video(tmp_path / "v.mp4")])
    assert scaled.shape == full.shape == (3, 48, 64, 3)
    assert np.abs(scaled.astype(int) - full.astype(int)).mean() < 2.0


def test_frame_cache_budget(tmp_path) -> None:
    out = build_small(tmp_path)
    off = Dataset.load(out, cache_mb=0)
    first = off.frame("cam00", 1)
    assert off.frame("cam00", 1) is not first and len(off.frame_cache) == 0
    np.testing.assert_array_equal(off.frame("cam00", 1), first)
    one_frame = Dataset.load(out, cache_mb=64 * 48 * 3 / 2**20)
    one_frame.frame("cam00", 0)
    one_frame.frame("cam00", 1)
    assert one_frame.frame_cache.keys() == [("cam00", 1)] and one_frame.frame_cache.bytes_used == 64 * 48 * 3
    with pytest.raises(InputError, match="frame_cache_mb must be >= 0 MB"):
        Dataset.load(out, cache_mb=-1)


def test_old_png_dataset_is_refused_with_the_fix(tmp_path) -> None:
    out = build_small(tmp_path)
    (out / "frames" / "cam01.npy").unlink()
    (out / "frames" / "cam01").mkdir()
    iio.imwrite(out / "frames" / "cam01" / "00000.png", np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(InputError, match="older moegs .*re-run preprocess with --force"):
        Dataset.load(out)
    (out / "frames" / "cam01" / "00000.png").unlink()
    (out / "frames" / "cam01").rmdir()
    with pytest.raises(InputError, match="cam01.npy: frame store of camera cam01 not found"):
        Dataset.load(out)


def test_truncated_store_is_refused(tmp_path) -> None:
    out = build_small(tmp_path)
    path = out / "frames" / "cam00.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(InputError, match=r"cam00.npy: frame store is \d+ bytes, expected"):
        Dataset.load(out)
