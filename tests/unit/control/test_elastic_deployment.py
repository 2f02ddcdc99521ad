"""An elastic deployment's passes against the fake scheduler (a fake of SLURM, named as such):
demand files in, scaling decisions, drains and ``scaling.json`` out."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from slurm_llm import Autoscale, ModelSpec
from slurm_llm._demand import DemandReport, ModelDemand, write_report
from slurm_llm._paths import registry_dir
from slurm_llm._registry import Registry
from slurm_llm.control._deployment import Deployment, DeploymentState
from tests.unit.control.fake_scheduler import FakeScheduler

BOUNDS = Autoscale(min_replicas=0, max_replicas=2, idle_s=3600, window_s=1,
                   scale_down_after_s=0, drain_timeout_s=60)  # fmt: skip


def elastic(home: Path, replicas: int) -> tuple[Deployment, FakeScheduler]:
    scheduler = FakeScheduler(Registry(registry_dir(home)))
    spec = ModelSpec.preset("smollm2-135m", autoscale=BOUNDS, replicas=replicas)
    return Deployment("el", spec, "slurm", home, scheduler=scheduler).start(), scheduler


def report(home: Path, **fields: object) -> None:
    write_report(home, DemandReport.model_validate({"router": "r", "written": time.time(),
                                                    **fields}))  # fmt: skip


def test_a_request_wakes_it_and_the_record_says_what_it_waits_for(tmp_path: Path) -> None:
    deployment, scheduler = elastic(tmp_path, replicas=0)
    deployment.reconcile()
    assert deployment.slots == {} and not deployment.wanted_now()
    report(tmp_path, models={"smollm2": ModelDemand(queued=1, last_request=time.time())})
    assert deployment.wanted_now()  # its controller runs the next pass at once
    deployment.reconcile()
    assert len(deployment.slots) == 1
    record = deployment.scaling()
    assert record is not None and (record.desired, record.ready) == (1, 0)
    assert record.decisions[-1].endswith("0 -> 1: woken by 1 request(s) waiting")
    assert record.progress == "queued in SLURM: Priority"  # the fake job has not started
    scheduler.start(deployment.slots[0].job.job_id)
    deployment.reconcile()
    assert (deployment.scaling() or record).progress == "starting engine (0 s so far)"


def test_a_replica_that_cannot_start_says_so_to_the_routers(tmp_path: Path) -> None:
    deployment, scheduler = elastic(tmp_path, replicas=1)
    job = deployment.slots[0].job.job_id
    scheduler.die(job, "FAILED", error="engine exited with code 1")
    deployment.reconcile()
    record = deployment.scaling()
    assert record is not None and record.failed is not None and "failed before" in record.failed


def test_a_scale_down_by_hand_without_a_controller_still_ends_its_drain(tmp_path: Path) -> None:
    deployment, scheduler = elastic(tmp_path, replicas=2)
    for slot in deployment.slots.values():
        scheduler.start(slot.job.job_id)
        scheduler.publish(slot.job.job_id)
    second = deployment.slots[1].job.job_id
    report(tmp_path, routed_jobs=[s.job.job_id for s in deployment.slots.values()],
           busy_jobs={second: 1})  # fmt: skip
    finished = False

    def router_finishes() -> None:  # its request on the replica ends, and it saw the marker
        nonlocal finished
        time.sleep(2)
        report(tmp_path, routed_jobs=[deployment.slots[0].job.job_id])
        finished = True

    threading.Thread(target=router_finishes, daemon=True).start()
    deployment.scale(1)
    assert finished and list(deployment.slots) == [0]
    assert second not in [job.job_id for job in scheduler.live()]
    assert any("drained in" in event for event in deployment.events)


def test_a_fixed_size_state_is_saved_as_before_autoscale_existed(tmp_path: Path) -> None:
    scheduler = FakeScheduler(Registry(registry_dir(tmp_path)))
    fixed = Deployment("f", ModelSpec.preset("smollm2-135m"), "slurm", tmp_path,
                       scheduler=scheduler).start()  # fmt: skip
    saved = (fixed.folder() / "state.json").read_text()
    assert "autoscale" not in saved
    assert DeploymentState.from_json(saved).spec == fixed.spec
