"""Executors: run moegs command lines in process, or as submitit jobs (local subprocesses, debug, SLURM).

A job is one moegs command line (an argv list) run by a caller-supplied runner, so jobs survive
refactors of the stage code: whatever the CLI accepts, a job accepts. Jobs are grouped: a group is
one ``sbatch`` (a single job, or a job array when it holds several steps, e.g. one expert per
family), and a group can wait for earlier groups (``afterok`` on SLURM; locally, the submitting
process waits). An argv item can be an :class:`Output`: the artifact paths an earlier group wrote,
filled in when the job starts (so SLURM jobs can be queued before their inputs exist).

Everything lives in the shared workspace: ``<workspace>/_jobs/index.jsonl`` (one line per submitted
job, rewritten atomically), ``<workspace>/_jobs/<run>/<step>.json`` (the job's own state: running,
requeued, done with its artifacts, or failed with the error) and ``<workspace>/_jobs/<run>/logs/``
(submitit's pickles and stdout/stderr). Artifact ids and build locks already make concurrent jobs
safe; a requeued job (preemption, timeout) reruns its command line with ``--resume`` when the command
takes it, which continues from the stage's last checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from moegs import interrupts
from moegs.build_lock import LockOwner, boot_id, is_held, process_start_time
from moegs.config import bounded, check_config

try:  # the cluster extra; without it only the in-process executor works (make_executor says how to install)
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover - exercised only without the extra
    Checkpointable = object
from moegs.errors import InputError, MissingDependencyError, MoegsError
from moegs.openmp_waiting import wait_passively_in_children

log = logging.getLogger("moegs")

EXECUTORS = ("none", "local", "slurm", "debug")
JOBS_DIR = "_jobs"
INDEX = "index.jsonl"


@dataclass
class ExecutorConfig:
    """The ``executor:`` section of a config file: where jobs run and what each one asks the scheduler for."""

    cluster: Literal["none", "local", "slurm", "debug"] = "none"
    """none: in this process, one step after the other; local: submitit subprocesses; debug: submitit
    in this process; slurm: sbatch (experts as one job array, later stages as afterok dependents)."""
    timeout_min: int = bounded(240, ge=1)
    """Wall-clock limit per job; a job that reaches it is requeued and resumes from its checkpoint."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    mem_gb: int | None = bounded(None, gt=0)
    """Memory per job (default: the scheduler's)."""
    cpus_per_task: int | None = bounded(None, ge=1)
    gpus_per_node: int = bounded(1, ge=0)
    array_parallelism: int | None = bounded(None, ge=1)
    """At most this many jobs of one array run at once (default: all)."""
    max_requeues: int = bounded(3, ge=0)
    """How many timeouts a job may resume from (preemptions do not count)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before each job (e.g. "module load cuda", "source .venv/bin/activate")."""
    additional: dict[str, Any] = field(default_factory=dict)
    """Any other sbatch flag, e.g. {constraint: a100, mail-type: END}."""

    def __post_init__(self) -> None:
        check_config(self)


@dataclass(frozen=True)
class Output:
    """An argv placeholder: the artifact paths written by the steps of earlier groups.

    ``sep=None`` puts one argv item per artifact; ``sep=","`` joins them into one item. ``steps``
    keeps only those steps of the groups; ``last`` only each step's last artifact (its main result,
    e.g. the distilled expert after distill's baseline).
    """

    groups: tuple[str, ...]
    sep: str | None = None
    steps: tuple[str, ...] | None = None
    last: bool = False


@dataclass(frozen=True)
class Step:
    """One job: a moegs command line; ``resumable`` means it takes ``--resume`` after a requeue."""

    name: str
    argv: tuple[str | Output, ...]
    resumable: bool = False


@dataclass(frozen=True)
class Group:
    """One submission: a single job, or a job array when it has several steps."""

    name: str
    steps: tuple[Step, ...]
    after: tuple[str, ...] = ()


@dataclass
class CommandOutcome:
    """What running one command line gave: its exit code, the artifact paths it printed, its error line."""

    exit_code: int
    artifacts: list[str]
    error: str | None = None


Runner = Callable[[list[str]], CommandOutcome]


class JobFailed(MoegsError):
    """A job's command exited non-zero (the message names the step, e.g. the expert family)."""


def _job_process_alive(state: dict) -> bool:
    """Whether the process a running job recorded is still that job (a reused pid or a reboot does not count)."""
    pid = state.get("pid")
    if not isinstance(pid, int):
        return False
    return is_held(LockOwner(pid=pid, start=state.get("start"), boot=state.get("boot"), host=state.get("host")))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class JobStore:
    """The jobs index and per-job state files under ``<workspace>/_jobs``."""

    def __init__(self, workspace: Path) -> None:
        self.root = Path(workspace).resolve() / JOBS_DIR

    def new_run(self, label: str) -> str:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        return f"{stamp}-{label}-{secrets.token_hex(3)}"

    def logs_dir(self, run: str) -> Path:
        return self.root / run / "logs"

    def state_path(self, run: str, step: str) -> Path:
        return self.root / run / f"{step.replace(':', '-')}.json"

    @contextmanager
    def _locked_index(self) -> Iterator[Path]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / (INDEX + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.root / INDEX
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add_to_index(self, records: Sequence[dict]) -> None:
        """Append submission records: the whole index is rewritten to a temporary file and renamed."""
        with self._locked_index() as index:
            old = index.read_text() if index.is_file() else ""
            _write_atomic(index, old + "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    def index(self) -> list[dict]:
        path = self.root / INDEX
        if not path.is_file():
            return []
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise InputError(f"{path}: line {number} is not JSON") from None
        return rows

    def write_state(self, run: str, step: str, **fields: Any) -> None:
        state = {**self.read_state(run, step), **fields, "updated_at": _now()}
        _write_atomic(self.state_path(run, step), json.dumps(state, indent=2))

    def read_state(self, run: str, step: str) -> dict:
        path = self.state_path(run, step)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError:
            raise InputError(f"{path}: not a JSON job state") from None

    def outputs(self, run: str, step: str) -> list[str]:
        state = self.read_state(run, step)
        if state.get("state") != "done":
            raise MoegsError(f"{self.state_path(run, step)}: step {step} of run {run} has not finished "
                             f"(state {state.get('state', 'never started')})")
        return list(state["artifacts"])

    def rows(self, run: str | None = None) -> list[dict]:
        """Index records merged with each job's state; a running local job whose process is gone is 'died'."""
        rows = []
        for record in self.index():
            if run is not None and record["run"] != run:
                continue
            state = self.read_state(record["run"], record["step"])
            row = {**record, **state, "state": state.get("state", "pending")}
            if row["state"] == "running" and state.get("host") == socket.gethostname() and not _job_process_alive(state):
                row["state"] = "died"
            rows.append(row)
        return rows


class CommandJob(Checkpointable):
    """A submitit job running one step's command line; a requeued one adds ``--resume`` when the step takes it."""

    def __init__(self, runner: Runner, workspace: str, run: str, step: Step, groups: dict[str, tuple[str, ...]],
                 resume: bool = False) -> None:
        self.runner, self.workspace, self.run, self.step = runner, workspace, run, step
        self.groups, self.resume = groups, resume

    def __call__(self) -> list[str]:
        with interrupts.relaying(_preemption_signal()):
            return execute_step(self.runner, JobStore(Path(self.workspace)), self.run, self.step, self.groups,
                                resume=self.resume)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """On preemption or timeout: requeue the same command, with ``--resume`` if the step takes it."""
        JobStore(Path(self.workspace)).write_state(self.run, self.step.name, state="requeued")
        again = CommandJob(self.runner, self.workspace, self.run, self.step, self.groups, resume=self.step.resumable)
        return _submitit().helpers.DelayedSubmission(again)


def resolve_argv(argv: Sequence[str | Output], store: JobStore, run: str, groups: dict[str, tuple[str, ...]]) -> list[str]:
    """Fill in every :class:`Output` placeholder from the finished steps of its groups."""
    out: list[str] = []
    for item in argv:
        if isinstance(item, str):
            out.append(item)
            continue
        paths = []
        for group in item.groups:
            for step in groups[group]:
                if item.steps is None or step in item.steps:
                    written = store.outputs(run, step)
                    paths += written[-1:] if item.last else written
        out += paths if item.sep is None else [item.sep.join(paths)]
    return out


def execute_step(runner: Runner, store: JobStore, run: str, step: Step, groups: dict[str, tuple[str, ...]],
                 *, resume: bool = False) -> list[str]:
    """Run one step's command line, recording its state; raise :class:`JobFailed` naming the step if it fails.

    A crash (any exception) is recorded as failed too; ``SystemExit`` from submitit's requeue passes
    through with the state its checkpoint wrote ("requeued"), also when the signal landed in code that
    turned it into another error or an exit code (see :mod:`moegs.interrupts`).
    """
    attempts = store.read_state(run, step.name).get("attempts", 0) + 1
    store.write_state(run, step.name, state="running", attempts=attempts, host=socket.gethostname(), pid=os.getpid(),
                      start=process_start_time(os.getpid()), boot=boot_id(),
                      started_at=_now(), error=None)
    try:
        argv = resolve_argv(step.argv, store, run, groups)
        argv += ["--resume"] if resume and step.resumable and "--resume" not in argv else []
        store.write_state(run, step.name, argv=argv)
        outcome = runner(argv)
    except Exception as exc:
        interrupts.raise_signal_exit(exc)
        store.write_state(run, step.name, state="failed", exit_code=None, error=f"{type(exc).__name__}: {exc}")
        raise
    if outcome.exit_code != 0:
        interrupts.raise_signal_exit()
        store.write_state(run, step.name, state="failed", exit_code=outcome.exit_code, error=outcome.error)
        raise JobFailed(f"{step.name} failed {failure(outcome.exit_code, outcome.error)}")
    store.write_state(run, step.name, state="done", exit_code=0, artifacts=outcome.artifacts)
    return outcome.artifacts


def failure(exit_code: int | None, error: str | None) -> str:
    """How a failed step is described everywhere: ``(exit 4) error: backend 'gsplat' needs ...``."""
    return f"(exit {exit_code}) {error or 'no error message; see the job log'}"


def _preemption_signal() -> int:
    """The signal submitit treats as preemption or timeout (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default)."""
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise MissingDependencyError("executors local, slurm and debug need submitit: pip install 'moegs[cluster]'") from None
    return submitit


def make_executor(cfg: ExecutorConfig, folder: Path) -> Any:
    """A submitit executor with the config's resources; logs go to ``folder`` (``%j`` = job id)."""
    submitit = _submitit()
    if cfg.cluster == "local":  # its jobs share this machine's cores: no spinning OpenMP workers
        wait_passively_in_children()
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cfg.cluster, slurm_max_num_timeout=cfg.max_requeues,
                                         local_max_num_timeout=cfg.max_requeues)
    except RuntimeError as exc:  # submitit's way of saying there is no srun here
        raise MissingDependencyError(f"executor {cfg.cluster}: {exc}") from None
    params: dict[str, Any] = {"timeout_min": cfg.timeout_min, "gpus_per_node": cfg.gpus_per_node}
    if cfg.mem_gb is not None:
        params["mem_gb"] = cfg.mem_gb
    if cfg.cpus_per_task is not None:
        params["cpus_per_task"] = cfg.cpus_per_task
    slurm = {"partition": cfg.partition, "account": cfg.account, "qos": cfg.qos,
             "array_parallelism": cfg.array_parallelism, "setup": cfg.setup or None,
             "additional_parameters": cfg.additional or None}
    params.update({f"slurm_{k}": v for k, v in slurm.items() if v is not None})
    executor.update_parameters(**params)
    return executor


def afterok(job_ids: Sequence[str]) -> str | None:
    """The SLURM dependency on every listed job; an array task id (``12_3``) waits on its whole array (``12``)."""
    ids = list(dict.fromkeys(str(j).split("_")[0] for j in job_ids))
    return "afterok:" + ":".join(ids) if ids else None


@dataclass
class Submission:
    """What :func:`submit` did: the run id, per step its job id, ``failed``: step -> :func:`failure` text
    (runs that wait: none, debug, local), and the groups skipped because an input failed."""

    run: str
    job_ids: dict[str, str]
    failed: dict[str, str]
    skipped: list[str]


def submit(groups: Sequence[Group], cfg: ExecutorConfig, workspace: Path, runner: Runner, *, label: str) -> Submission:
    """Run or submit the groups in order, recording every job in the jobs index.

    ``none`` runs each step here; ``debug`` and ``local`` go through submitit, and this process waits
    for a group's inputs before submitting it; ``slurm`` submits everything at once, dependents with
    ``afterok``, and returns. A failed step does not stop independent ones; its dependents are skipped.
    """
    if cfg.cluster not in EXECUTORS:
        raise InputError(f"unknown executor {cfg.cluster!r} (choose from {', '.join(EXECUTORS)})")
    _check_order(groups)
    store = JobStore(workspace)
    run = store.new_run(label)
    names = {g.name: tuple(s.name for s in g.steps) for g in groups}
    jobs: dict[str, list[Any]] = {}
    done = Submission(run, {}, {}, [])
    for group in groups:
        if cfg.cluster in ("local", "debug"):
            for after in group.after:
                _wait(jobs.get(after, []), names[after], done, store, run)
        blocked = [a for a in group.after if a in done.skipped or any(s in done.failed for s in names[a])]
        if blocked:
            done.skipped.append(group.name)
            for step in group.steps:
                store.write_state(run, step.name, state="skipped", error=f"an input failed or was skipped: {', '.join(blocked)}")
            continue
        if cfg.cluster == "none":
            ids = [f"inproc-{os.getpid()}-{step.name}" for step in group.steps]
            store.add_to_index([_record(run, step, group, i, cfg, store) for step, i in zip(group.steps, ids)])
            for step in group.steps:
                try:
                    execute_step(runner, store, run, step, names)
                except MoegsError:  # JobFailed, or an input that never finished
                    state = store.read_state(run, step.name)
                    done.failed[step.name] = failure(state.get("exit_code"), state.get("error"))
        else:
            dependency = afterok([j.job_id for a in group.after for j in jobs[a]]) if cfg.cluster == "slurm" else None
            jobs[group.name] = _submit_group(make_executor(cfg, store.logs_dir(run)), group, dependency,
                                             [CommandJob(runner, str(store.root.parent), run, step, names)
                                              for step in group.steps])
            ids = [j.job_id for j in jobs[group.name]]
            store.add_to_index([_record(run, step, group, i, cfg, store) for step, i in zip(group.steps, ids)])
            log.info("submitted %s: %s", group.name, ", ".join(ids))
        done.job_ids.update(zip(names[group.name], ids))
    if cfg.cluster in ("local", "debug"):
        for group in groups:
            _wait(jobs.get(group.name, []), names[group.name], done, store, run)
    return done


def _submit_group(executor: Any, group: Group, dependency: str | None, tasks: list[CommandJob]) -> list[Any]:
    """One sbatch per group: a job array when it has several steps."""
    executor.update_parameters(name=f"moegs-{group.name}")
    if dependency:
        executor.update_parameters(slurm_dependency=dependency)
    if len(tasks) == 1:
        return [executor.submit(tasks[0])]
    with executor.batch():
        submitted = [executor.submit(task) for task in tasks]
    return submitted


def _wait(jobs: list[Any], steps: tuple[str, ...], done: Submission, store: JobStore, run: str) -> None:
    """Wait for a local/debug group; a failed step's error comes from its own state file (it names the step)."""
    for step, job in zip(steps, jobs):
        if step in done.failed:
            continue
        exc = job.exception()  # waits; unlike result(), never enters the debug executor's post-mortem debugger
        if exc is not None:
            state = store.read_state(run, step)
            done.failed[step] = failure(state.get("exit_code"), state.get("error") or str(exc).strip().splitlines()[-1])


def _check_order(groups: Sequence[Group]) -> None:
    seen: set[str] = set()
    for group in groups:
        missing = [a for a in group.after if a not in seen]
        if missing:
            raise ValueError(f"group {group.name} waits for {missing}, which come later or not at all")
        seen.add(group.name)


def _record(run: str, step: Step, group: Group, job_id: str, cfg: ExecutorConfig, store: JobStore) -> dict:
    return {"run": run, "step": step.name, "group": group.name, "job_id": str(job_id), "executor": cfg.cluster,
            "after": list(group.after), "submitted_at": _now(), "logs": str(store.logs_dir(run))}
