"""``moegs export``: PLY sequences that read back as standard 3DGS and re-render, splatv records that decode
to the polynomial expert, and refusals of what a format cannot hold."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from plyfile import PlyData
from typer.testing import CliRunner

from moegs.context import CPU
from moegs.data.dataset import Dataset, normalised_times
from moegs.errors import InputError
from moegs.experts.temporal import temporal_rbf
from moegs.export import mean_gates, splatv_records
from moegs.gaussians import activated, colors, load_ply, ply_property_names, sh_degree_of
from moegs.models import dataset_of, load_model
from moegs.rendering import camera_center, render_expert
from moegs.raster import rasterize
from moegs.sh import sh0_to_rgb
from moegs_cli.app import app

pytestmark = pytest.mark.slow
runner = CliRunner()
FAMILIES = ("hexplane", "embedding", "polynomial", "keyframe")


def _expert(tiny_demo, family):
    return tiny_demo.steps[f"expert {family}"].artifact


def _export(workspace, model, fmt, out, *extra):
    return runner.invoke(app, ["-w", str(workspace), "export", "--model", str(model), "--format", fmt,
                               "--out", str(out), "--device", "cpu", "--backend", "cpu", *extra])


def _render_ply(path, camera):
    params = load_ply(path)
    means, quats, scales, opacities = activated(params)
    rgb = colors(params, sh_degree_of(params), camera_center(camera))
    return rasterize(means, quats, scales, opacities, rgb, camera.viewmat_tensor(), camera.K_tensor(), camera.width,
                     camera.height, torch.zeros(3), near=camera.near, far=camera.far, backend="cpu").image


@pytest.mark.parametrize("family", FAMILIES)
def test_ply_sequence_reads_back_as_standard_3dgs_and_rerenders(tiny_demo, demo_workspace, tmp_path, family):
    artifact = _expert(tiny_demo, family)
    out = tmp_path / f"seq_{family}"
    result = _export(demo_workspace, artifact.path, "ply-sequence", out)
    assert result.exit_code == 0, result.output
    expert = load_model(artifact, CPU)
    files = sorted(out.glob("*.ply"))
    assert [f.name for f in files] == [f"frame_{i:05d}.ply" for i in range(expert.n_frames)]
    assert not out.with_name(out.name + ".partial").exists()

    camera = Dataset.load(dataset_of(artifact).path).test_cameras[0]
    times = normalised_times(expert.n_frames)
    worst = 0.0
    for i in (0, expert.n_frames // 2, expert.n_frames - 1):
        t = float(times[i])
        vertex = PlyData.read(str(files[i]))["vertex"]
        assert list(vertex.data.dtype.names) == ply_property_names(expert.config.sh_degree)
        deformed = expert.gaussians_at(t, camera_center(camera))
        read = lambda *names: np.stack([vertex[n] for n in names], axis=1)  # noqa: E731
        np.testing.assert_allclose(read("x", "y", "z"), deformed.means.detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(np.exp(read("scale_0", "scale_1", "scale_2")), deformed.scales.detach().numpy(), rtol=1e-5)
        quats = read("rot_0", "rot_1", "rot_2", "rot_3")
        np.testing.assert_allclose(quats / np.linalg.norm(quats, axis=1, keepdims=True), deformed.quats.detach().numpy(), atol=1e-6)
        opacity = 1.0 / (1.0 + np.exp(-vertex["opacity"]))
        np.testing.assert_allclose(opacity, deformed.opacities.detach().numpy().clip(1e-6, 1 - 1e-6), atol=1e-6)
        np.testing.assert_allclose(read("f_dc_0", "f_dc_1", "f_dc_2"), expert.params["sh0"][:, 0].detach().numpy(), atol=0)
        diff = float((_render_ply(files[i], camera) - render_expert(expert, camera, t, CPU).image).abs().max().detach())
        worst = max(worst, diff)
    print(f"{family}: re-rendered PLY vs expert, max abs diff {worst:.2e}")
    assert worst < 1e-5


def test_moe_ply_sequence_weights_each_expert_by_its_mean_gate(tiny_demo, demo_workspace, tmp_path):
    artifact = tiny_demo.steps["moe"].artifact
    out = tmp_path / "moe_seq"
    assert _export(demo_workspace, artifact.path, "ply-sequence", out).exit_code == 0
    model = load_model(artifact, CPU)
    dataset = Dataset.load(dataset_of(artifact).path)
    experts = model.experts.experts
    frame = 3
    t = float(normalised_times(experts[0].n_frames)[frame])
    weights = mean_gates(model, dataset, t, ctx=CPU)
    print(f"mean gates at frame {frame}: {np.round(weights, 3)} (families {model.families})")
    assert weights.shape == (len(experts),) and np.all(weights >= 0) and abs(weights.sum() - 1.0) < 1e-6

    vertex = PlyData.read(str(out / f"frame_{frame:05d}.ply"))["vertex"]
    assert len(vertex.data) == sum(e.num_gaussians for e in experts)
    opacity = 1.0 / (1.0 + np.exp(-vertex["opacity"].astype(np.float64)))
    start = 0
    for expert, w in zip(experts, weights):
        own = expert.gaussians_at(t, torch.zeros(3)).opacities.detach().double().numpy()
        np.testing.assert_allclose(opacity[start:start + len(own)], (own * w).clip(1e-7, 1 - 1e-7), atol=1e-6)
        start += len(own)


def _decode_splatv(path):
    data = path.read_bytes()
    magic, json_len = struct.unpack_from("<II", data, 0)
    header = json.loads(data[8:8 + json_len])
    body = np.frombuffer(data, dtype="<u4", offset=8 + json_len)
    return magic, json_len, header, body, len(data)


def _halves(words):
    """uint32 words -> (low half, high half) as float32, as GLSL's unpackHalf2x16."""
    low = (words & 0xFFFF).astype(np.uint16).view(np.float16).astype(np.float32)
    high = (words >> 16).astype(np.uint16).view(np.float16).astype(np.float32)
    return low, high


def test_splatv_header_and_records_decode_to_the_polynomial_expert(tiny_demo, demo_workspace, tmp_path):
    artifact = _expert(tiny_demo, "polynomial")
    out = tmp_path / "model.splatv"
    result = _export(demo_workspace, artifact.path, "splatv", out)
    assert result.exit_code == 0, result.output
    expert = load_model(artifact, CPU)
    n = expert.num_gaussians
    magic, json_len, header, body, size = _decode_splatv(out)
    assert magic == 0x674B
    (chunk,) = header
    assert chunk["type"] == "splat" and chunk["texwidth"] == 4096
    assert chunk["texheight"] == -(-n // 1024) and chunk["size"] == chunk["texwidth"] * chunk["texheight"] * 16
    assert size == 8 + json_len + chunk["size"]
    dataset = Dataset.load(dataset_of(artifact).path)
    assert [c["img_name"] for c in chunk["cameras"]] == [c.name for c in dataset.cameras]
    cam0 = dataset.cameras[0]
    np.testing.assert_allclose(np.asarray(chunk["cameras"][0]["rotation"]) @ [0, 0, 1], cam0.R[2], atol=1e-12)

    rec = body.reshape(-1, 16)[:n]
    assert not body.reshape(-1, 16)[n:].any()  # padding of the last texture row
    p = {k: v.detach().double().numpy() for k, v in expert.params.items()}
    xyz = rec[:, 0:3].copy().view(np.float32)
    np.testing.assert_array_equal(xyz, p["means"].astype(np.float32))
    (q0, q1), (q2, q3) = _halves(rec[:, 3]), _halves(rec[:, 4])
    half = dict(rtol=1e-3, atol=1e-4)  # IEEE half: 11 significant bits
    np.testing.assert_allclose(np.stack([q0, q1, q2, q3], 1), p["quats"], **half)
    (s0, s1), (s2, zero) = _halves(rec[:, 5]), _halves(rec[:, 6])
    np.testing.assert_allclose(np.stack([s0, s1, s2], 1), np.exp(p["log_scales"]), **half)
    assert not zero.any()
    rgba = rec[:, 7:8].copy().view(np.uint8).astype(np.float64) / 255.0
    np.testing.assert_allclose(rgba[:, :3], np.clip(sh0_to_rgb(torch.from_numpy(p["sh0"][:, 0])).numpy(), 0, 1), atol=0.5 / 255 + 1e-9)
    np.testing.assert_allclose(rgba[:, 3], 1 / (1 + np.exp(-p["opacity_logits"])), atol=0.5 / 255 + 1e-9)
    motion = np.concatenate([np.stack(_halves(rec[:, 8 + i]), 1) for i in range(5)], axis=1)[:, :9]
    np.testing.assert_allclose(motion, p["motion"].reshape(n, 9), **half)
    omega = np.concatenate([np.stack(_halves(rec[:, 13 + i]), 1) for i in range(2)], axis=1)
    np.testing.assert_allclose(omega, p["omega"], **half)
    t_center, t_scale = _halves(rec[:, 15])
    np.testing.assert_allclose(t_center, p["t_center"], **half)
    np.testing.assert_allclose(t_scale, np.exp(p["t_log_scale"]), **half)

    # splaTV's vertex shader on the decoded record equals the expert's own motion at time t
    t = 0.625
    dt = t - t_center.astype(np.float64)
    b = motion.reshape(n, 3, 3).astype(np.float64)
    position = xyz + dt[:, None] * b[:, 0] + dt[:, None] ** 2 * b[:, 1] + dt[:, None] ** 3 * b[:, 2]
    topacity = np.exp(-((dt / t_scale) ** 2))
    deformed = expert.gaussians_at(t, torch.zeros(3))
    rbf = temporal_rbf(t - expert.params["t_center"], expert.params["t_log_scale"]).detach().numpy()
    np.testing.assert_allclose(position, deformed.means.detach().numpy(), atol=2e-3)
    np.testing.assert_allclose(topacity, rbf, atol=2e-3)


def test_splatv_refuses_what_it_cannot_express_and_leaves_nothing(tiny_demo, demo_workspace, tmp_path):
    out = tmp_path / "refused.splatv"
    hexplane = _export(demo_workspace, _expert(tiny_demo, "hexplane").path, "splatv", out)
    assert hexplane.exit_code == 3 and "polynomial motion" in hexplane.output and "hexplane" in hexplane.output
    moe = _export(demo_workspace, tiny_demo.steps["moe"].artifact.path, "splatv", out)
    assert moe.exit_code == 3 and "router" in moe.output and str(_expert(tiny_demo, "polynomial").path) in " ".join(moe.output.split())
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_export_refuses_to_overwrite_without_force_and_bad_format(tiny_demo, demo_workspace, tmp_path):
    poly = _expert(tiny_demo, "polynomial").path
    out = tmp_path / "poly.splatv"
    out.write_text("keep me")
    again = _export(demo_workspace, poly, "splatv", out)
    assert again.exit_code == 2 and "--force" in again.output and out.read_text() == "keep me"
    assert _export(demo_workspace, poly, "splatv", out, "--force").exit_code == 0
    assert struct.unpack_from("<I", out.read_bytes())[0] == 0x674B
    bad = _export(demo_workspace, poly, "spz", tmp_path / "x.spz")
    assert bad.exit_code == 2 and "ply-sequence" in bad.output


def test_splatv_records_refuse_values_beyond_half_floats(tiny_demo):
    expert = load_model(_expert(tiny_demo, "polynomial"), CPU)
    with torch.no_grad():
        saved = expert.params["motion"].clone()
        expert.params["motion"][0, 2, 1] = 1e6
        try:
            with pytest.raises(InputError, match="motion"):
                splatv_records(expert)
        finally:
            expert.params["motion"].copy_(saved)
