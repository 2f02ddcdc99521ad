"""Property tests: whatever happens to its jobs, in whatever order, a deployment loses none.

A real ``Deployment`` (state file, lock, registry, event log, all on disk) runs against the fake
scheduler, while hypothesis interleaves job starts, readiness, deaths, requeues, hopeless
pending reasons, wall-time deadlines, scale calls (drained first while a router's demand report
says it has requests on a replica), reconcile passes and readers: on the same
handle, on a second handle (another process, as far as the state is concerned), and inside a
pass, between submission and saving. After every step:

- every job ever submitted is either in the persisted state or no longer runs;
- the number of running jobs never exceeds the desired replicas plus handovers and drains in
  progress.

A process can also die between sbatch and saving the state (the one window no lock closes);
then the next pass, from any process, finds the job through the scheduler and cancels it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from slurm_llm import DeploymentError, ModelSpec
from slurm_llm._demand import DemandReport, write_report
from slurm_llm._paths import registry_dir
from slurm_llm._registry import Registry
from slurm_llm.control._deployment import Deployment, DeploymentState
from tests.unit.control.fake_scheduler import Crash, FakeScheduler

HANDOVER_S = 60.0
ENDS = st.sampled_from(["FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "PREEMPTED", "COMPLETED"])
PICK = st.integers(min_value=0, max_value=10_000)


class DeploymentUnderFaults(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.home = Path(tempfile.mkdtemp(prefix="slurm-llm-prop-"))
        self.scheduler = FakeScheduler(Registry(registry_dir(self.home)))
        spec = ModelSpec.preset("smollm2-135m", handover_s=HANDOVER_S)
        self.deployment = Deployment("prop", spec.with_overrides(replicas=2), "slurm",
                                     self.home, scheduler=self.scheduler)  # fmt: skip
        self.other = Deployment("prop", spec, "slurm", self.home, scheduler=self.scheduler)
        for handle in (self.deployment, self.other):
            handle.sweep_every_s = 0.0  # look for orphans on every pass
        self.deployment.start()

    def teardown(self) -> None:
        try:
            self.deployment.stop(timeout=1)
            assert self.scheduler.live() == []
            assert Registry(registry_dir(self.home)).all_records("prop") == []
        finally:
            shutil.rmtree(self.home, ignore_errors=True)

    def _pick(self, n: int, live_only: bool = True) -> str | None:
        jobs = self.scheduler.live() if live_only else list(self.scheduler.jobs.values())
        return jobs[n % len(jobs)].job_id if jobs else None

    # ---- what happens to jobs ---------------------------------------------------------------

    @rule(n=PICK)
    def a_job_starts(self, n: int) -> None:
        if (job_id := self._pick(n)) is not None:
            self.scheduler.start(job_id)

    @rule(n=PICK, near_its_end=st.booleans())
    def an_engine_gets_ready(self, n: int, near_its_end: bool) -> None:
        if (job_id := self._pick(n)) is not None:
            deadline = time.time() + (HANDOVER_S / 2 if near_its_end else 3600)
            self.scheduler.publish(job_id, deadline)

    @rule(n=PICK, state=ENDS, was_ready=st.booleans())
    def a_job_dies(self, n: int, state: str, was_ready: bool) -> None:
        if (job_id := self._pick(n)) is not None:
            self.scheduler.jobs[job_id].was_ready |= was_ready
            self.scheduler.die(job_id, state, error="engine exited with code 1")

    @rule(n=PICK)
    def slurm_requeues_a_job(self, n: int) -> None:
        if (job_id := self._pick(n)) is not None:
            self.scheduler.requeue(job_id)

    @rule(n=PICK)
    def a_job_pends_hopelessly(self, n: int) -> None:
        if (job_id := self._pick(n)) is not None:
            self.scheduler.hold_hopelessly(job_id)

    @rule(n=PICK, busy=st.booleans())
    def a_router_reports_a_replica(self, n: int, busy: bool) -> None:
        """One router's report: it may route to every replica not marked draining, and has
        requests on one of them (or on none)."""
        registry = Registry(registry_dir(self.home))
        serving = [r.job_id for r in registry.records("prop") if not r.draining]
        job_id = self._pick(n)
        write_report(self.home, DemandReport(
            router="router", written=time.time(), routed_jobs=serving,
            busy_jobs={job_id: 1} if busy and job_id else {},
        ))  # fmt: skip

    # ---- what the deployment's users and controller do --------------------------------------

    @rule()
    def the_controller_reconciles(self) -> None:
        self.deployment.reconcile()

    @rule()
    def another_process_reconciles(self) -> None:
        self.other.reconcile()

    @rule(replicas=st.integers(min_value=0, max_value=4))
    def someone_scales(self, replicas: int) -> None:
        self.other.scale(replicas)

    @rule()
    def a_controller_dies_between_sbatch_and_saving_and_the_next_pass_cleans_up(self) -> None:
        reader, self.scheduler.during_submit = self.scheduler.during_submit, _crash
        try:
            self.deployment.scale(len(self._persisted().slots) + 1)
        except Crash:
            pass
        finally:
            self.scheduler.during_submit = reader
        self.other.reconcile()

    @rule()
    def a_second_start_under_the_same_name_is_refused(self) -> None:
        spec = self._persisted().spec
        twin = Deployment("prop", spec, "slurm", self.home, scheduler=self.scheduler)
        with pytest.raises(DeploymentError, match="started meanwhile"):
            twin.start()

    @rule()
    def readers_read(self) -> None:
        for handle in (self.deployment, self.other):
            handle.status()
            assert isinstance(handle.endpoints, list)
            assert isinstance(handle.jobs, dict)
            handle.records()

    @precondition(lambda self: self.scheduler.during_submit is None)
    @rule()
    def readers_read_in_the_middle_of_a_pass(self) -> None:
        self.scheduler.during_submit = self.readers_read

    @rule()
    def readers_stop_reading_mid_pass(self) -> None:
        self.scheduler.during_submit = None

    # ---- what must hold ---------------------------------------------------------------------

    def _persisted(self) -> DeploymentState:
        path = self.home / "deployments" / "prop" / "state.json"
        return DeploymentState.from_json(path.read_text())

    @invariant()
    def every_running_job_is_in_the_persisted_state(self) -> None:
        known = {job.job_id for job in self._persisted().jobs()}
        leaked = [job.job_id for job in self.scheduler.live() if job.job_id not in known]
        assert leaked == [], f"jobs running outside the state: {leaked}"

    @invariant()
    def no_more_jobs_run_than_desired_plus_handovers_and_drains(self) -> None:
        state = self._persisted()
        handovers = sum(1 for slot in state.slots.values() if slot.successor is not None)
        drains = sum(1 for slot in state.slots.values() if slot.draining_since is not None)
        assert len(self.scheduler.live()) <= state.spec.replicas + handovers + drains

    @invariant()
    def events_are_numbered_in_order(self) -> None:
        seqs = [event.seq for event in self.deployment.events_since(0)]
        assert seqs == sorted(set(seqs))


def _crash() -> None:
    raise Crash


TestDeploymentUnderFaults = DeploymentUnderFaults.TestCase
TestDeploymentUnderFaults.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
