"""The mixture speed benchmark renders the same frames on both paths and reports sane figures."""

from __future__ import annotations

from moegs.context import resolve_context
from moegs.moe.bench import run_bench


def test_single_pass_and_naive_agree_at_small_size() -> None:
    result = run_bench(["polynomial", "static"], 400, 64, 48, resolve_context("cpu", "cpu"), frames=2)
    assert result["max_abs_diff"] < 1e-5
    assert result["single_pass_ms"] > 0 and result["naive_ms"] > 0
    assert result["gaussians_per_expert"] == 400 and result["backend"] == "cpu"
