"""Chunked runs on the tiny synthetic scene (8 frames as chunks 0:4 and 4:8): ranges respected,
stitched video and bench table over all frames, mismatched ranges refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
from typer.testing import CliRunner

from moegs.chunked import ChunkedModel, check_tiling
from moegs.data.colmap_init import PointCloud
from moegs.data.dataset import Dataset
from moegs.data.frame_range import FrameRange, chunk_points, chunk_ranges, parse_frames
from moegs.data.views import StreamedViews
from moegs.errors import IncompatibleArtifactError, InputError
from moegs_cli.app import app

CONFIG = """
train_experts:
  checkpoint_every: 100000
  static: {iterations: 12}
  polynomial: {iterations: 12, densify: {stop: 0}}
train_router:
  iterations: 6
render:
  png: true
bench:
  fps_repeats: 1
  flip: false
"""
runner = CliRunner()


def invoke(workspace: Path, *args: str):
    return runner.invoke(app, ["-w", str(workspace), *args])


def written(result) -> list[str]:
    """The artifact paths a command printed on stdout."""
    assert result.exit_code == 0, result.output
    return [line for line in result.stdout.splitlines() if (Path(line) / "manifest.json").is_file()]


@pytest.fixture(scope="module")
def chunked(tmp_path_factory, tiny_demo):
    """Experts (static, polynomial) and a router per chunk, the stitched MoE, and what training read."""
    workspace = tmp_path_factory.mktemp("chunks_ws")
    source = tiny_demo.steps["dataset"].artifact.path
    dataset = workspace / source.parent.parent.name / "dataset" / source.name
    shutil.copytree(source, dataset)
    config = workspace / "chunks.yaml"
    config.write_text(CONFIG)
    reads: dict[str, list[int]] = {}
    sampled: dict[str, list[tuple[int, int]]] = {}
    experts, moes = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        frame, sample = Dataset.frame, StreamedViews.sample
        current = ""

        def spy_frame(self, cam_name, i):
            reads[current].append(self.frame_offset + int(i))
            return frame(self, cam_name, i)

        def spy_sample(self, generator, frame_limit):
            picked = sample(self, generator, frame_limit)
            sampled[current].append((picked[1], self.dataset.n_frames))
            return picked

        mp.setattr(Dataset, "frame", spy_frame)
        mp.setattr(StreamedViews, "sample", spy_sample)
        for frames in ("0:4", "4:8"):
            current = frames
            reads[frames], sampled[frames] = [], []
            experts[frames] = written(invoke(workspace, "train-experts", "-d", str(dataset), "-e", "static,polynomial",
                                             "--frames", frames, "-c", str(config)))
    for frames, refs in experts.items():
        moes[frames] = written(invoke(workspace, "train-router", "-e", ",".join(refs), "-c", str(config)))[0]
    stitched = written(invoke(workspace, "stitch", moes["4:8"], moes["0:4"]))[0]
    return {"workspace": workspace, "dataset": dataset, "config": config, "experts": experts, "moes": moes, "stitched": stitched,
            "reads": reads, "sampled": sampled}


def manifest(path: str) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())


def test_a_chunk_never_sees_frames_outside_its_range(chunked):
    for frames, (start, stop) in (("0:4", (0, 4)), ("4:8", (4, 8))):
        sampled = chunked["sampled"][frames]
        assert sampled and all(0 <= f < n == 4 for f, n in sampled)  # the loop samples local frames of a 4-frame sequence
        reads = set(chunked["reads"][frames])
        assert reads <= set(range(start, stop)) and len(reads) > 1  # and only its own frames are ever read
        for ref in chunked["experts"][frames]:
            m = manifest(ref)
            assert m["compat"]["frames"] == [start, stop] and m["compat"]["n_frames"] == 4
    ids = {manifest(r)["id"] for refs in chunked["experts"].values() for r in refs}
    assert len(ids) == 4  # the same family on two ranges: two artifacts
    assert manifest(chunked["moes"]["4:8"])["compat"]["frames"] == [4, 8]


def test_a_router_refuses_experts_of_different_ranges(chunked):
    first, second = chunked["experts"]["0:4"][0], chunked["experts"]["4:8"][1]
    result = invoke(chunked["workspace"], "train-router", "-e", first, "-e", second, "-c", str(chunked["config"]))
    assert result.exit_code == 3
    line = " ".join(result.output.split())
    assert "cover different frames: 0:4" in line and "vs 4:8" in line and "one router per chunk" in line


def test_a_range_outside_the_dataset_is_exit_2_before_training(chunked):
    result = invoke(chunked["workspace"], "train-experts", "-d", str(chunked["dataset"]), "-e", "static",
                    "--frames", "6:20", "-c", str(chunked["config"]))
    assert result.exit_code == 2 and "6:20" in result.output and "8 frames" in result.output


def test_stitch_refuses_mixed_kinds_and_overlaps(chunked):
    ws, moe0 = chunked["workspace"], chunked["moes"]["0:4"]
    mixed = invoke(ws, "stitch", moe0, chunked["experts"]["4:8"][0])
    assert mixed.exit_code == 3 and "mix kinds" in mixed.output
    overlap = invoke(ws, "stitch", moe0, moe0)
    assert overlap.exit_code == 3 and "overlap on frames 0:4" in " ".join(overlap.output.split())
    mixed_families = invoke(ws, "stitch", chunked["experts"]["0:4"][0], chunked["experts"]["4:8"][1])
    assert mixed_families.exit_code == 3 and "family" in mixed_families.output


def test_stitched_render_is_one_video_of_every_frame_in_order(chunked):
    ws, config = chunked["workspace"], str(chunked["config"])
    whole = Path(written(invoke(ws, "render", "-m", chunked["stitched"], "-c", config))[0])
    parts = [Path(written(invoke(ws, "render", "-m", chunked["moes"][f], "-c", config))[0]) for f in ("0:4", "4:8")]
    camera = manifest(str(whole))["metrics"]["videos"][0][:-len(".mp4")]
    frames = sorted((whole / camera / "frames").glob("*.png"))
    assert len(frames) == 8 and imageio_ffmpeg.count_frames_and_secs(str(whole / f"{camera}.mp4"))[0] == 8
    chunk_frames = [p for part in parts for p in sorted((part / camera / "frames").glob("*.png"))]
    for stitched_png, chunk_png in zip(frames, chunk_frames, strict=True):
        assert np.array_equal(iio.imread(stitched_png), iio.imread(chunk_png))


def test_bench_of_stitched_models_is_one_table_over_all_frames(chunked):
    ws = chunked["workspace"]
    experts = written(invoke(ws, "stitch", chunked["experts"]["0:4"][0], chunked["experts"]["4:8"][0]))[0]
    bench = Path(written(invoke(ws, "bench", chunked["stitched"], experts, "-c", str(chunked["config"])))[0])
    results = json.loads((bench / "results.json").read_text())
    assert results["frames"] == 8 and results["frame_range"] == [0, 8] and len(results["rows"]) == 2
    moe_row = next(r for r in results["rows"] if r["kind"] == "chunked" and r["model"].startswith("MoE"))
    chunk_psnr = [manifest(chunked["moes"][f])["metrics"]["psnr"] for f in ("0:4", "4:8")]
    assert moe_row["psnr"] == pytest.approx(np.mean(chunk_psnr), abs=1e-3)  # equal chunks: the mean of their scores
    assert moe_row["model"].endswith("x2 chunks")
    single = invoke(ws, "bench", chunked["stitched"], chunked["moes"]["0:4"])
    assert single.exit_code == 3 and "cover different frames" in single.output


def test_frame_ranges_parse_and_check():
    assert parse_frames("0:150", 300) == FrameRange(0, 150)
    assert parse_frames("150:", 300) == FrameRange(150, 300) and parse_frames(":10", 300) == FrameRange(0, 10)
    assert parse_frames([4, 8], 8) == FrameRange(4, 8) and parse_frames(None, 8) == FrameRange(0, 8)
    for bad in ("0-150", "a:b", "5:3", "0:301", [1]):
        with pytest.raises(InputError):
            parse_frames(bad, 300)
    assert chunk_ranges(300, 150) == [FrameRange(0, 150), FrameRange(150, 300)]
    assert chunk_ranges(7, 3)[-1] == FrameRange(6, 7)
    from moegs.experts.settings import TrainExpertsConfig

    with pytest.raises(InputError, match="START:STOP"):
        TrainExpertsConfig(frames="0..4")


def test_tiling_and_time_mapping():
    for ranges, message in (([FrameRange(0, 4), FrameRange(5, 8)], "4:5 uncovered"),
                            ([FrameRange(0, 5), FrameRange(4, 8)], "overlap on frames 4:5"),
                            ([FrameRange(0, 4)], "4:8 uncovered")):
        with pytest.raises(IncompatibleArtifactError, match=message):
            check_tiling(ranges, 8, [str(r) for r in ranges])
    a, b = object(), object()
    model = ChunkedModel([(FrameRange(0, 4), a), (FrameRange(4, 8), b)], 8)
    times = (np.arange(8) / 8).astype(np.float32)
    local = (np.arange(4) / 4).astype(np.float32)
    assert [model.locate(float(t)) for t in times] == [(a, float(x)) for x in local] + [(b, float(x)) for x in local]
    points = PointCloud(np.zeros((3, 3)), np.zeros((3, 3)), np.zeros(3), np.zeros(3, dtype=np.int32),
                        np.array([0.0, 5 / 8, 7 / 8], dtype=np.float32))
    assert chunk_points(points, FrameRange(4, 8), 8).time.tolist() == [0.0, 0.25, 0.75]


def test_export_plays_the_stitched_sequence_and_splatv_refuses_it(chunked, tmp_path):
    ws, stitched = chunked["workspace"], chunked["stitched"]
    plys = invoke(ws, "export", "--model", stitched, "--format", "ply-sequence", "--out", str(tmp_path / "seq"))
    assert plys.exit_code == 0, plys.output
    assert len(list((tmp_path / "seq").glob("frame_*.ply"))) == 8
    splatv = invoke(ws, "export", "--model", stitched, "--format", "splatv", "--out", str(tmp_path / "x.splatv"))
    assert splatv.exit_code == 3 and "export each chunk" in " ".join(splatv.output.split())
    assert not (tmp_path / "x.splatv").exists()
