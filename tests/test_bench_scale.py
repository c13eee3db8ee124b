"""bench_scale: its capture is geometrically consistent, its children are measured, and it runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moegs.bench_scale import BACKGROUND_DEPTH, bench_decoding, camera_frames, format_report, main, rig, run_cli


def test_rig_content_shifts_by_parallax() -> None:
    """The background of camera j is camera i's shifted by f * (offset) / depth pixels (one plane, one rotation)."""
    cameras = rig(5, 96, 64)
    distances = [np.linalg.norm(c.center) for c in cameras]
    assert cameras[0].name == "cam00" and distances[0] == min(distances)  # N3V's test camera is the middle one
    a = cameras[0]
    b = next(c for c in cameras if c.center[1] == a.center[1] and c.center[0] != a.center[0])
    shift = int(round(a.K[0, 0] * (b.center[0] - a.center[0]) / BACKGROUND_DEPTH))
    first_a, first_b = next(camera_frames(a, 4)), next(camera_frames(b, 4))
    rows = slice(0, 8)  # the moving square starts in the middle rows, so the top rows are background only
    if shift > 0:
        np.testing.assert_array_equal(first_b[rows, :-shift], first_a[rows, shift:])
    else:
        np.testing.assert_array_equal(first_b[rows, -shift:], first_a[rows, :shift])
    frames = list(camera_frames(a, 4))
    assert len(frames) == 4 and frames[0].shape == (64, 96, 3) and not np.array_equal(frames[0], frames[1])


def test_children_are_measured_and_failures_name_the_log(tmp_path) -> None:
    row = run_cli(["--version"], tmp_path / "version.log")
    assert row["seconds"] > 0 and 0 < row["cpu_seconds"] and row["peak_rss_mb"] > 10 and row["peak_cuda_mb"] is None
    with pytest.raises(RuntimeError, match=r"exited 2; log .*bad.log"):
        run_cli(["preprocess", str(tmp_path / "missing")], tmp_path / "bad.log")


def test_decoding_comparison(tmp_path) -> None:
    (entry,) = bench_decoding(tmp_path, 2, sizes=((64, 48),))
    assert entry["target"] == "32x24" and entry["decode_then_resize_s"] > 0 and entry["ffmpeg_scale_s"] > 0


@pytest.mark.slow
def test_end_to_end_at_toy_size(tmp_path, capsys) -> None:
    code = main(["--frames", "3", "--cameras", "2", "--size", "64x48", "--steps", "1", "--router-steps", "1",
                 "--render-frames", "2", "--source-scale", "2", "--init-arg=--init", "--init-arg=random", "--families", "hexplane,polynomial", "--decode-frames", "0",
                 "--workdir", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    stages = [row["stage"] for row in report["cases"]]
    assert stages == ["preprocess", "train-experts:hexplane", "train-experts:polynomial", "train-router", "prune",
                      "render", "bench"]
    assert all(row["frames"] == 3 and row["seconds"] > 0 and row["peak_rss_mb"] > 10 for row in report["cases"])
    assert set(report["train_step_seconds"]["3"]) == {"hexplane", "polynomial"}
    assert (tmp_path / "frames3" / "scale" / "bench").is_dir()
    render, = (tmp_path / "frames3" / "scale" / "render").glob("*/manifest.json")
    assert json.loads(render.read_text())["metrics"]["frames"] == 2  # frames 0 and 2 of 3: --render-frames 2
    assert report["render_frames"] == 2 and report["source"] == "128x96"  # videos at 2x, preprocessed at --downscale 2
    dataset, = (tmp_path / "frames3" / "scale" / "dataset").glob("*/manifest.json")
    assert (json.loads(dataset.read_text())["metrics"]["width"], json.loads(dataset.read_text())["metrics"]["height"]) == (64, 48)
    assert "at 64x48 (decoded from 128x96 videos)" in format_report(report)


def test_report_checks_the_memory_goal() -> None:
    def row(frames: int, rss: float) -> dict:
        return {"frames": frames, "stage": "train-router", "seconds": 2.0, "cpu_seconds": 1.5, "peak_rss_mb": rss,
                "peak_cuda_mb": None}

    base = {"cameras": 20, "width": 1352, "height": 1014, "cpu": "AMD EPYC", "decode": [], "steps": 12,
            "router_steps": 6, "eval_frames": 4, "score_views": 0, "render_frames": 0,
            "train_step_seconds": {30: {"hexplane": 1.25}}}
    flat = format_report({**base, "cases": [row(30, 1000), row(300, 1100)]})
    assert "(x1.10); meets the goal" in flat and "hexplane 1.25" in flat
    assert "scores 4 spread test frames, prune all views, render all frames" in flat
    assert "misses the goal" in format_report({**base, "cases": [row(30, 1000), row(300, 1300)]})
    assert "misses the goal" in format_report({**base, "cases": [row(30, 4000), row(300, 4100)]})


def test_odd_sizes_are_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--size", "676x507"])
