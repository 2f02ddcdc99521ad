"""The function submitit pickles and runs on the node: one replica's whole life.

It owns the engine process: picks a port no other replica on the node holds, maps the job's GPUs
to tensor parallelism, starts the engine in its own process group (so the group can be killed
whole, and the engine dies with the launcher even on SIGKILL), streams the engine's log to the
job's stdout, waits until a real generation succeeds, publishes the endpoint record, then
supervises: heartbeats, restarts with back-off, withdraws the record before anything else on the
way out. Preemption and wall-time signals go through submitit's ``Checkpointable`` so SLURM
requeues the job and the replica comes back under the same index.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import submitit

from slurm_llm._errors import EngineError
from slurm_llm._files import write_atomic
from slurm_llm._polling import polling, wait_until
from slurm_llm._registry import HEARTBEAT_INTERVAL_S, EndpointRecord, Registry
from slurm_llm.engines import Engine, LaunchContext, get_engine
from slurm_llm.node._cpu_leases import keep_to_own_cores
from slurm_llm.node._job_ledger import JobLedger, JobSpan, job_spans_dir
from slurm_llm.node._ports import PortLease, lease_port
from slurm_llm.spec._model_spec import ModelSpec, resolve_model_path, time_limit_min

LOG_TAIL_LINES = 40
# Written to the job's log on every publication; ReplicaJob.was_ready() looks for it.
READY_MARK = "[slurm-llm] ready at "
_PR_SET_PDEATHSIG = 1


class Stopped(Exception):
    """The job was told to end (SIGTERM from scancel or a local stop)."""


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    node: str
    log_path: str | None
    rank: int = 0
    nodes: int = 1
    folder: str | None = None

    @classmethod
    def current(cls) -> JobInfo:
        try:
            env = submitit.JobEnvironment()
        except RuntimeError:  # called outside submitit, e.g. by hand on a node
            job_id = os.environ.get("SLURM_JOB_ID", f"pid{os.getpid()}")
            return cls(job_id, socket.gethostname(), None)
        return cls(
            str(env.job_id),
            socket.gethostname(),
            str(env.paths.stdout),
            rank=env.global_rank,
            nodes=env.num_nodes,
            folder=str(env.paths.folder),
        )


def serving_host() -> str:
    """The address engines bind and clients reach: loopback for local jobs, else the node's IP."""
    if explicit := os.environ.get("SLURM_LLM_HOST"):
        return explicit
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        return "127.0.0.1"
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def visible_gpus() -> tuple[str, ...]:
    raw = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return tuple(g for g in raw.split(",") if g.strip() and g != "NoDevFiles")


def job_deadline(started: float, spec: ModelSpec) -> float | None:
    """When the job's wall-time ends: SLURM's own end time if it tells, else start + limit."""
    if end := os.environ.get("SLURM_JOB_END_TIME"):
        return float(end)
    if job_id := os.environ.get("SLURM_JOB_ID"):
        with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
            out = subprocess.run(
                ["squeue", "-h", "-j", job_id, "-o", "%e"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip()  # fmt: skip
            return datetime.fromisoformat(out).timestamp()
    return started + 60 * time_limit_min(spec)


class EngineProcess:
    """A running engine: its process group, the pump that copies its log, its port lease."""

    def __init__(self, argv: list[str], env: dict[str, str], lease: PortLease) -> None:
        self.lease = lease
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        print(f"[slurm-llm] starting engine: {' '.join(argv)}", flush=True)
        self.process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (only async-signal-safe prctl runs)
        )
        self._pump = threading.Thread(target=self._copy_log, daemon=True)
        self._pump.start()

    def _copy_log(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace")
            self.tail.append(line.rstrip("\n"))
            sys.stdout.write(line)
            sys.stdout.flush()

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        return self.process.poll()

    def log_tail(self) -> str:
        return "\n".join(self.tail)

    def stop(self, grace_s: float = 0.7) -> None:
        """SIGTERM to the whole group, SIGKILL to what is left after ``grace_s``.

        The grace is short because submitit's local executor SIGKILLs a cancelled job after 1 s.
        """
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait)
                break
        # Children that outlived the leader still sit in its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._pump.join(timeout=2.0)
        self.lease.release()


class ReplicaLauncher(submitit.helpers.Checkpointable):
    """Runs one replica of ``spec`` for ``deployment``; submitted once per replica index."""

    def __init__(self, spec: ModelSpec, deployment: str, registry_root: str | Path) -> None:
        self.spec = spec
        self.deployment = deployment
        self.registry_root = str(registry_root)
        self._engine: EngineProcess | None = None
        self._record: EndpointRecord | None = None
        self._rendezvous_lease: PortLease | None = None
        self._ledger: JobLedger | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Only the configuration travels in the pickle; processes belong to one job's life.
        runtime = ("_engine", "_record", "_rendezvous_lease", "_ledger")
        return {k: v for k, v in self.__dict__.items() if k not in runtime}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(
            state, _engine=None, _record=None, _rendezvous_lease=None, _ledger=None
        )

    def __call__(self, replica: int) -> None:
        job = JobInfo.current()
        signal.signal(signal.SIGTERM, _raise_stopped)
        try:
            self._serve(replica, job)
        except Stopped:
            print(f"[slurm-llm] replica {replica} stopped", flush=True)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
            self._shutdown()
            self._close_ledger()

    def checkpoint(self, replica: int) -> submitit.helpers.DelayedSubmission:
        """Preemption or wall-time: free the GPUs and the record now, come back after requeue."""
        print(f"[slurm-llm] replica {replica} checkpointing for requeue", flush=True)
        self._shutdown()
        self._close_ledger()
        return submitit.helpers.DelayedSubmission(self, replica)

    def _serve(self, replica: int, job: JobInfo) -> None:
        spec = self.spec
        engine = get_engine(spec.engine)
        registry = Registry(self.registry_root)
        model_path = resolve_model_path(spec.model)
        gpus = self._gpus()
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or spec.cpus)
        self._open_ledger(job, cpus)
        if spec.device == "cpu" and (core_lease := keep_to_own_cores(cpus)):
            print(f"[slurm-llm] replica {replica} on CPU cores {core_lease.cores}", flush=True)
        host = serving_host()
        crashes = 0
        while True:
            started = time.time()
            lease = lease_port(host)
            ctx = LaunchContext(host, lease.port, model_path, gpus, cpus)
            if job.nodes > 1:
                ctx = self._join_nodes(ctx, job)
            self._engine = EngineProcess(
                engine.command(spec, ctx), engine.environment(spec, ctx), lease
            )
            # A headless worker (rank > 0) neither probes nor publishes: rank 0 does both.
            exit_code: int | None = (
                self._supervise(registry) if job.rank > 0 else self._wait_ready(engine, ctx)
            )
            was_ready = exit_code is None
            if exit_code is None:
                exit_code = self._publish_and_supervise(registry, replica, job, ctx, started)
            crashes += 1
            tail = self._engine.log_tail() if self._engine else ""
            self._shutdown()
            if crashes > spec.max_restarts or job.nodes > 1:
                # Ranks of a multi-node replica cannot restart alone: the job fails, and the
                # deployment replaces the whole replica.
                when = "after it was ready" if was_ready else "before it was ready"
                raise EngineError(
                    f"engine exited with code {exit_code} {when}, {crashes} time(s) in all "
                    f"(max_restarts={spec.max_restarts}); last log lines:\n{tail}"
                )
            backoff = min(2.0 ** (crashes - 1), 30.0)
            print(
                f"[slurm-llm] engine exited with code {exit_code}; restart {crashes}/"
                f"{spec.max_restarts} in {backoff:.0f} s",
                flush=True,
            )
            time.sleep(backoff)

    def _publish_and_supervise(
        self, registry: Registry, replica: int, job: JobInfo, ctx: LaunchContext, started: float
    ) -> int:
        assert self._engine is not None
        spec = self.spec
        self._record = EndpointRecord(
            deployment=self.deployment,
            replica=replica,
            model=spec.name,
            engine=spec.engine,
            url=ctx.url,
            node=job.node,
            job_id=job.job_id,
            launcher_pid=os.getpid(),
            engine_pid=self._engine.pid,
            gpus=list(ctx.gpus),
            started=started,
            ready=time.time(),
            heartbeat=time.time(),
            deadline=job_deadline(started, spec),
            log_path=job.log_path,
            slots=spec.max_concurrent_requests,
            context=get_engine(spec.engine).request_context(spec),
            request_priority=get_engine(spec.engine).takes_priority(spec),
        )
        registry.publish(self._record)
        seconds = self._record.ready - started
        print(f"{READY_MARK}{ctx.url} (replica {replica}, after {seconds:.2f} s)", flush=True)
        return self._supervise(registry)

    def _join_nodes(self, ctx: LaunchContext, job: JobInfo) -> LaunchContext:
        """Rank 0 picks the rendezvous address and writes it beside the job's files; the other
        ranks read it there (the submitit folder is on the shared filesystem)."""
        assert job.folder is not None
        path = Path(job.folder) / f"{job.job_id}.rendezvous"
        if job.rank == 0:
            self._rendezvous_lease = lease_port(ctx.host)
            address = f"{ctx.host}:{self._rendezvous_lease.port}"
            write_atomic(path, address)
        else:
            if not wait_until(path.exists, self.spec.ready_timeout_s, every=0.2):
                raise EngineError(f"rank {job.rank}: rank 0 never wrote {path}")
            address = path.read_text()
        host, _, port = address.rpartition(":")
        return replace(
            ctx, nodes=job.nodes, node_rank=job.rank, master_addr=host, master_port=int(port)
        )

    def _gpus(self) -> tuple[str, ...]:
        if self.spec.device == "cpu":
            return ()
        gpus = visible_gpus()
        if not gpus:
            raise EngineError(
                f"the spec asks for {self.spec.gpus} GPU(s) but the job sees none "
                "(CUDA_VISIBLE_DEVICES is empty): check that the partition has GPUs, or use "
                "device='cpu'"
            )
        if len(gpus) != self.spec.gpus:
            print(
                f"[slurm-llm] the job holds {len(gpus)} GPU(s), the spec asked for "
                f"{self.spec.gpus}: tensor parallelism follows the allocation",
                flush=True,
            )
        return gpus

    def _wait_ready(self, engine: Engine, ctx: LaunchContext) -> int | None:
        """None once a generation succeeds; the exit code if the engine dies first."""
        assert self._engine is not None
        last_error = "no answer yet"
        for _ in polling(self.spec.ready_timeout_s, every=0.05):
            code = self._engine.exit_code()
            if code is not None:
                return code
            try:
                engine.probe(self.spec, ctx.url, timeout=min(30.0, self.spec.ready_timeout_s))
                return None
            except EngineError as exc:
                last_error = str(exc)
        raise EngineError(
            f"engine not ready after {self.spec.ready_timeout_s:.0f} s ({last_error}); "
            f"last log lines:\n{self._engine.log_tail()}"
        )

    def _supervise(self, registry: Registry) -> int:
        """Heartbeats (if it published) until the engine exits; returns its exit code."""
        assert self._engine is not None
        next_beat = time.monotonic() + HEARTBEAT_INTERVAL_S
        while (code := self._engine.exit_code()) is None:
            time.sleep(0.2)
            if self._record is not None and time.monotonic() >= next_beat:
                self._record = self._record.model_copy(update={"heartbeat": time.time()})
                registry.publish(self._record)
                next_beat = time.monotonic() + HEARTBEAT_INTERVAL_S
        return code

    def _open_ledger(self, job: JobInfo, cpus: int) -> None:
        """Starts this job's span in the ledger: what it holds, whether the engine uses it or
        not (a CPU engine in a GPU allocation still keeps the GPUs from others)."""
        now = time.time()
        span = JobSpan(job.job_id, self.deployment, job.node, job.rank, len(visible_gpus()),
                       cpus, started=now, ended=now)  # fmt: skip
        # The registry's home holds the ledger too: the launcher knows its home by the registry.
        self._ledger = JobLedger(job_spans_dir(Path(self.registry_root).parent), span)
        self._ledger.start()

    def _close_ledger(self) -> None:
        ledger, self._ledger = self._ledger, None
        if ledger is not None:
            ledger.stop()

    def _shutdown(self) -> None:
        """Withdraw first (clients stop coming), then stop the engine; safe to call twice."""
        record, self._record = self._record, None
        if record is not None:
            Registry(self.registry_root).withdraw(record.deployment, record.replica, record.job_id)
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.stop()
        lease, self._rendezvous_lease = self._rendezvous_lease, None
        if lease is not None:
            lease.release()


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGTERM when the launcher dies, even by
    SIGKILL, so no engine outlives its job on clusters that track processes loosely."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
