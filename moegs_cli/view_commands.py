"""Commands that show a model outside the pipeline: ``view`` (web viewer) and ``export`` (other viewers' formats)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from moegs.progress import console, progress_bar
from moegs_cli.common import ForceOpt, handle_errors, state
from moegs_cli.train_commands import BackendOpt, DeviceOpt

if TYPE_CHECKING:
    from moegs.view.server import Viewer

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Expert or moe artifact (path, scene/kind/latest or id prefix).")]
TauOpt = Annotated[float | None, typer.Option(help="Test-time temperature of a MoE (default: the one it renders at, its train-router render_tau).", show_default=False)]


def register(app: typer.Typer) -> None:
    app.command("view")(view)
    app.command("export")(export)


def _load(ctx: typer.Context, model_ref: str, tau: float | None, device: str | None, backend: str | None):
    """The model artifact, the model loaded for rendering in its context, the dataset it was trained on, the context."""
    from moegs.artifacts import load_artifact
    from moegs.context import resolve_context
    from moegs.errors import InputError
    from moegs.models import MODEL_KINDS, load_model, model_dataset

    render_ctx = resolve_context(device or "auto", backend or "auto")
    artifact = load_artifact(model_ref, state(ctx).workspace)
    if artifact.kind not in MODEL_KINDS:
        raise InputError(f"{artifact.path}: expected an expert, moe or chunked artifact, not a {artifact.kind}")
    model = load_model(artifact, render_ctx, tau=tau)
    return artifact, model, model_dataset(artifact), render_ctx


def view(
    ctx: typer.Context,
    model: ModelOpt,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the viewer to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (the next free one is taken if it is busy; 0 = any).")] = 8080,
    height: Annotated[int, typer.Option(help="Initial render height in pixels (a slider in the page changes it).")] = 240,
    fps: Annotated[float | None, typer.Option(help="Playback FPS (default: the dataset's, else 10).", show_default=False)] = None,
    tau: TauOpt = None,
    device: DeviceOpt = None,
    backend: BackendOpt = None,
) -> None:
    """Serve an interactive web viewer of an expert or a MoE; open the printed address in a browser.

    The page sends its camera, this process renders it with the rasteriser and sends the picture
    back. Controls: frame slider with play/pause and FPS; mode (blend, each expert, gate map with
    legend, grid of experts with the ground truth when the view sits on a dataset camera); jump to
    any training or test camera; render height; a readout of backend and render FPS. Ctrl-C stops
    it (exit code 0).

    Example: moegs view --model synth/moe/latest
    """
    from moegs.allocator import retain_freed_memory
    from moegs.view.server import serve

    retain_freed_memory()  # every frame reuses the last one's buffers, as a stage's steps do
    viewer = _start_viewer(ctx, model, host, port, height, fps, tau, device, backend)
    serve(viewer, announce=lambda line: console.print(line, highlight=False))  # Ctrl-C here is the way out


@handle_errors
def _start_viewer(ctx: typer.Context, model: str, host: str, port: int, height: int, fps: float | None,
                  tau: float | None, device: str | None, backend: str | None) -> Viewer:
    """Load the model and start serving; a failure here is the usual one-line error and exit code."""
    from moegs.view.server import Viewer, ViewerOptions

    _artifact, loaded, dataset, render_ctx = _load(ctx, model, tau, device, backend)
    return Viewer(loaded, dataset, ViewerOptions(host=host, port=port, height=height, fps=fps, ctx=render_ctx))


@handle_errors
def export(
    ctx: typer.Context,
    model: ModelOpt,
    fmt: Annotated[str, typer.Option("--format", "-f", help="ply-sequence or splatv.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder (ply-sequence) or file (splatv) to write.")],
    tau: TauOpt = None,
    device: DeviceOpt = None,
    backend: BackendOpt = None,
    force: ForceOpt = False,
) -> None:
    """Export a model for other viewers.

    ply-sequence: one standard 3DGS PLY per frame (frame_00000.ply, ...; SuperSplat plays the
    folder as a sequence). A MoE exports all its experts' Gaussians in every frame, each expert's
    opacities multiplied by its mean gate at that frame (the router weight averaged over the test
    cameras' pixels): a static viewer has no router, so this approximates the blend.
    splatv: the splaTV browser format; it holds STG-style polynomial motion, so only a polynomial
    expert exports (colour reduced to its view-independent part); other models are refused with
    the reason.

    Example: moegs export --model synth/expert/latest --format ply-sequence --out seq/
    """
    from moegs.export import export_model

    artifact, loaded, dataset, render_ctx = _load(ctx, model, tau, device, backend)
    with progress_bar(f"export {fmt}", dataset.n_frames, enabled=fmt == "ply-sequence") as bar:
        path = export_model(loaded, artifact, dataset, fmt, out, force=force, ctx=render_ctx,
                            on_frame=lambda done, total: bar.advance())
    console.print(f"wrote {fmt}: {path}", highlight=False)
    typer.echo(str(path))
