"""Readers on tiny fake N3V / multiview / Technicolor folders: the happy path and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from moegs.cameras import Camera, cameras_to_json, cameras_to_llff
from moegs.data.capture import open_capture
from moegs.data.video import write_video
from moegs.errors import InputError

W, H, T = 64, 48, 5


def make_camera(name: str, x: float, width: int = W, height: int = H) -> Camera:
    K = np.array([[60.0, 0, width / 2], [0, 60.0, height / 2], [0, 0, 1]])
    return Camera(name, width, height, K, np.eye(3), np.array([-x, 0.0, 4.0]), near=1.0, far=10.0)


def frames(seed: int, n: int = T, width: int = W, height: int = H) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(height // 8, width // 8, 3), dtype=np.uint8)
    big = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))
    return np.stack([np.roll(big, k, axis=1) for k in range(n)])


@pytest.fixture(scope="module")
def n3v_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("n3v")
    cams = [make_camera(f"cam{i:02d}", 0.3 * i) for i in range(3)]
    for i, cam in enumerate(cams):
        write_video(root / f"{cam.name}.mp4", frames(i), fps=30)
    np.save(root / "poses_bounds.npy", cameras_to_llff(cams))
    write_video(root / "spare_short.mp4", frames(9, n=T - 1), fps=30)  # spare 4-frame video
    write_video(root / "spare_big.mp4", frames(8, width=80, height=64), fps=30)  # spare 80x64 video
    return root


@pytest.fixture
def n3v(tmp_path, n3v_template) -> Path:
    dst = tmp_path / "n3v"
    shutil.copytree(n3v_template, dst)
    return dst


def test_unknown_format(n3v) -> None:
    with pytest.raises(InputError, match="unknown input format 'nerf'"):
        open_capture(n3v, "nerf")
    with pytest.raises(InputError, match="input folder not found"):
        open_capture(n3v / "nope", "n3v")


def test_n3v_happy(n3v) -> None:
    cap = open_capture(n3v, "n3v")
    assert [c.name for c in cap.cameras] == ["cam00", "cam01", "cam02"]
    assert cap.test_cameras == ["cam00"] and cap.n_frames == T and cap.fps == pytest.approx(30)
    assert cap.frame_size_per_camera["cam01"] == (W, H)
    clip = cap.read_frames("cam01", 1, 3)
    assert clip.shape == (2, H, W, 3) and clip.dtype == np.uint8
    assert np.abs(clip.astype(int) - frames(1)[1:3]).mean() < 12  # H.264 is lossy
    assert not cap.has_labels


def test_n3v_missing_poses(n3v) -> None:
    (n3v / "poses_bounds.npy").unlink()
    with pytest.raises(InputError, match="poses_bounds.npy not found"):
        open_capture(n3v, "n3v")


def test_n3v_rows_vs_videos(n3v) -> None:
    (n3v / "cam02.mp4").unlink()
    with pytest.raises(InputError, match=r"poses_bounds.npy: 3 camera rows but 2 videos"):
        open_capture(n3v, "n3v")


def test_n3v_bad_rotation(n3v) -> None:
    pb = np.load(n3v / "poses_bounds.npy")
    pb[2, 1] = np.nan
    np.save(n3v / "poses_bounds.npy", pb)
    with pytest.raises(InputError, match="poses_bounds.npy: camera cam02: row contains NaN"):
        open_capture(n3v, "n3v")
    pb[2, 1] = 0.0
    pb[2, 0] = 0.7
    np.save(n3v / "poses_bounds.npy", pb)
    with pytest.raises(InputError, match="camera cam02: rotation is not orthonormal"):
        open_capture(n3v, "n3v")


def test_n3v_corrupt_video(n3v) -> None:
    (n3v / "cam01.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    with pytest.raises(InputError, match="cam01.mp4"):
        open_capture(n3v, "n3v")


def test_n3v_frame_counts(n3v) -> None:
    shutil.copy(n3v / "spare_short.mp4", n3v / "cam01.mp4")
    with pytest.raises(InputError, match=r"different frame counts \(cam00: 5, cam01: 4, cam02: 5\)"):
        open_capture(n3v, "n3v")
    cap = open_capture(n3v, "n3v", truncate=True)
    assert cap.n_frames == 4 and cap.n_frames_per_camera["cam00"] == 5
    assert cap.read_frames("cam00").shape[0] == 4
    with pytest.raises(InputError, match="outside the 4 frames"):
        cap.read_frames("cam00", 0, 5)


def test_n3v_size_mismatch(n3v) -> None:
    shutil.copy(n3v / "spare_big.mp4", n3v / "cam02.mp4")
    with pytest.raises(InputError, match=r"cam02.mp4 \(camera cam02\): frames 80x64, calibration 64x48"):
        open_capture(n3v, "n3v")
    with pytest.raises(InputError, match="aspect ratio 1.2500 vs 1.3333"):  # 80x64 is not 4:3: no anisotropic K
        open_capture(n3v, "n3v", size_mismatch="scale")
    cropped = open_capture(n3v, "n3v", size_mismatch="crop")
    assert cropped.camera("cam02").width == W
    got = cropped.read_frames("cam02", 0, 1)[0]
    kept = open_capture(n3v, "n3v", size_mismatch="keep")
    full = kept.read_frames("cam02", 0, 1)[0]
    assert (kept.camera("cam02").width, kept.camera("cam02").height) == (80, 64)
    np.testing.assert_array_equal(got, full[8:56, 8:72])


def write_multiview(root: Path, use_pngs: bool = False, dist: bool = False) -> list[Camera]:
    cams = [make_camera(n, 0.3 * i) for i, n in enumerate(["left", "mid", "right"])]
    if dist:
        cams[0].dist = np.array([-0.1, 0.01, 0.0, 0.0, 0.0])
    root.mkdir(parents=True, exist_ok=True)
    cameras_to_json(cams, [], None, root / "cameras.json")
    for i, cam in enumerate(cams):
        if use_pngs:
            (root / "frames" / cam.name).mkdir(parents=True)
            for k, frame in enumerate(frames(i)):
                iio.imwrite(root / "frames" / cam.name / f"{k:04d}.png", frame)
        else:
            write_video(root / "videos" / f"{cam.name}.mp4", frames(i), fps=12)
    return cams


def test_multiview_pngs_and_labels(tmp_path) -> None:
    root = tmp_path / "mv"
    write_multiview(root, use_pngs=True)
    (root / "labels").mkdir()
    for i, name in enumerate(["left", "mid", "right"]):
        np.savez(root / "labels" / f"{name}.npz", labels=np.full((T, H, W), i, dtype=np.uint8))
    (root / "regions.json").write_text(json.dumps({"names": ["a", "b", "c"]}))
    cap = open_capture(root, "multiview")
    assert cap.test_cameras == ["left"] and cap.fps is None
    np.testing.assert_array_equal(cap.read_frames("mid", 2, 4), frames(1)[2:4])  # PNG is lossless
    assert cap.labels("right", 1, 3).shape == (2, H, W) and cap.labels("right")[0, 0, 0] == 2
    assert cap.region_names == ["a", "b", "c"]
    np.savez(root / "labels" / "mid.npz", labels=np.zeros((T, H, W + 1), dtype=np.uint8))
    with pytest.raises(InputError, match=r"mid.npz: camera mid: labels have shape"):
        open_capture(root, "multiview")


def test_multiview_videos_and_checks(tmp_path) -> None:
    root = tmp_path / "mv"
    write_multiview(root)
    cap = open_capture(root, "multiview")
    assert cap.fps == pytest.approx(12) and cap.read_frames("right").shape == (T, H, W, 3)
    shutil.copy(root / "videos" / "mid.mp4", root / "videos" / "extra.mp4")
    with pytest.raises(InputError, match=r"camera\(s\) \['extra'\] that cameras.json does not list"):
        open_capture(root, "multiview")
    (root / "videos" / "extra.mp4").unlink()
    (root / "videos" / "mid.mp4").unlink()
    with pytest.raises(InputError, match="cameras.json: camera mid has no video"):
        open_capture(root, "multiview")
    (root / "cameras.json").unlink()
    with pytest.raises(InputError, match="cameras.json not found"):
        open_capture(root, "multiview")


def test_multiview_bad_rotation(tmp_path) -> None:
    root = tmp_path / "mv"
    write_multiview(root)
    data = json.loads((root / "cameras.json").read_text())
    data["cameras"][1]["R"] = [[1, 0, 0], [0, 1, 0], [0, 0, -1]]
    (root / "cameras.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="cameras.json: camera mid: rotation has determinant < 0"):
        open_capture(root, "multiview")


def write_technicolor(root: Path, n_cams: int = 11, n_frames: int = 2, first: int = 1) -> None:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["f cu cv ar sk qw qx qy qz tx ty tz"]
    for c in range(n_cams):
        lines.append(f"40 17.5 8.25 1 0 1 0 0 0 {0.1 * c} 0 0")
        for k in range(first, first + n_frames):
            iio.imwrite(root / f"Birthday_undist_{k:05d}_{c:02d}.png", frames(c, n=1, width=32, height=16)[0])
    (root / "cameras_parameters.txt").write_text("\n".join(lines) + "\n")


def test_technicolor(tmp_path) -> None:
    root = tmp_path / "tc"
    write_technicolor(root)
    cap = open_capture(root, "technicolor")
    assert len(cap.cameras) == 11 and cap.test_cameras == ["cam10"]
    assert (cap.cameras[3].width, cap.cameras[3].height) == (32, 16)
    np.testing.assert_allclose(cap.cameras[3].K[:2, 2], [17.5, 8.25])
    assert cap.frame_ids == [1, 2] and cap.read_frames("cam04").shape == (2, 16, 32, 3)
    (root / "Birthday_undist_00002_05.png").unlink()
    with pytest.raises(InputError, match="cam05: 1"):
        open_capture(root, "technicolor")
    assert open_capture(root, "technicolor", truncate=True).n_frames == 1


def test_technicolor_bad_inputs(tmp_path) -> None:
    root = tmp_path / "tc"
    write_technicolor(root, n_cams=3)
    assert open_capture(root, "technicolor").test_cameras == ["cam00"]
    iio.imwrite(root / "Birthday_undist_00001_07.png", frames(0, n=1, width=32, height=16)[0])
    with pytest.raises(InputError, match=r"images for camera\(s\) \['cam07'\]"):
        open_capture(root, "technicolor")
    (root / "Birthday_undist_00001_07.png").unlink()
    for k in (1, 2):
        (root / f"Birthday_undist_{k:05d}_01.png").unlink()
    with pytest.raises(InputError, match=r"cameras_parameters.txt: camera\(s\) \['cam01'\] have no images"):
        open_capture(root, "technicolor")
    write_technicolor(root, n_cams=3)
    (root / "Birthday_undist_00002_02.png").write_bytes(b"not a png")
    cap = open_capture(root, "technicolor")
    with pytest.raises(InputError, match="Birthday_undist_00002_02.png: not a readable image"):
        cap.read_frames("cam02")
    (root / "cameras_parameters.txt").unlink()
    with pytest.raises(InputError, match="cameras_parameters.txt not found"):
        open_capture(root, "technicolor")
