"""Deployments on a real SLURM cluster started on this machine (``slurm-llm cluster up``).

The cluster's GPUs are fakes (GRES whose device files point at /dev/null): SLURM schedules and
isolates them exactly as real ones, and sets CUDA_VISIBLE_DEVICES; the llama.cpp engine runs on
the CPU regardless.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_llm import Deployment, DeploymentError, ModelSpec, deploy
from tests.integration.helpers import openai_client, wait_until

pytestmark = pytest.mark.slurm


def smollm2_on_gpus(**changes: object) -> ModelSpec:
    return ModelSpec.preset(
        "smollm2-135m", device="cuda", gpus_per_replica=2, gpus_per_node=4, **changes
    )


@pytest.fixture(scope="module")
def on_slurm(local_slurm: object, slurm_llm_home: Path) -> Iterator[Deployment]:
    """Two replicas kept whole by a controller job: no thread of this process reconciles, so
    every repair below is the controller's, as after the user has logged out."""
    with deploy(
        smollm2_on_gpus(), replicas=2, executor="slurm", name="slurm-smollm2", progress=False,
        timeout=180, controller="job",
    ) as deployment:  # fmt: skip
        yield deployment


def test_the_controller_runs_as_a_small_job_of_its_own(on_slurm: Deployment) -> None:
    record = on_slurm.controller()
    assert record is not None and record.kind == "job" and record.dead_reason() is None
    assert record.job_id is not None
    squeue = ["squeue", "-h", "-j", record.job_id, "-o", "%T|%j|%C"]
    state, name, cpus = (
        subprocess.run(squeue, capture_output=True, text=True, check=True).stdout.strip().split("|")
    )
    assert (state, name, cpus) == ("RUNNING", "slurm-llm-controller+slurm-smollm2", "1")


def engine_environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_replicas_run_as_a_job_array_with_their_own_gpus(on_slurm: Deployment) -> None:
    records = on_slurm.records()
    assert len(records) == 2
    assert len({r.job_id.split("_")[0] for r in records}) == 1, "one job array"
    for record in records:
        assert len(record.gpus) == 2
        visible = engine_environment(record.engine_pid)["CUDA_VISIBLE_DEVICES"]
        assert visible.split(",") == record.gpus
        reply = openai_client(record.url).chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert reply.choices[0].message.content is not None


def test_a_cancelled_replica_is_replaced_and_the_registry_stays_correct(
    on_slurm: Deployment,
) -> None:
    old = on_slurm.jobs[1]
    started = time.monotonic()
    subprocess.run(["scancel", old.job_id], check=True)

    def replaced() -> bool:
        status = on_slurm.status()[1]
        return status.job_id != old.job_id and status.state == "ready"

    wait_until(replaced, 120, "a replacement replica")
    print(f"replacement ready {time.monotonic() - started:.1f} s after scancel")
    jobs = {r.job_id for r in on_slurm.registry.records("slurm-smollm2")}
    assert old.job_id not in jobs and len(jobs) == 2


def test_a_requeued_replica_comes_back_under_the_same_job(on_slurm: Deployment) -> None:
    [before] = [r for r in on_slurm.records() if r.replica == 0]
    subprocess.run(["scontrol", "requeue", before.job_id], check=True)

    def back() -> bool:
        now = [r for r in on_slurm.records() if r.replica == 0]
        return bool(now) and now[0].launcher_pid != before.launcher_pid

    wait_until(back, 180, "the requeued replica to publish again")
    [after] = [r for r in on_slurm.records() if r.replica == 0]
    assert after.job_id == before.job_id
    assert on_slurm.status()[0].state == "ready"


def test_a_replica_on_a_failed_node_serves_again_from_another(on_slurm: Deployment) -> None:
    [record] = [r for r in on_slurm.records() if r.replica == 0]
    squeue = ["squeue", "-h", "-j", record.job_id, "-o", "%N"]
    node = subprocess.run(squeue, capture_output=True, text=True, check=True).stdout.strip()
    # Drained first, so it stays out of service once down (ReturnToService brings a plain down
    # node back as soon as its slurmd re-registers); down kills the job on it.
    for state in ("drain", "down"):
        update = ["scontrol", "update", f"nodename={node}", f"state={state}", "reason=test"]
        subprocess.run(update, check=True)
    try:

        def elsewhere() -> bool:  # replaced, or requeued by SLURM onto another node
            records = [r for r in on_slurm.records() if r.replica == 0]
            return bool(records) and all(r.node != node for r in records)

        wait_until(elsewhere, 120, "replica 0 serving again from another node")
        assert on_slurm.status()[0].state == "ready"
    finally:
        resume = ["scontrol", "update", f"nodename={node}", "state=resume"]
        subprocess.run(resume, check=True)


def test_wall_time_handover_keeps_a_replica_ready_at_every_moment(
    local_slurm: object, slurm_llm_home: Path
) -> None:
    """Replica and controller jobs both reach their wall-time: the controller job hands the
    replica over to a successor, and then itself to a successor controller job."""
    spec = smollm2_on_gpus(slurm={"time_limit": "00:04:00"}, handover_s=110)
    with deploy(spec, replicas=1, executor="slurm", name="short-lived-slurm", progress=False,
                timeout=180, controller="job") as deployment:  # fmt: skip
        first = deployment.jobs[0].job_id
        first_controller = deployment.controller()
        assert first_controller is not None and first_controller.kind == "job"
        deadline = time.monotonic() + 200
        gaps = 0
        while time.monotonic() < deadline:
            if not deployment.endpoints:
                gaps += 1
            if deployment.jobs[0].job_id != first and first not in {
                r.job_id for r in deployment.records()
            }:
                break
            time.sleep(0.2)
        assert deployment.jobs[0].job_id != first, "no successor took over"
        assert gaps == 0, "a moment with no ready replica"
        assert any("successor" in event for event in deployment.events)

        def controller_handed_over() -> bool:
            record = deployment.controller()
            return (
                record is not None
                and record.job_id != first_controller.job_id
                and (record.dead_reason() is None)
            )

        wait_until(controller_handed_over, 60, "a successor controller job")
        assert any("successor controller job" in event for event in deployment.events)


def test_more_gpus_than_a_node_has_fails_fast(local_slurm: object) -> None:
    spec = ModelSpec.preset("smollm2-135m", device="cuda", gpus_per_replica=8, gpus_per_node=8)
    started = time.monotonic()
    with pytest.raises(DeploymentError, match="SLURM refused"):
        deploy(spec, replicas=1, executor="slurm", name="too-many-gpus", progress=False)
    assert time.monotonic() - started < 30


def test_an_unknown_partition_fails_fast(local_slurm: object) -> None:
    spec = ModelSpec.preset("smollm2-135m", slurm={"partition": "no-such-partition"})
    with pytest.raises(DeploymentError, match=r"SLURM refused.*(?i:partition)"):
        deploy(spec, replicas=1, executor="slurm", name="bad-partition", progress=False)
