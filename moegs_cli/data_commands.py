"""Data commands: ``synth`` (built-in scene) and ``preprocess`` (capture -> dataset artifact)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moegs.config import resolve_config
from moegs.progress import console
from moegs_cli.common import ConfigOpt, ForceOpt, SetOpt, handle_errors, report, state
from stages import preprocess as preprocess_stage


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
    app.command("preprocess")(preprocess)


@handle_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the raw N3V-format scene into.")],
    preset: Annotated[str, typer.Option("--preset", "-p", help="tiny (tests), demo (make demo) or large.")] = "demo",
    seed: Annotated[int, typer.Option(help="Random seed of textures and motion.")] = 0,
    rig: Annotated[str, typer.Option(help="forward (N3V-like, default) or surround (6 cameras around a room, 55-65 degrees apart).")] = "forward",
) -> None:
    """Render the built-in synthetic dynamic scene as a raw N3V folder (camXX.mp4 + poses_bounds.npy + region labels).

    The scene is ray-cast analytically (not with Gaussians) and mixes a static background, a rigid
    object, a fast small object, a deforming sheet and a colour-changing panel, so different
    experts win different regions. Example: moegs synth data/synth --preset tiny --rig surround
    """
    from moegs.data.synthetic import PRESETS, RIGS, generate
    from moegs.errors import InputError

    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    if rig not in RIGS:
        raise InputError(f"unknown rig {rig!r} (choose from {', '.join(RIGS)})")
    summary = generate(out, preset=preset, seed=seed, rig=rig)
    width, height = summary["size"]
    console.print(
        f"wrote the {preset} {rig} scene to {out}: {summary['cams']} cameras, {width}x{height}, {summary['frames']} frames, "
        f"test camera {summary['test_camera']} ({summary['seconds']:.1f} s)"
    )
    typer.echo(str(out))


@handle_errors
def preprocess(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="Capture folder (see README, 'Data formats').")],
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="n3v, technicolor or multiview.", show_default=False)] = None,
    scene: Annotated[str | None, typer.Option(help="Scene name in the workspace (default: the folder name).", show_default=False)] = None,
    frame_start: Annotated[int | None, typer.Option(help="First frame to keep.", show_default=False)] = None,
    frame_stop: Annotated[int | None, typer.Option(help="Stop before this frame (default: all).", show_default=False)] = None,
    downscale: Annotated[float | None, typer.Option(help="Divide the image size by this factor, >= 1 (intrinsics follow).", show_default=False)] = None,
    max_width: Annotated[int | None, typer.Option(help="Cap each camera's width at this many pixels.", show_default=False)] = None,
    colmap_frames: Annotated[int | None, typer.Option(help="Triangulate initial points on this many frames spread over the clip (default 4).", show_default=False)] = None,
    foreground_seeds: Annotated[int | None, typer.Option(help="Seeds per moving patch of each COLMAP frame: its triangulated depths spread over the frame's moving pixels (default 0 = off; the demo uses 60).", show_default=False)] = None,
    carve_frames: Annotated[int | None, typer.Option(help="Carve moving content on this many frames (default 8).", show_default=False)] = None,
    init_points: Annotated[int | None, typer.Option(help="Points of a random init, and the most carving keeps (default 20000).", show_default=False)] = None,
    truncate: Annotated[bool | None, typer.Option("--truncate", help="Cut videos of different lengths to the shortest instead of refusing.", show_default=False)] = None,
    size_mismatch: Annotated[str | None, typer.Option(help="When frames differ from the calibrated size: keep (keep the intrinsics, use the frames' size), scale (rescale intrinsics; same aspect ratio only) or crop (centre-crop frames). Default: refuse.", show_default=False)] = None,
    init: Annotated[str | None, typer.Option(help="Initial points: auto (default: COLMAP, else carving, else random in the shared frusta), colmap, carve or random.", show_default=False)] = None,
    test_camera: Annotated[list[str] | None, typer.Option("--test-camera", help="Held-out camera name (repeatable); default per format.", show_default=False)] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    force: ForceOpt = False,
) -> None:
    """Decode frames, convert cameras to OpenCV, split train/test and make initial points (COLMAP or carving).

    Writes a dataset artifact (frames, cameras.json, points.ply, preview.png) and prints its path.
    Example: moegs preprocess data/synth --format n3v --downscale 2
    """
    cfg = resolve_config(
        preprocess_stage.PreprocessConfig,
        config,
        "preprocess",
        overrides,
        explicit={
            "format": fmt,
            "frame_start": frame_start,
            "frame_stop": frame_stop,
            "downscale": downscale,
            "max_width": max_width,
            "colmap_frames": colmap_frames,
            "foreground_seeds": foreground_seeds,
            "carve_frames": carve_frames,
            "init_points": init_points,
            "truncate": truncate,
            "size_mismatch": size_mismatch,
            "init": init,
            "test_cameras": test_camera,
        },
    )
    report(preprocess_stage.run(cfg, source, state(ctx).workspace, scene, force=force))
