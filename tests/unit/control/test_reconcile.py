"""Every branch of ``plan``: what a deployment does about each thing that happens to its jobs."""

from __future__ import annotations

from slurm_llm.control._reconcile import (
    MAX_FAILURES_IN_A_ROW,
    JobFacts,
    JobRef,
    Slot,
    Submission,
    plan,
)
from slurm_llm.jobs._slurm_state import JobState

NOW = 1_000_000.0
HANDOVER_S = 120.0


def ref(job_id: str) -> JobRef:
    return JobRef(job_id, f"/jobs/{job_id}")


def running(deadline: float | None = None, published: bool = True) -> JobFacts:
    return JobFacts(JobState("RUNNING"), published=published, deadline=deadline)


def ended(state: str, was_ready: bool = True, reason: str = "") -> JobFacts:
    return JobFacts(JobState(state), was_ready=was_ready, reason=reason)


def test_a_healthy_deployment_needs_nothing() -> None:
    slots = {0: Slot(ref("1")), 1: Slot(ref("2"))}
    todo = plan(2, slots, {"1": running(), "2": running()}, NOW, HANDOVER_S)
    assert todo.slots == slots and not todo.changes


def test_a_new_deployment_submits_every_replica() -> None:
    todo = plan(3, {}, {}, NOW, HANDOVER_S)
    assert [(s.index, s.role) for s in todo.submit] == [(0, "job"), (1, "job"), (2, "job")]


def test_a_cancelled_replica_that_served_is_replaced() -> None:
    todo = plan(1, {0: Slot(ref("1"))}, {"1": ended("CANCELLED")}, NOW, HANDOVER_S)
    assert todo.submit == [Submission(0, "job", "replica 0: job 1 ended (CANCELLED: CANCELLED)")]
    assert todo.withdraw == [(0, "1")] and todo.slots[0].failures == 1


def test_a_node_failure_replaces_even_a_replica_that_never_served() -> None:
    todo = plan(1, {0: Slot(ref("1"))}, {"1": ended("NODE_FAIL", was_ready=False)}, NOW, 120)
    assert [s.index for s in todo.submit] == [0] and todo.slots[0].gave_up is None


def test_a_replica_that_fails_before_it_was_ever_ready_is_not_retried() -> None:
    facts = {"1": ended("FAILED", was_ready=False, reason="SpecError: model path missing")}
    todo = plan(1, {0: Slot(ref("1"))}, facts, NOW, HANDOVER_S)
    assert todo.submit == []
    reason = "job 1 failed before it was ready: SpecError: model path missing"
    assert todo.slots[0].gave_up == reason


def test_replacements_that_keep_dying_young_end_in_giving_up() -> None:
    slot = Slot(ref("1"), failures=MAX_FAILURES_IN_A_ROW)
    todo = plan(1, {0: slot}, {"1": ended("NODE_FAIL", was_ready=False, reason="r")}, NOW, 120)
    assert todo.submit == [] and todo.slots[0].gave_up is not None
    assert "replacements in a row ended; last: r" in todo.slots[0].gave_up


def test_a_replica_that_served_resets_its_failure_count() -> None:
    slot = Slot(ref("1"), failures=MAX_FAILURES_IN_A_ROW)
    todo = plan(1, {0: slot}, {"1": ended("FAILED", was_ready=True)}, NOW, HANDOVER_S)
    assert todo.slots[0].failures == 1 and [s.index for s in todo.submit] == [0]


def test_a_requeued_replica_is_left_to_slurm() -> None:
    pending = JobFacts(JobState("PENDING", "BeginTime"))
    todo = plan(1, {0: Slot(ref("1"))}, {"1": pending}, NOW, HANDOVER_S)
    assert not todo.changes


def test_a_job_slurm_will_never_start_is_cancelled_and_reported() -> None:
    hopeless = JobFacts(JobState("PENDING", "PartitionConfig"))
    todo = plan(1, {0: Slot(ref("1"))}, {"1": hopeless}, NOW, HANDOVER_S)
    assert todo.cancel == [ref("1")] and todo.submit == []
    assert todo.slots[0].gave_up == "SLURM will never start job 1: PartitionConfig"


def test_a_job_whose_state_is_unknown_is_left_alone() -> None:
    todo = plan(1, {0: Slot(ref("1"))}, {}, NOW, HANDOVER_S)
    assert not todo.changes


def test_a_failed_slot_stays_failed() -> None:
    slot = Slot(ref("1"), gave_up="broken")
    assert not plan(1, {0: slot}, {"1": ended("FAILED")}, NOW, HANDOVER_S).changes


def test_a_replica_near_its_wall_time_gets_a_successor() -> None:
    facts = {"1": running(deadline=NOW + HANDOVER_S - 1)}
    todo = plan(1, {0: Slot(ref("1"))}, facts, NOW, HANDOVER_S)
    assert [(s.index, s.role) for s in todo.submit] == [(0, "successor")]
    assert todo.cancel == []


def test_a_replica_far_from_its_wall_time_gets_none() -> None:
    facts = {"1": running(deadline=NOW + HANDOVER_S + 1)}
    assert not plan(1, {0: Slot(ref("1"))}, facts, NOW, HANDOVER_S).changes


def test_a_successor_waits_until_it_has_published() -> None:
    slot = Slot(ref("1"), successor=ref("2"))
    facts = {"1": running(NOW + 10), "2": running(published=False)}
    todo = plan(1, {0: slot}, facts, NOW, HANDOVER_S)
    assert todo.slots[0] == slot and todo.submit == [] and todo.cancel == []


def test_a_ready_successor_takes_over_and_its_predecessor_is_retired() -> None:
    slot = Slot(ref("1"), successor=ref("2"))
    facts = {"1": running(NOW + 10), "2": running(NOW + 3600)}
    todo = plan(1, {0: slot}, facts, NOW, HANDOVER_S)
    assert todo.slots[0] == Slot(ref("2")) and todo.cancel == [ref("1")]
    assert todo.submit == []


def test_a_successor_that_ends_is_dropped_and_tried_again() -> None:
    slot = Slot(ref("1"), successor=ref("2"))
    facts = {"1": running(NOW + 10), "2": ended("FAILED", was_ready=False)}
    todo = plan(1, {0: slot}, facts, NOW, HANDOVER_S)
    assert todo.slots[0].successor is None
    assert [(s.index, s.role) for s in todo.submit] == [(0, "successor")]


def test_a_replica_that_dies_during_handover_is_served_by_its_successor() -> None:
    slot = Slot(ref("1"), successor=ref("2"))
    facts = {"1": ended("TIMEOUT"), "2": running(published=False)}
    todo = plan(1, {0: slot}, facts, NOW, HANDOVER_S)
    assert todo.slots[0].job == ref("2") and todo.slots[0].successor is None
    assert todo.submit == []


def test_scaling_up_adds_indices_after_the_highest() -> None:
    slots = {0: Slot(ref("1")), 2: Slot(ref("3"))}
    todo = plan(4, slots, {"1": running(), "3": running()}, NOW, HANDOVER_S)
    assert [s.index for s in todo.submit] == [3, 4]


def test_scaling_down_removes_the_highest_indices_and_their_successors() -> None:
    slots = {0: Slot(ref("1")), 1: Slot(ref("2"), successor=ref("3"))}
    todo = plan(1, slots, {"1": running(), "2": running(), "3": running()}, NOW, HANDOVER_S)
    assert list(todo.slots) == [0] and todo.cancel == [ref("2"), ref("3")]


def test_scaling_to_zero_cancels_everything() -> None:
    todo = plan(0, {0: Slot(ref("1"))}, {"1": running()}, NOW, HANDOVER_S)
    assert todo.slots == {} and todo.cancel == [ref("1")]


def test_a_retired_predecessor_that_died_uncleanly_has_its_record_withdrawn() -> None:
    slot = Slot(ref("1"), successor=ref("2"))
    facts = {"1": JobFacts(JobState("RUNNING"), published=True), "2": running(NOW + 3600)}
    todo = plan(1, {0: slot}, facts, NOW, HANDOVER_S)
    assert todo.withdraw == [(0, "1")]


def test_a_successor_slurm_will_never_start_is_cancelled_and_counted() -> None:
    slot = Slot(ref("1"), successor=ref("2"))
    facts = {"1": running(NOW + 10), "2": JobFacts(JobState("PENDING", "PartitionTimeLimit"))}
    todo = plan(1, {0: slot}, facts, NOW, HANDOVER_S)
    assert ref("2") in todo.cancel and todo.slots[0].failures == 1


def test_successors_that_keep_failing_are_not_tried_forever() -> None:
    slot = Slot(ref("1"), failures=MAX_FAILURES_IN_A_ROW)
    todo = plan(1, {0: slot}, {"1": running(NOW + 10)}, NOW, HANDOVER_S)
    assert todo.submit == []


DRAIN_S = 300.0


def routed() -> JobFacts:
    """A ready replica that a router has requests on, or may still send one."""
    return JobFacts(JobState("RUNNING"), published=True, routed=True)


def test_a_replica_routers_still_use_is_drained_before_it_is_scaled_down() -> None:
    slots = {0: Slot(ref("1")), 1: Slot(ref("2"), successor=ref("3"))}
    facts = {"1": running(), "2": routed(), "3": running(published=False)}
    todo = plan(1, slots, facts, NOW, HANDOVER_S, DRAIN_S)
    assert todo.slots[1] == Slot(ref("2"), draining_since=NOW)  # its handover is not needed
    assert todo.drain == [(1, "2")] and todo.cancel == [ref("3")]
    assert todo.events == ["replica 1: draining (scaled to 1)"]


def test_a_replica_scaled_down_during_its_handover_drains_its_published_successor() -> None:
    slots = {0: Slot(ref("1")), 1: Slot(ref("2"), successor=ref("3"))}
    facts = {"1": running(), "2": routed(), "3": routed()}
    todo = plan(1, slots, facts, NOW, HANDOVER_S, DRAIN_S)
    assert todo.slots[1] == Slot(ref("3"), draining_since=NOW)  # the successor serves now
    assert todo.cancel == [ref("2")] and todo.drain == [(1, "3")]


def test_a_draining_replica_goes_once_no_router_uses_it() -> None:
    slots = {0: Slot(ref("1")), 1: Slot(ref("2"), draining_since=NOW)}
    still = plan(1, slots, {"1": running(), "2": routed()}, NOW + 5, HANDOVER_S, DRAIN_S)
    assert still.slots == slots and not still.cancel
    done = plan(1, slots, {"1": running(), "2": running()}, NOW + 6, HANDOVER_S, DRAIN_S)
    assert list(done.slots) == [0] and done.cancel == [ref("2")] and done.withdraw == [(1, "2")]
    assert done.events == ["replica 1: removed (scaled to 1; drained in 6 s)"]


def test_a_drain_that_never_ends_times_out() -> None:
    slots = {0: Slot(ref("1"), draining_since=NOW)}
    todo = plan(0, slots, {"1": routed()}, NOW + DRAIN_S, HANDOVER_S, DRAIN_S)
    assert todo.cancel == [ref("1")]
    assert todo.events == ["replica 0: removed (scaled to 0; drain timed out after 300 s)"]


def test_a_replica_nobody_routes_to_or_not_ready_is_removed_at_once() -> None:
    slots = {0: Slot(ref("1")), 1: Slot(ref("2"))}
    facts = {"1": running(), "2": JobFacts(JobState("RUNNING"), published=False, routed=True)}
    assert plan(1, slots, facts, NOW, HANDOVER_S, DRAIN_S).cancel == [ref("2")]
    assert plan(1, slots, {**facts, "2": routed()}, NOW, HANDOVER_S).cancel == [ref("2")]


def test_a_draining_replica_wanted_again_is_kept_and_undrained() -> None:
    slots = {0: Slot(ref("1")), 1: Slot(ref("2"), draining_since=NOW)}
    todo = plan(2, slots, {"1": running(), "2": routed()}, NOW + 1, HANDOVER_S, DRAIN_S)
    assert todo.slots[1] == Slot(ref("2")) and todo.undrain == [(1, "2")]
    assert not todo.submit and not todo.cancel
