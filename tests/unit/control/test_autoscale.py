"""The autoscaler's decisions, from demand samples alone (no I/O): wake, up, down, idle."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from slurm_llm._demand import ModelDemand
from slurm_llm.control._autoscale import Autoscaler, ScalingRecord
from slurm_llm.spec._model_spec import Autoscale

BOUNDS = Autoscale(
    min_replicas=0, max_replicas=3, idle_s=60, target_utilisation=0.5, window_s=10,
    scale_down_after_s=30,
)  # fmt: skip
SLOTS = 4  # a replica takes 4 requests at once: 2 keep it at the 50 % target
T0 = 1_000_000.0


def run(
    scaler: Autoscaler, desired: int, seconds: range, requests: int, asked: bool = True
) -> tuple[int, list[str]]:
    """One pass a second over ``seconds`` (after T0) with ``requests`` in flight; each pass
    acts on the decision, as the controller does. Returns the count and the reasons."""
    reasons = []
    for second in seconds:
        now = T0 + second
        last = now if asked and requests else None
        scaler.observe(now, ModelDemand(in_flight=requests, last_request=last))
        desired, why = scaler.decide(desired, now)
        if why:
            reasons.append(why)
    return desired, reasons


def test_a_deployment_that_starts_at_zero_stays_there_until_asked() -> None:
    scaler = Autoscaler(BOUNDS, SLOTS, started=T0)
    assert run(scaler, 0, range(0, 120), requests=0) == (0, [])


def test_the_first_request_wakes_it_at_once() -> None:
    scaler = Autoscaler(BOUNDS, SLOTS, started=T0)
    scaler.observe(T0 + 1, ModelDemand(queued=1, last_request=T0 + 1))
    assert scaler.decide(0, T0 + 1) == (1, "woken by 1 request(s) waiting")


def test_a_crowd_wakes_as_many_replicas_as_it_needs() -> None:
    scaler = Autoscaler(BOUNDS, SLOTS, started=T0)
    run(scaler, 0, range(0, 60), requests=0)  # a quiet window before it: the crowd still counts
    scaler.observe(T0 + 60, ModelDemand(queued=4, last_request=T0 + 60))
    assert scaler.decide(0, T0 + 60)[0] == 2  # 4 requests at 50 % of 4 slots
    scaler.observe(T0 + 61, ModelDemand(queued=100, last_request=T0 + 61))
    assert scaler.decide(0, T0 + 61)[0] == BOUNDS.max_replicas


def test_requests_that_arrive_while_it_wakes_start_their_replicas_at_once() -> None:
    """Until a replica serves, everything is queued: the crowd keeps setting the count, so a
    burst does not wait for the first replica to serve a window before the next is asked for."""
    scaler = Autoscaler(BOUNDS, SLOTS, started=T0)
    run(scaler, 0, range(0, 60), requests=0)
    scaler.observe(T0 + 60, ModelDemand(queued=1, last_request=T0 + 60))
    assert scaler.decide(0, T0 + 60)[0] == 1
    scaler.observe(T0 + 61, ModelDemand(queued=4, last_request=T0 + 61))
    assert scaler.decide(1, T0 + 61) == (2, "4 request(s) waiting and no replica serving")
    # Once one serves, growing waits for a window of demand again.
    scaler.observe(T0 + 62, ModelDemand(in_flight=4, queued=4, last_request=T0 + 62))
    assert scaler.decide(2, T0 + 62) == (2, None)


def test_sustained_demand_grows_it_after_a_window_and_never_past_the_maximum() -> None:
    scaler = Autoscaler(BOUNDS, SLOTS, started=T0)
    desired, reasons = run(scaler, 1, range(0, 9), requests=6)
    assert desired == 1 and not reasons  # not yet a whole window of it
    desired, reasons = run(scaler, desired, range(9, 12), requests=6)
    assert desired == 3  # 6 requests at 50 % of 4 slots: 3 replicas
    assert "target 50%" in reasons[0]
    assert run(scaler, desired, range(12, 40), requests=40)[0] == BOUNDS.max_replicas


def test_a_short_spike_is_averaged_away() -> None:
    scaler = Autoscaler(BOUNDS, SLOTS, started=T0)
    run(scaler, 1, range(0, 20), requests=1)
    desired, reasons = run(scaler, 1, range(20, 21), requests=8)
    assert (desired, reasons) == (1, [])  # (9 x 1 + 8) / 10 samples = 1.7: one replica's 2


def test_it_shrinks_only_after_demand_stays_low_for_scale_down_after_s() -> None:
    scaler = Autoscaler(BOUNDS, SLOTS, started=T0)
    desired, _ = run(scaler, 3, range(0, 40), requests=6)
    assert desired == 3
    desired, reasons = run(scaler, desired, range(40, 40 + 29), requests=1)
    assert desired == 3 and not reasons  # the window's high need is still within 30 s
    desired, reasons = run(scaler, desired, range(69, 90), requests=1)
    assert desired == 1
    assert "1 suffice(s) for the last 30 s" in reasons[-1]


def test_an_idle_deployment_goes_to_its_minimum_and_a_busy_one_never_to_zero() -> None:
    scaler = Autoscaler(BOUNDS, SLOTS, started=T0)
    run(scaler, 1, range(0, 5), requests=1)
    # One long answer still streaming, no new request for two minutes: it must not go to zero,
    # nor the moment that answer ends.
    desired, reasons = run(scaler, 1, range(5, 125), requests=1, asked=False)
    assert desired == 1
    desired, reasons = run(scaler, 1, range(125, 200), requests=0)
    assert desired == 0 and reasons == ["unused for 60 s"]  # from its answer's end, at 124 s
    kept = Autoscaler(BOUNDS.model_copy(update={"min_replicas": 1}), SLOTS, started=T0)
    assert run(kept, 2, range(0, 200), requests=0)[0] == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 20), st.integers(0, 30), st.integers(0, 12), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 2),
)
def test_decisions_stay_in_bounds_wake_waiters_and_do_not_flap(
    steps: list[tuple[int, int, int, bool]], min_replicas: int
) -> None:
    """Over random demand: the count stays within the bounds; requests waiting at zero always
    wake it; and no scale-down follows a scale-up within ``scale_down_after_s`` unless the
    deployment went idle."""
    bounds = BOUNDS.model_copy(update={"min_replicas": min_replicas})
    scaler = Autoscaler(bounds, SLOTS, started=T0)
    desired, now, last_up = min_replicas, T0, None
    for gap, queued, in_flight, new_request in steps:
        now += gap
        requests = queued + in_flight
        demand = ModelDemand(
            in_flight=in_flight, queued=queued, last_request=now if new_request else None
        )
        scaler.observe(now, demand)
        new, why = scaler.decide(desired, now)
        assert bounds.min_replicas <= new <= bounds.max_replicas
        if requests:
            assert new >= 1, "requests are waiting for a replica"
        if new < desired and last_up is not None and now - last_up < bounds.scale_down_after_s:
            assert why is not None and why.startswith("unused for")
        if new > desired:
            last_up = now
        desired = new


def test_the_scaling_record_counts_decisions_and_keeps_the_latest() -> None:
    record = ScalingRecord(deployment="d", model="m", bounds=BOUNDS, desired=0, ready=0, written=T0)
    for n in range(25):
        record = record.decided(n % 2, (n + 1) % 2, f"step {n}", T0 + n)
    assert (record.scale_ups, record.scale_downs) == (13, 12)
    assert len(record.decisions) == 20 and record.decisions[-1].endswith("0 -> 1: step 24")
    for n in range(12):
        record = record.with_startup(f"job{n}", 10.0 + n)
    assert list(record.startups_s) == [f"job{n}" for n in range(2, 12)]
    assert record.typical_startup_s() == 16.5


def test_demand_just_under_one_replicas_target_keeps_two_against_flapping() -> None:
    """1.8 requests on average: one replica would run at 90 % of its target, within the
    scale-down band, so the second stays; the next burst would only bring it back."""
    scaler = Autoscaler(BOUNDS, SLOTS, started=T0)
    desired, reasons = 2, []
    for second in range(0, 120):
        now = T0 + second
        scaler.observe(now, ModelDemand(in_flight=1 if second % 5 == 0 else 2, last_request=now))
        desired, why = scaler.decide(desired, now)
        reasons += [why] if why else []
    assert (desired, reasons) == (2, [])
    desired, reasons = run(scaler, desired, range(120, 160), requests=1)
    assert desired == 1  # 1 request: half the target, well within one replica
