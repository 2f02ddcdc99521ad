"""The controller loop: one at a time per deployment, standbys take over, records tell the
living from the dead. Real deployments on disk, with the fake scheduler."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_llm import ModelSpec
from slurm_llm._paths import registry_dir
from slurm_llm._registry import Registry
from slurm_llm.control._controller import (
    Controller,
    ControllerRecord,
    controller_lock,
    read_record,
    stop_controllers,
)
from slurm_llm.control._deployment import Deployment
from tests.integration.helpers import wait_until
from tests.unit.control.fake_scheduler import FakeScheduler


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    scheduler = FakeScheduler(Registry(registry_dir(tmp_path)))
    spec = ModelSpec.preset("smollm2-135m").with_overrides(replicas=1)
    yield Deployment("ctl", spec, "slurm", tmp_path, scheduler=scheduler).start()


class Counting(Deployment):
    """The deployment as one controller sees it, counting that controller's passes."""

    def __init__(self, other: Deployment) -> None:
        super().__init__(other.name, other.spec, "slurm", other.folder().parent.parent,
                         scheduler=other.scheduler)  # fmt: skip
        self.passes = 0

    def reconcile(self) -> list[str] | None:
        self.passes += 1
        return super().reconcile()


def running(controller: Controller) -> threading.Thread:
    thread = threading.Thread(target=controller.run, daemon=True)
    thread.start()
    return thread


def test_one_controller_reconciles_and_a_standby_takes_over_when_it_stops(
    deployment: Deployment,
) -> None:
    first, second = Counting(deployment), Counting(deployment)
    a = Controller(first, "thread", interval=0.01)
    b = Controller(second, "thread", interval=0.01)
    threads = [running(a)]
    wait_until(lambda: first.passes > 0, every=0.01)
    threads.append(running(b))
    time.sleep(0.2)  # b has had 20 chances to take over; it must not have
    assert second.passes == 0
    a.stop.set()
    wait_until(lambda: second.passes > 0, every=0.01)
    record = read_record(deployment.folder())
    assert record is not None and record.pid == os.getpid()
    b.stop.set()
    for thread in threads:
        thread.join(timeout=5)


def test_a_controller_ends_when_its_deployment_is_stopped(deployment: Deployment) -> None:
    controller = Controller(deployment, "thread", interval=0.01)
    thread = running(controller)
    wait_until(lambda: read_record(deployment.folder()) is not None, every=0.01)
    deployment.stop(timeout=1)
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert read_record(deployment.folder()) is None


def test_a_controller_hands_over_once_its_successor_waits(deployment: Deployment) -> None:
    predecessor = Controller(deployment, "job", interval=0.01, job_id="7")
    successor = Controller(deployment, "job", interval=0.01, job_id="8")
    outcome: list[str] = []
    thread = threading.Thread(
        target=lambda: outcome.append(predecessor.run(lambda c: c.successor_waits("8"))),
        daemon=True,
    )
    thread.start()
    wait_until(lambda: read_record(deployment.folder()) is not None, every=0.01)
    standby = running(successor)
    thread.join(timeout=5)
    assert outcome == ["handed over"]
    wait_until(
        lambda: (r := read_record(deployment.folder())) is not None and r.job_id == "8", every=0.01
    )
    successor.stop.set()
    standby.join(timeout=5)


def test_a_failing_pass_is_recorded_and_the_loop_goes_on(deployment: Deployment) -> None:
    class Broken(Counting):
        def reconcile(self) -> list[str] | None:
            self.passes += 1
            raise OSError("squeue: slurmctld not responding")

    broken = Broken(deployment)
    controller = Controller(broken, "thread", interval=0.01)
    thread = running(controller)
    wait_until(lambda: broken.passes >= 3, every=0.01)
    controller.stop.set()
    thread.join(timeout=5)
    said = "reconcile failed: OSError('squeue: slurmctld not responding')"
    assert any(said in event for event in deployment.events)


def record(**changes: object) -> ControllerRecord:
    now = time.time()
    base = ControllerRecord(
        deployment="d", kind="process", host=socket.gethostname(), pid=os.getpid(),
        started=now, last_reconcile=now, interval=1.0,
    )  # fmt: skip
    return base.model_copy(update=changes)


def test_a_live_controller_is_not_dead() -> None:
    assert record().dead_reason() is None


def test_a_controller_whose_process_is_gone_is_dead() -> None:
    reason = record(pid=2**22 + 12345).dead_reason()
    assert reason is not None and "is gone" in reason


def test_a_controller_that_stopped_reconciling_is_dead() -> None:
    reason = record(host="elsewhere", last_reconcile=time.time() - 120).dead_reason()
    assert reason == "it has not reconciled for 120 s"


def test_stopping_controllers_when_there_are_none_is_harmless(tmp_path: Path) -> None:
    stop_controllers(tmp_path, timeout=0.1)


def test_a_forked_child_does_not_keep_the_controller_lock(deployment: Deployment) -> None:
    controller = Controller(deployment, "thread", interval=0.01)
    thread = running(controller)
    wait_until(lambda: read_record(deployment.folder()) is not None, every=0.01)
    started, ready = os.pipe()
    child = os.fork()
    if child == 0:  # a notebook's worker process, living on after the controller stops
        os.write(ready, b"x")  # the fork hooks have run by now
        time.sleep(5)
        os._exit(0)
    os.read(started, 1)
    for fd in (started, ready):
        os.close(fd)
    try:
        controller.stop.set()
        thread.join(timeout=5)
        with controller_lock(deployment.folder()) as try_take:
            assert try_take(), "the child's copy of the descriptor still holds the lock"
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
