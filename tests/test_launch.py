"""Executors: the pipeline as jobs (in process, submitit debug/local, mocked SLURM), sbatch lines, requeue + resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moegs.launch import ExecutorConfig, Group, JobStore, Output, Step, afterok, make_executor, resolve_argv, submit
from moegs_cli.app import app
from moegs_cli.cluster_commands import chunked_pipeline_groups, pipeline_groups, run_command_line

submitit = pytest.importorskip("submitit")
from submitit.slurm import slurm as submitit_slurm  # noqa: E402
from submitit.slurm.test_slurm import mocked_slurm  # noqa: E402

runner = CliRunner()

# The tiny pipeline with a handful of steps per stage: cheap, and every stage still writes its artifact.
TINY = """
train_experts:
  families: [static, polynomial]
  checkpoint_every: 100000
  static: {iterations: 4}
  polynomial: {iterations: 4}
train_router: {iterations: 2, log_every: 1}
prune: {keep_fraction: 0.5, finetune_steps: 0}
distill: {steps: 1}
render: {png: false}
bench: {fps_repeats: 1}
"""
EXECUTOR = """
executor:
  cluster: slurm
  partition: gpu
  account: vision
  timeout_min: 90
  mem_gb: 32
  cpus_per_task: 6
  array_parallelism: 2
"""


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, tiny_raw) -> Path:
    """A 2-frame dataset of the tiny scene in its own workspace (copied into each test's workspace)."""
    workspace = tmp_path_factory.mktemp("launch_ws")
    result = invoke("-w", str(workspace), "preprocess", str(tiny_raw), "--format", "n3v", "--frame-stop", "2",
                    "--colmap-frames", "1", "--scene", "tiny")
    assert result.exit_code == 0, result.output
    return workspace / "tiny"


def _workspace_with(dataset_scene: Path, root: Path) -> Path:
    shutil.copytree(dataset_scene / "dataset", root / "tiny" / "dataset")
    return root


def _ids(workspace: Path) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = {}
    for manifest in workspace.glob("tiny/*/*/manifest.json"):
        data = json.loads(manifest.read_text())
        ids.setdefault(data["kind"], set()).add(data["id"])
    return ids


def _run_tiny(workspace: Path, config: Path, executor: str) -> list[dict]:
    result = invoke("-w", str(workspace), "run", str(config), "--dataset", "tiny/dataset/latest", "--executor", executor)
    assert result.exit_code == 0, result.output
    listing = invoke("-w", str(workspace), "jobs", "--json")
    assert listing.exit_code == 0, listing.output
    return [json.loads(line) for line in listing.stdout.splitlines()]


@pytest.mark.slow
def test_local_executor_gives_the_in_process_artifacts(tmp_path, small_dataset):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    reference = _workspace_with(small_dataset, tmp_path / "in_process")
    rows = _run_tiny(reference, config, "none")
    expected = _ids(reference)
    assert {k: len(v) for k, v in expected.items()} == {"dataset": 1, "expert": 4, "moe": 2, "render": 1, "bench": 1}
    assert [r["step"] for r in rows] == ["expert:static", "expert:polynomial", "train-router", "prune", "distill",
                                         "render", "bench"]
    # The local executor: every job in its own process. (The debug executor runs them in this process;
    # test_train_experts_executor_reports_like_in_process compares it with the in-process run.)
    workspace = _workspace_with(small_dataset, tmp_path / "local")
    rows = _run_tiny(workspace, config, "local")
    assert _ids(workspace) == expected
    assert all(r["state"] == "done" and r["executor"] == "local" for r in rows)
    bench = next(r for r in rows if r["step"] == "bench")
    assert json.loads((Path(bench["artifacts"][0]) / "manifest.json").read_text())["id"] in expected["bench"]
    local_logs = list((tmp_path / "local" / "_jobs").glob("*/logs/*/*_log.out"))
    assert len(local_logs) == 7  # one log per job, under the workspace


def test_failed_family_is_named_and_dependents_are_skipped(tmp_path, small_dataset):
    """Every expert job fails (no CUDA for gsplat): the run says which family failed, exits 1, and the
    router and later stages never start."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    workspace = _workspace_with(small_dataset, tmp_path / "ws")
    result = invoke("-w", str(workspace), "run", str(config), "--dataset", "tiny/dataset/latest", "--executor", "debug",
                    "--set", "train_experts.backend=gsplat")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("failed ")]
    assert [line.split(" (exit 4) ")[0] for line in lines] == ["failed expert:static", "failed expert:polynomial"]
    assert all("backend 'gsplat' needs a CUDA device" in line for line in lines), lines
    rows = {r["step"]: r for r in map(json.loads, invoke("-w", str(workspace), "jobs", "--json").stdout.splitlines())}
    assert rows["expert:static"]["state"] == "failed" and rows["expert:static"]["exit_code"] == 4
    assert "gsplat" in rows["expert:static"]["error"] and "GPU machine" in rows["expert:static"]["error"]  # whole line
    assert set(rows) == {"expert:static", "expert:polynomial"}  # nothing downstream was submitted
    assert not list(workspace.glob("tiny/moe/*"))


def test_train_experts_executor_reports_like_in_process(tmp_path, small_dataset):
    workspace = _workspace_with(small_dataset, tmp_path / "ws")
    result = invoke("-w", str(workspace), "train-experts", "--dataset", "tiny/dataset/latest", "--experts", "static",
                    "--set", "static.iterations=2", "--executor", "debug")
    assert result.exit_code == 0, result.output
    other = _workspace_with(small_dataset, tmp_path / "other")
    in_process = invoke("-w", str(other), "train-experts", "--dataset", "tiny/dataset/latest",
                        "--experts", "static", "--set", "static.iterations=2")
    assert in_process.exit_code == 0, in_process.output
    (row,) = map(json.loads, invoke("-w", str(workspace), "jobs", "--json").stdout.splitlines())
    assert row["step"] == "expert:static" and row["state"] == "done"
    assert Path(row["artifacts"][0]).name == Path(in_process.stdout.strip().splitlines()[-1]).name


def test_moegs_run_submits_to_mocked_slurm(tmp_path):
    """An array for the experts, afterok dependents for the rest; the generated sbatch lines say so."""
    source = tmp_path / "capture"
    source.mkdir()
    config = tmp_path / "cluster.yaml"
    config.write_text(TINY + EXECUTOR)
    workspace = tmp_path / "ws"
    with mocked_slurm():
        result = invoke("-w", str(workspace), "run", str(config), "--source", str(source), "--experts",
                        "hexplane,polynomial,keyframe", "--student", "keyframe")
        assert result.exit_code == 0, result.output
        listing = invoke("-w", str(workspace), "jobs")
    run = result.stdout.strip().splitlines()[-1]
    rows = JobStore(workspace).rows(run)
    jobs = {r["step"]: r["job_id"] for r in rows}
    assert jobs == {"preprocess": "12", "expert:hexplane": "13_0", "expert:polynomial": "13_1", "expert:keyframe": "13_2",
                    "train-router": "14", "prune": "15", "distill": "16", "render": "17", "bench": "18"}
    assert all(r["state"] == "pending" for r in rows)
    assert "RUNNING" in listing.output and "train-router" in listing.output  # sacct's state (mocked)
    logs = workspace.resolve() / "_jobs" / run / "logs"
    scripts = {p.parent.name: p.read_text() for p in logs.glob("*/*_submission.sh")}
    expert_lines = _sbatch_lines(scripts["13"])
    assert expert_lines["array"] == "0-2%2" and expert_lines["gpus-per-node"] == "1"
    assert expert_lines["time"] == "90" and expert_lines["partition"] == "gpu" and expert_lines["account"] == "vision"
    assert expert_lines["dependency"] == "afterok:12" and expert_lines["mem"] == "32GB"
    assert expert_lines["cpus-per-task"] == "6" and expert_lines["job-name"] == "moegs-experts"
    assert _sbatch_lines(scripts["14"])["dependency"] == "afterok:13"
    assert "array" not in _sbatch_lines(scripts["14"])
    assert _sbatch_lines(scripts["18"])["dependency"] == "afterok:15:16:17"
    assert "dependency" not in _sbatch_lines(scripts["12"])
    assert str(logs) in expert_lines["output"]


def _sbatch_lines(script: str) -> dict[str, str]:
    lines = [line[len("#SBATCH --"):] for line in script.splitlines() if line.startswith("#SBATCH --")]
    return dict(line.partition("=")[::2] for line in lines)


GOLDEN_ROUTER_SBATCH = """#!/bin/bash

# Parameters
#SBATCH --account=vision
#SBATCH --cpus-per-task=6
#SBATCH --dependency=afterok:101:102
#SBATCH --error=/ws/_jobs/RUN/logs/%j/%j_0_log.err
#SBATCH --gpus-per-node=1
#SBATCH --job-name=moegs-router
#SBATCH --mem=32GB
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=/ws/_jobs/RUN/logs/%j/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --signal=USR2@90
#SBATCH --time=90
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /ws/_jobs/RUN/logs/%j/%j_%t_log.out --error /ws/_jobs/RUN/logs/%j/%j_%t_log.err python -u -m submitit.core._submit /ws/_jobs/RUN/logs/%j
"""


def test_sbatch_script_golden(tmp_path):
    """The router's sbatch script from the executor config: dependency, GPU, time and resource lines."""
    cfg = ExecutorConfig(cluster="slurm", partition="gpu", account="vision", timeout_min=90, mem_gb=32, cpus_per_task=6)
    with mocked_slurm():
        executor = make_executor(cfg, tmp_path / "logs")
    executor.update_parameters(name="moegs-router", slurm_dependency=afterok(["101_0", "101_1", "102"]))
    params = dict(executor._executor.parameters)
    text = submitit_slurm._make_sbatch_string(command="python -u -m submitit.core._submit /ws/_jobs/RUN/logs/%j",
                                              folder="/ws/_jobs/RUN/logs/%j", **params)
    assert text == GOLDEN_ROUTER_SBATCH


def test_pipeline_wiring():
    """Which job waits for which, and what each one is handed."""
    groups = pipeline_groups(workspace=Path("/ws"), config=Path("/c.yaml"), source=None, dataset="/ws/s/dataset/ab",
                             fmt=None, scene=None, families=["hexplane", "keyframe"], student="keyframe",
                             overrides=["train_experts.hexplane.iterations=5", "prune.keep_fraction=0.3"], force=False)
    by_name = {g.name: g for g in groups}
    assert [g.name for g in groups] == ["experts", "router", "prune", "distill", "render", "bench"]
    assert by_name["bench"].after == ("prune", "distill", "render") and by_name["router"].after == ("experts",)
    hexplane = by_name["experts"].steps[0]
    assert hexplane.resumable and list(hexplane.argv) == [
        "-w", "/ws", "train-experts", "--dataset", "/ws/s/dataset/ab", "--experts", "hexplane", "--executor", "none",
        "--config", "/c.yaml", "--set", "hexplane.iterations=5"]
    assert list(by_name["prune"].steps[0].argv)[-2:] == ["--set", "keep_fraction=0.3"]
    assert Output(("experts",), sep=",") in by_name["router"].steps[0].argv


def test_chunked_pipeline_wiring():
    """--chunk-frames: a pipeline per chunk, one stitch per model over the chunks, render and bench of the stitched ones."""
    from moegs.data.frame_range import chunk_ranges

    groups = chunked_pipeline_groups(
        workspace=Path("/ws"), config=Path("/c.yaml"), dataset="/ws/s/dataset/ab", chunks=chunk_ranges(300, 150),
        families=["hexplane", "keyframe"], student="keyframe", overrides=None, force=False)
    by_name = {g.name: g for g in groups}
    assert [g.name for g in groups][:4] == ["experts@0-150", "train-router@0-150", "prune@0-150", "distill@0-150"]
    keyframe = by_name["experts@150-300"].steps[1]
    assert keyframe.name == "expert:keyframe@150-300" and ["--frames", "150:300"] == list(keyframe.argv[9:11])
    assert by_name["train-router@150-300"].after == ("experts@150-300",)
    stitch_keyframe = by_name["stitch:keyframe"].steps[0].argv[-1]
    assert stitch_keyframe == Output(("experts@0-150", "experts@150-300"),
                                     steps=("expert:keyframe@0-150", "expert:keyframe@150-300"))
    assert by_name["stitch:distill"].steps[0].argv[-1] == Output(("distill@0-150", "distill@150-300"), last=True)
    assert by_name["render"].after == ("stitch:train-router",)
    assert set(by_name["bench"].after) == {"stitch:hexplane", "stitch:keyframe", "stitch:train-router", "stitch:prune",
                                           "stitch:distill", "render"}


def test_outputs_pick_steps_and_last_artifacts(tmp_path):
    store = JobStore(tmp_path)
    store.write_state("R", "a", state="done", artifacts=["/x/base", "/x/main"])
    store.write_state("R", "b", state="done", artifacts=["/y"])
    groups = {"g": ("a", "b")}
    assert resolve_argv([Output(("g",), last=True)], store, "R", groups) == ["/x/main", "/y"]
    assert resolve_argv([Output(("g",), sep=",", steps=("b",))], store, "R", groups) == ["/y"]


def test_bad_run_arguments_are_exit_2(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    both = invoke("-w", str(tmp_path), "run", str(config))
    assert both.exit_code == 2 and "--source" in both.output
    section = invoke("-w", str(tmp_path), "run", str(config), "--source", str(tmp_path), "--set", "train_expert.x=1")
    assert section.exit_code == 2 and "train_expert" in section.output
    bad_key = invoke("-w", str(tmp_path), "run", str(config), "--source", str(tmp_path), "--set", "distill.stepz=3")
    assert bad_key.exit_code == 2 and "distill" in bad_key.output and "stepz" in bad_key.output
    student = invoke("-w", str(tmp_path), "run", str(config), "--source", str(tmp_path), "--student", "hexplane")
    assert student.exit_code == 2 and "hexplane" in student.output
    chunks = invoke("-w", str(tmp_path), "run", str(config), "--source", str(tmp_path), "--chunk-frames", "4")
    assert chunks.exit_code == 2 and "--chunk-frames needs --dataset" in " ".join(chunks.output.split())
    config.write_text(TINY + "executor: {cluster: kubernetes}\n")
    unknown = invoke("-w", str(tmp_path), "run", str(config), "--source", str(tmp_path))
    assert unknown.exit_code == 2 and "kubernetes" in unknown.output
    assert not (tmp_path / "_jobs").exists()
    config.write_text(TINY + EXECUTOR)
    no_cluster = invoke("-w", str(tmp_path), "run", str(config), "--source", str(tmp_path))
    assert no_cluster.exit_code == 4 and "srun" in no_cluster.output


@pytest.mark.slow
def test_preempted_local_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path, small_dataset):
    """Signal a running local expert job as SLURM does on preemption: it requeues itself with --resume,
    continues from its last checkpoint, and ends with the same weights as an uninterrupted run."""
    workspace = _workspace_with(small_dataset, tmp_path / "ws").resolve()
    dataset = str(next((workspace / "tiny" / "dataset").iterdir()))
    sets = ["--set", "static.iterations=80", "--set", "checkpoint_every=5"]
    step = Step("expert:static", ("-w", str(workspace), "train-experts", "--dataset", dataset, "--experts", "static",
                                  "--executor", "none", *sets), resumable=True)
    store = JobStore(workspace)
    from moegs.launch import CommandJob

    executor = make_executor(ExecutorConfig(cluster="local", gpus_per_node=0), store.logs_dir("r1"))
    job = executor.submit(CommandJob(run_command_line, str(workspace), "r1", step, {"experts": ("expert:static",)}))
    checkpoint = None
    deadline = time.time() + 300
    while checkpoint is None and time.time() < deadline and job.state == "RUNNING":
        checkpoint = next(workspace.glob("tiny/expert/*.partial/checkpoints/last.pt"), None)
        time.sleep(0.1)
    assert checkpoint is not None, job.stderr()
    os.kill(store.read_state("r1", "expert:static")["pid"], signal.SIGUSR2)  # what SLURM sends before preempting
    (artifact,) = job.result()
    state = store.read_state("r1", "expert:static")
    assert state["state"] == "done" and state["attempts"] == 2 and state["argv"][-1] == "--resume"
    log = job.stderr() + (job.stdout() or "")
    resumed_at = int(re.search(r"static: resumed at step (\d+)", log).group(1))
    assert "this job is preempted" in log and 0 < resumed_at < 80
    uninterrupted = run_command_line(["-w", str(tmp_path / "plain"), "train-experts", "--dataset", dataset,
                                      "--experts", "static", *sets])
    assert uninterrupted.exit_code == 0
    files = [json.loads((Path(a) / "manifest.json").read_text())["files"] for a in (artifact, uninterrupted.artifacts[0])]
    weights = [name for name in files[0] if name.endswith((".safetensors", ".pt"))]
    assert weights and all(files[0][w]["sha256"] == files[1][w]["sha256"] for w in weights)


@pytest.mark.parametrize("swallowed_as", ["wrapped error", "exit code"])
def test_preemption_that_lands_inside_an_extension_still_requeues(tmp_path, swallowed_as):
    """submitit's handler requeues and raises SystemExit where the signal lands; inside a numba
    dispatcher that surfaces as SystemError (a library may also turn it into an exit code). The step
    must still end with the handler's SystemExit and keep its "requeued" state, not read as failed."""
    from moegs.launch import CommandJob, CommandOutcome

    store = JobStore(tmp_path)

    def runner(argv):
        try:
            signal.raise_signal(signal.SIGUSR2)
        except SystemExit as exc:
            if swallowed_as == "exit code":
                return CommandOutcome(1, [], "error: interrupted stream")
            raise SystemError("CPUDispatcher(<function _bin>) returned a result with an exception set") from exc
        return CommandOutcome(0, [], None)

    job = CommandJob(runner, str(tmp_path), "r1", Step("expert:static", ("train-experts",), resumable=True), {})

    def submitit_like_handler(signum, frame):
        job.checkpoint()
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_like_handler)
    try:
        with pytest.raises(SystemExit):
            job()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert store.read_state("r1", "expert:static")["state"] == "requeued"
    assert signal.getsignal(signal.SIGUSR2) is previous


def test_jobs_index_is_rewritten_whole(tmp_path):
    """Each submission adds complete lines; a job's state file overrides its pending state."""
    store = JobStore(tmp_path)
    groups = [Group("a", (Step("one", ("x",)),))]
    outcomes = {"x": 0}

    def fake_runner(argv):
        from moegs.launch import CommandOutcome

        return CommandOutcome(outcomes[argv[0]], [str(tmp_path)], None if outcomes[argv[0]] == 0 else "error: no")

    first = submit(groups, ExecutorConfig(), tmp_path, fake_runner, label="t")
    outcomes["x"] = 2
    second = submit(groups, ExecutorConfig(), tmp_path, fake_runner, label="t")
    rows = store.rows()
    assert [(r["run"], r["state"]) for r in rows] == [(first.run, "done"), (second.run, "failed")]
    assert second.failed == {"one": "(exit 2) error: no"}
    assert all(line.endswith("}") for line in (tmp_path / "_jobs" / "index.jsonl").read_text().splitlines())


def test_help_and_empty_listing(tmp_path):
    for command in ("run", "jobs"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output
    assert "--executor" in invoke("train-experts", "--help").output
    empty = invoke("-w", str(tmp_path), "jobs")
    assert empty.exit_code == 0 and "no jobs" in empty.output
    unknown = invoke("-w", str(tmp_path), "jobs", "--run", "nope")
    assert unknown.exit_code == 2 and "nope" in unknown.output


def test_local_jobs_inherit_passive_openmp_waiting(tmp_path, monkeypatch):
    """The command spins briefly; the local executor's jobs share this machine's cores and must not."""
    from moegs import openmp_waiting

    monkeypatch.setattr(openmp_waiting, "USER_SET", frozenset())  # as if the user had set neither variable
    monkeypatch.setenv("GOMP_SPINCOUNT", str(openmp_waiting.CLI_SPIN_COUNT))  # what the command set for itself
    with mocked_slurm():
        make_executor(ExecutorConfig(cluster="slurm"), tmp_path / "slurm")  # a cluster's nodes are the job's own
    assert os.environ["GOMP_SPINCOUNT"] == str(openmp_waiting.CLI_SPIN_COUNT)
    make_executor(ExecutorConfig(cluster="local", gpus_per_node=0), tmp_path / "local")
    assert os.environ["GOMP_SPINCOUNT"] == "0"
