"""On a real SLURM cluster: deploy() to ready, scancel to a ready replacement, and what stop leaves.

Needs a cluster (``slurm-llm cluster up`` starts one on this machine; export the SLURM_CONF it
prints). Each round measures, side by side with the engine's own start-up (llama.cpp, SmolLM2):
  in-process      deploy() of one replica, kept whole by a thread of this process: submission to
                  ready (split at the engine's start), scancel of the ready replica to its
                  replacement being ready, then stop();
  controller      exactly as a user would: `slurm-llm up --replicas 2 --executor slurm` in a
                  session of its own, which starts a controller job and returns; SIGHUP to that
                  session (the terminal closing); scancel of one ready replica to its replacement
                  being ready (now the controller job's doing); then `slurm-llm down`.
After each stop it counts what was left behind, which must be nothing: the deployment's jobs
(replicas and controller) still in squeue, its registry records, and for the controller case
the processes of the user's session.

    python benchmarks/slurm_lifecycle.py --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from _report import describe, machine_info, report_seconds
from startup_overhead import engine_alone

import slurm_llm
from slurm_llm import Deployment, ModelSpec, Registry, attach, deploy

PRESET = "smollm2-135m"
# What a stop may leave behind; each count must be 0.
JOBS = "jobs in squeue (replicas, controller)"
RECORDS = "registry records"
SESSION_RETURNED = "processes of `up`'s session when it returned"
SESSION_HUNG_UP = "processes of `up`'s session after SIGHUP"
TIMEOUT_S = 300.0
POLL_S = 0.05


class BenchmarkError(RuntimeError):
    """A case did not do what it must; the message carries the evidence."""


def squeue_jobs(name: str) -> list[str]:
    """``id|name|state`` of every job in squeue that belongs to deployment ``name``: its
    replicas (``slurm-llm-<name>``) and its controller (``slurm-llm-controller+<name>``)."""
    names = {f"slurm-llm-{name}", f"slurm-llm-controller+{name}"}
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i|%j|%T"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line.split("|")[1] in names]


def expect_jobs(name: str, count: int) -> None:
    """Checks that squeue shows ``count`` jobs of ``name`` while it runs, so that the count left
    behind after the stop cannot be zero for want of finding the jobs at all."""
    if len(jobs := squeue_jobs(name)) != count:
        raise BenchmarkError(f"expected {count} jobs of {name} in squeue, found {jobs}")


def left_behind(name: str, home: Path, settle_s: float = 30.0) -> dict[str, int]:
    """What a stopped deployment left: its jobs still in squeue once COMPLETING ones have had
    ``settle_s`` to leave, and its registry records (stale ones included)."""
    deadline = time.monotonic() + settle_s
    while (jobs := squeue_jobs(name)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return {JOBS: len(jobs), RECORDS: len(Registry(home / "registry").all_records(name))}


def session_processes(session: int) -> list[int]:
    """Pids of the processes in session ``session`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it ended while we looked
            continue
        fields = text[text.rfind(")") + 2 :].split()  # state ppid pgrp session ...
        if int(fields[3]) == session:
            found.append(int(stat.parent.name))
    return found


def wait_replaced(deployment: Deployment, index: int, old: str, timeout: float) -> str:
    """Polls until replica ``index`` is ready in a job other than ``old``; returns that job.
    Readiness comes from the registry at once; SLURM's part of the status may be 1 s old."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = deployment.status(max_age_s=1.0)[index]
        if status.job_id != old and status.state == "ready":
            return status.job_id
        time.sleep(POLL_S)
    raise BenchmarkError(
        f"replica {index} of {deployment.name} not replaced within {timeout:.0f} s"
    )


def engine_start(deployment: Deployment, job_id: str) -> float:
    """How long the engine of job ``job_id`` took from its start to ready (its record)."""
    [record] = [r for r in deployment.records() if r.job_id == job_id]
    return record.ready - record.started


Round = tuple[dict[str, float], dict[str, int]]  # timings, and what the stop left behind


def in_process_round(spec: ModelSpec, home: Path, round_no: int) -> Round:
    name = f"bench-{round_no}"
    submitted = time.time()
    start = time.perf_counter()
    deployment = deploy(spec, replicas=1, executor="slurm", name=name, home=home,
                        progress=False, timeout=TIMEOUT_S)  # fmt: skip
    ready = time.perf_counter() - start
    [record] = deployment.records()
    expect_jobs(name, 1)
    old = deployment.jobs[0].job_id
    cancelled = time.perf_counter()
    subprocess.run(["scancel", old], check=True)
    new = wait_replaced(deployment, 0, old, TIMEOUT_S)
    replacement = time.perf_counter() - cancelled
    replacement_engine = engine_start(deployment, new)
    deployment.stop()
    timings = {
        "deploy_to_ready": ready,
        "submit_to_engine_start": record.started - submitted,
        "engine_start_to_ready": record.ready - record.started,
        "replacement": replacement,
        "replacement_engine": replacement_engine,
    }
    return timings, left_behind(name, home)


def cli(
    args: list[str], home: Path, log: Path, new_session: bool = False
) -> subprocess.Popen[bytes]:
    """``python -m slurm_llm ARGS`` as a user would run it, output to ``log``."""
    env = {**os.environ, "SLURM_LLM_HOME": str(home)}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "slurm_llm", *args], stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, env=env, start_new_session=new_session,
        )  # fmt: skip


def evidence(name: str, home: Path, log: Path) -> str:
    """What to look at when the controller case fails: the CLI's output, `slurm-llm status`,
    squeue, the controller job's logs."""
    status = log.with_suffix(".status")
    cli(["status", name, "--events", "20"], home, status).wait(timeout=60)
    parts = [f"--- slurm-llm output ({log})\n{log.read_text()}",
             f"--- slurm-llm status {name}\n{status.read_text()}",
             "--- squeue\n" + "\n".join(squeue_jobs(name))]  # fmt: skip
    controller_logs = home / "deployments" / name / "controller-jobs"
    for path in sorted(controller_logs.glob("*.out")) + sorted(controller_logs.glob("*.err")):
        parts.append(f"--- {path}\n" + "\n".join(path.read_text().splitlines()[-40:]))
    return "\n".join(parts)


def hang_up(up: subprocess.Popen[bytes]) -> tuple[int, int]:
    """Closes the terminal of `up`'s session (SIGHUP to its process group) once `up` has
    returned; how many processes of the session were left before and after."""
    before = len(session_processes(up.pid))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(up.pid, signal.SIGHUP)
    time.sleep(1.0)
    return before, len(session_processes(up.pid))


def wait_controller_job(deployment: Deployment, since: float, timeout: float = 15.0) -> None:
    """Until the deployment's controller is a live job that has reconciled after ``since``."""
    deadline = time.monotonic() + timeout
    while (record := deployment.controller()) is None or not (
        record.kind == "job"
        and record.dead_reason() is None
        and (record.last_reconcile or 0.0) > since
    ):
        if time.monotonic() > deadline:
            raise BenchmarkError(f"no live controller job reconciling: {record}")
        time.sleep(0.1)


def controller_round(home: Path, round_no: int) -> Round:
    name = f"bench-ctl-{round_no}"
    log = home / f"{name}.log"
    start = time.perf_counter()
    up = cli(["up", PRESET, "--replicas", "2", "--executor", "slurm", "--name", name,
              "--timeout", str(TIMEOUT_S)], home, log, new_session=True)  # fmt: skip
    try:
        code = up.wait(timeout=TIMEOUT_S + 60)
        up_returned = time.perf_counter() - start
        if code != 0:
            raise BenchmarkError(f"slurm-llm up exited with {code}")
        hung_up = time.time()
        left_when_returned, left_after_hangup = hang_up(up)
        deployment = attach(name, home)
        assert deployment is not None
        wait_controller_job(deployment, since=hung_up)
        expect_jobs(name, 3)  # 2 replicas and the controller
        statuses = deployment.status()
        if [s.state for s in statuses] != ["ready", "ready"]:
            raise BenchmarkError(f"not every replica ready after `up` returned: {statuses}")
        old = statuses[0].job_id
        cancelled = time.perf_counter()
        subprocess.run(["scancel", old], check=True)
        new = wait_replaced(deployment, 0, old, 120)
        replacement = time.perf_counter() - cancelled
        replacement_engine = engine_start(deployment, new)
    except Exception as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGTERM)
        message = f"controller case, round {round_no + 1}: {exc}\n{evidence(name, home, log)}"
        cli(["down", name], home, log).wait(timeout=120)
        raise BenchmarkError(message) from exc
    stopping = time.perf_counter()
    code = cli(["down", name], home, log).wait(timeout=120)
    down = time.perf_counter() - stopping
    if code != 0:
        raise BenchmarkError(f"slurm-llm down exited with {code}\n{evidence(name, home, log)}")
    timings = {
        "up_returned": up_returned,
        "replacement": replacement,
        "replacement_engine": replacement_engine,
        "down": down,
    }
    left = left_behind(name, home)
    return timings, {
        **left,
        SESSION_RETURNED: left_when_returned,
        SESSION_HUNG_UP: left_after_hangup,
    }


def keep(result: Round, timings: list[dict[str, float]], left: dict[str, list[int]]) -> str:
    """Files one round's result; returns it as text."""
    measured, counts = result
    timings.append(measured)
    for item, count in counts.items():
        left.setdefault(item, []).append(count)
    return f"{measured} {counts}"


def print_left(left: dict[str, dict[str, list[int]]], console: Console) -> None:
    """What each case left behind after its stop, summed over the rounds."""
    rounds = max(len(counts) for case in left.values() for counts in case.values())
    table = Table(title=f"Left behind after stop, summed over {rounds} rounds (must read 0)")
    table.add_column("")
    for case in left:
        table.add_column(case, justify="right")
    for item in (JOBS, RECORDS, SESSION_RETURNED, SESSION_HUNG_UP):
        cells = []
        for counts in left.values():
            total = sum(counts[item]) if item in counts else None
            colour = "green" if total == 0 else "bold red"
            cells.append("-" if total is None else f"[{colour}]{total}[/]")
        table.add_row(item, *cells)
    console.print(table)


def source_commit() -> str:
    """The commit of the slurm_llm measured (its jobs import it afresh, so it must not change
    during a run), and whether it had uncommitted changes."""
    package = Path(slurm_llm.__file__).parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(package), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" + uncommitted changes" if git("status", "--porcelain", ".") else "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    spec = ModelSpec.preset(PRESET)
    console = Console()
    info = machine_info(("slurm-llm", "submitit", "xllamacpp"))
    info["slurm"] = subprocess.run(
        ["sinfo", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    info["slurm_llm_commit"] = source_commit()
    console.print(
        f"Machine: {describe(info)}; {info['slurm']}; slurm-llm {info['slurm_llm_commit']}"
    )
    alone: list[float] = []
    in_process: list[dict[str, float]] = []
    controller: list[dict[str, float]] = []
    left: dict[str, dict[str, list[int]]] = {"in-process": {}, "controller job": {}}
    with tempfile.TemporaryDirectory(dir=Path.home()) as home:  # shared with the nodes
        engine_alone(spec)
        for round_no in range(args.rounds):
            alone.append(engine_alone(spec))
            done = keep(
                in_process_round(spec, Path(home), round_no), in_process, left["in-process"]
            )
            console.print(f"round {round_no + 1}/{args.rounds} in-process: {done}")
            done = keep(controller_round(Path(home), round_no), controller, left["controller job"])
            console.print(f"round {round_no + 1}/{args.rounds} controller job: {done}")
    rows = {
        "engine alone: start to first generation": alone,
        "deploy() to ready on SLURM": [r["deploy_to_ready"] for r in in_process],
        "  submission to engine start (sbatch, scheduling, submitit)": [
            r["submit_to_engine_start"] for r in in_process
        ],
        "  engine start to ready, inside the launcher": [
            r["engine_start_to_ready"] for r in in_process
        ],
        "overhead beyond the engine (paired)": [
            r["deploy_to_ready"] - a for r, a in zip(in_process, alone, strict=True)
        ],
        "scancel to replacement ready (in-process thread)": [r["replacement"] for r in in_process],
        "  beyond the replacement engine's start (thread)": [
            r["replacement"] - r["replacement_engine"] for r in in_process
        ],
        "`slurm-llm up`, 2 replicas + controller job, to return": [
            r["up_returned"] for r in controller
        ],
        "scancel to replacement ready (controller job)": [r["replacement"] for r in controller],
        "  beyond the replacement engine's start (controller job)": [
            r["replacement"] - r["replacement_engine"] for r in controller
        ],
        "`slurm-llm down` (controller + 2 replicas)": [r["down"] for r in controller],
    }
    out = report_seconds(
        "slurm_lifecycle",
        f"Replica lifecycle on SLURM ({info['slurm']}), llama.cpp SmolLM2, {args.rounds} rounds",
        rows,
        {
            "engine alone: start to first generation": "engine alone",
            "deploy() to ready on SLURM": "deploy()",
            "scancel to replacement ready (in-process thread)": "replacement (thread)",
            "scancel to replacement ready (controller job)": "replacement (controller job)",
        },
        info,
        console,
    )
    saved = json.loads(out.read_text())
    saved["left_after_stop"] = left
    out.write_text(json.dumps(saved, indent=2))
    print_left(left, console)
    if any(sum(counts) for case in left.values() for counts in case.values()):
        console.print("[bold red]Something was left behind after stop.[/]")
        sys.exit(1)


if __name__ == "__main__":
    main()
