"""A deployment kept whole by its controller, and state that readers cannot corrupt: real
llama.cpp replicas on the local executor, real processes, real signals."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from slurm_llm import Registry, attach
from slurm_llm._registry import pid_alive
from slurm_llm.jobs._replica_job import _local_controller_alive
from tests.integration.helpers import cli, deploy_smollm2, wait_until

pytestmark = pytest.mark.llamacpp


def submitted_job_ids(home: Path, name: str) -> set[str]:
    """Every job ever submitted for the deployment, from submitit's own files, whatever the
    deployment's state says."""
    folder = home / "deployments" / name / "jobs"
    return {p.name.removesuffix("_submitted.pkl") for p in folder.glob("*/*_submitted.pkl")}


def test_readers_in_threads_and_another_process_do_not_leak_jobs_while_replicas_are_replaced(
    slurm_llm_home: Path,
) -> None:
    name = "stress-readers"
    deployment = deploy_smollm2(name, replicas=2)
    stop_reading = threading.Event()
    reads = [0]
    errors: list[BaseException] = []

    def read_forever() -> None:
        while not stop_reading.is_set():
            try:
                deployment.status()
                _ = deployment.endpoints, deployment.jobs, deployment.events
                reads[0] += 1
            except BaseException as exc:  # any crash of a reader is a failure
                errors.append(exc)
                return

    readers = [threading.Thread(target=read_forever, daemon=True) for _ in range(4)]
    for reader in readers:
        reader.start()
    other = subprocess.Popen(  # a second process: `slurm-llm status` in a loop, bounded
        [sys.executable, "-c", f"from slurm_llm.cli import main\nfor _ in range(300): "
         f"main(['status', '{name}'])"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        chosen = random.Random(7)
        for kill in range(6):
            victim = chosen.choice(deployment.records())
            os.kill(victim.launcher_pid, signal.SIGKILL)

            def replaced(dead: str = victim.job_id) -> bool:
                statuses = deployment.status()
                return all(s.state == "ready" for s in statuses) and dead not in {
                    s.job_id for s in statuses
                }

            wait_until(replaced, 60, f"replacement {kill + 1} of 6 to be ready")
        assert len(deployment.endpoints) == 2
    finally:
        stop_reading.set()
        for reader in readers:
            reader.join(timeout=10)
        other.kill()
        other.wait()
        deployment.stop()
    assert errors == [] and reads[0] > 0
    jobs = submitted_job_ids(slurm_llm_home, name)
    assert len(jobs) == 2 + 6, "exactly one replacement per kill"
    wait_until(lambda: not any(_local_controller_alive(j) for j in jobs), 30, "no job left")
    assert Registry(slurm_llm_home / "registry").all_records(name) == []
    assert attach(name, missing_ok=True) is None


def test_up_starts_a_controller_that_outlives_the_terminal_repairs_and_stops_with_down(
    slurm_llm_home: Path,
) -> None:
    name = "detached"
    terminal = subprocess.run(  # `up` in a session of its own, as from an SSH login
        [sys.executable, "-m", "slurm_llm", "up", "smollm2-135m", "--replicas", "2",
         "--executor", "local", "--name", name],
        capture_output=True, text=True, timeout=180, check=True, start_new_session=True,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert "controller process" in terminal.stdout
    deployment = attach(name)
    assert deployment is not None
    controller = deployment.controller()
    assert controller is not None and controller.kind == "process"
    assert os.getsid(controller.pid) != os.getsid(0), "the controller has a session of its own"
    try:
        old = deployment.jobs[0]
        old.cancel()  # as a user's scancel; nobody of the user's is watching

        def repaired() -> bool:
            first = deployment.status()[0]
            return first.job_id != old.job_id and first.state == "ready"

        wait_until(repaired, 60, "the controller to replace the cancelled replica")
        assert f"job {old.job_id} ended" in cli("status", name, "--events", "20")

        os.kill(controller.pid, signal.SIGKILL)  # the controller dies
        wait_until(lambda: not pid_alive(controller.pid), 10, "the controller to die")
        said = cli("status", name)
        assert "controller dead" in said and f"slurm-llm controller start {name}" in said
        again = cli("up", "smollm2-135m", "--replicas", "2", "--executor", "local",
                    "--name", name)  # fmt: skip
        assert "controller process" in again
        restarted = deployment.controller()
        assert restarted is not None and restarted.pid != controller.pid
        assert restarted.dead_reason() is None
    finally:
        jobs = submitted_job_ids(slurm_llm_home, name)
        cli("down", name)
    wait_until(lambda: not pid_alive(restarted.pid), 15, "the controller to stop")
    assert not any(_local_controller_alive(j) for j in jobs)
    assert Registry(slurm_llm_home / "registry").all_records(name) == []
    assert deployment.controller() is None
