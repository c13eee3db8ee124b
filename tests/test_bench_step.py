"""Smoke test of the training-step benchmark: it runs a family end to end and reports every part."""

from __future__ import annotations

import json
import sys

import pytest

from moegs import bench_step


def test_bench_step_reports_the_split(capsys):
    import numba
    import torch

    threads = torch.get_num_threads(), numba.get_num_threads()
    bench_step.main(["--json", "--families", "polynomial", "--steps", "1", "--gaussians", "600", "--cpu-time"])
    result = json.loads(capsys.readouterr().out)
    assert result["cpu"]["numba_target"] and result["cpu"]["cpu_model"]
    assert (result["width"], result["height"]) == (256, 192) and result["clock"].startswith("thread CPU")
    assert result["malloc"] == ("freed blocks retained" if sys.platform.startswith("linux") else "C library defaults")
    (row,) = result["families"]
    assert row["family"] == "polynomial" and row["gaussians"] == 600
    parts = [row[f"{p}_ms"] for p in bench_step.PARTS]
    assert all(v >= 0.0 for v in parts) and row["raster_fwd_ms"] > 0.0 and row["backward_ms"] > 0.0
    assert row["step_ms"] == pytest.approx(sum(parts), abs=0.05)
    assert (torch.get_num_threads(), numba.get_num_threads()) == threads  # --cpu-time's one thread does not leak


def test_bench_step_refuses_an_unknown_family():
    with pytest.raises(SystemExit, match="unknown gaussian_splat"):
        bench_step.main(["--families", "gaussian_splat"])


def test_bench_step_defaults_to_the_demo_caps():
    """Without --gaussians each family is timed at the Gaussian count its demo expert densifies to."""
    settings = bench_step.demo_settings()
    caps = {f: bench_step.preset_gaussians(f, settings) for f in ("hexplane", "keyframe", "static")}
    assert caps["hexplane"] == settings["hexplane"]["densify"]["max_gaussians"]
    assert caps["keyframe"] == settings["keyframe"]["densify"]["max_gaussians"]
    assert "static" not in settings
    assert caps["static"] == max(v["densify"]["max_gaussians"] for v in settings.values()
                                 if isinstance(v, dict) and "densify" in v)
