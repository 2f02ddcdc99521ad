"""The router's metrics: what the hot path tallies reaches prometheus whole, when read."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from slurm_llm.router._admission import Admission
from slurm_llm.router._backends import BackendPool
from slurm_llm.router._metering import Meter, answer_usage, count_usage
from slurm_llm.router._metrics import LATENCY_BUCKETS, Histogram, RouterMetrics
from slurm_llm.router._policies import make_policy
from tests.unit.router.test_upstream import until

AMOUNTS = st.lists(
    st.one_of(
        st.sampled_from(LATENCY_BUCKETS),  # on a bound: that bucket, as ``observe`` has it
        st.floats(min_value=0, max_value=1000, allow_nan=False),
    ),
    max_size=50,
)


def metrics() -> RouterMetrics:
    pool = BackendPool(None, static=[("m", "http://127.0.0.1:9")], replica_limit=4)
    return RouterMetrics(Admission(pool, make_policy("round-robin"), 16))


def histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    made = Histogram("h", "h", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
    return registry, made


def counts(exposition: list[str]) -> list[str]:
    """The buckets and the count (not the sum, added in another order, nor the creation time)."""
    return [line for line in exposition if "_bucket" in line or "_count" in line]


@given(AMOUNTS)
def test_observing_many_at_once_is_observing_each(amounts: list[float]) -> None:
    each_registry, each = histogram()
    many_registry, many = histogram()
    child = each.labels("m")  # made, as observe_many makes it, even for no amounts
    for amount in amounts:
        child.observe(amount)
    many.labels("m").observe_many(amounts)
    each_text = generate_latest(each_registry).decode().splitlines()
    many_text = generate_latest(many_registry).decode().splitlines()
    assert counts(each_text) == counts(many_text)
    sums = [float(line.split()[-1]) for line in each_text + many_text if "_sum{" in line]
    assert sums[0] == sums[1] or abs(sums[0] - sums[1]) <= 1e-9 * max(sums)


def sample(router: RouterMetrics, name: str, **labels: str) -> float | None:
    value = router.readable().get_sample_value(name, labels)
    return value


def test_tallies_reach_the_metrics_when_they_are_read() -> None:
    router = metrics()
    router.answered("m", "/v1/chat/completions", 200, 0.02)
    router.answered("m", "/v1/chat/completions", 200, 0.3)
    router.answered("m", "/v1/chat/completions", 503, 0.001)
    router.used("m", 8, 6)
    router.used("m", 0, 3)  # a stream's events
    router.waited("m", 0.2)
    router.first_byte_after("m", 0.04)
    router.key_used("alice", 200, 8, 6)
    router.key_used("alice", 429, 0, 0)
    assert sample(router, "slurm_llm_router_requests_total", model="m",
                  endpoint="/v1/chat/completions", status="200") == 2  # fmt: skip
    assert sample(router, "slurm_llm_router_requests_total", model="m",
                  endpoint="/v1/chat/completions", status="503") == 1  # fmt: skip
    assert sample(router, "slurm_llm_router_request_duration_seconds_bucket", model="m",
                  endpoint="/v1/chat/completions", le="0.025") == 2  # fmt: skip
    assert sample(router, "slurm_llm_router_tokens_total", model="m", kind="prompt") == 8
    assert sample(router, "slurm_llm_router_tokens_total", model="m", kind="completion") == 9
    assert sample(router, "slurm_llm_router_queue_wait_seconds_count", model="m") == 1
    assert sample(router, "slurm_llm_router_time_to_first_byte_seconds_sum", model="m") == 0.04
    assert sample(router, "slurm_llm_router_key_requests_total", key="alice", status="429") == 1
    assert sample(router, "slurm_llm_router_key_tokens_total", key="alice", kind="prompt") == 8


def test_a_tally_is_handed_over_once() -> None:
    router = metrics()
    router.answered("m", "/v1/completions", 200, 0.1)
    router.fold()  # the once-a-second hand-over
    router.answered("m", "/v1/completions", 200, 0.1)
    router.fold()
    router.fold()  # nothing new: nothing added
    assert sample(router, "slurm_llm_router_requests_total", model="m",
                  endpoint="/v1/completions", status="200") == 2  # fmt: skip


def test_the_publisher_hands_over_every_second_and_outlives_a_bad_fold() -> None:
    router = metrics()

    async def publishing() -> None:
        task = asyncio.create_task(router.publish_forever())
        router.answered("m", "/v1/completions", 200, 0.1)
        assert await until(lambda: not router._answers)
        router._tokens.append(("m", 1, "not a count"))  # type: ignore[arg-type]  # fold fails
        assert await until(lambda: not router._tokens, timeout=2.5)
        router.answered("m", "/v1/completions", 200, 0.1)
        assert await until(lambda: not router._answers, timeout=2.5)  # a fold after it
        task.cancel()

    asyncio.run(publishing())
    assert sample(router, "slurm_llm_router_requests_total", model="m",
                  endpoint="/v1/completions", status="200") == 2  # fmt: skip


def test_a_replicas_odd_usage_is_not_counted() -> None:
    router = metrics()
    odd = b'{"usage": {"prompt_tokens": -5, "completion_tokens": true}}'
    meter = Meter("m", "/v1/completions", "interactive")
    meter.read_usage(count_usage(router, "m", odd))
    assert (meter.prompt_tokens, meter.completion_tokens) == (0, 0)
    assert sample(router, "slurm_llm_router_tokens_total", model="m", kind="prompt") is None


VALUES = st.recursive(
    st.none() | st.integers(0, 10**6) | st.text('"\\:{}usage, '),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["usage", "choices", "text", 'a"usage']), inner, max_size=3
        )
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(st.sampled_from(["id", "usage", "choices", "timings"]), VALUES), st.booleans()
)
def test_the_usage_read_alone_is_the_answer_s_own(answer: dict[str, object], spaced: bool) -> None:
    """Whatever the answer holds (a "usage" nested anywhere, or quoted in its text), and
    wherever its own usage stands, the usage read is the answer's own member."""
    payload = json.dumps(answer, separators=(", ", ": ") if spaced else (",", ":")).encode()
    assert answer_usage(payload) == answer.get("usage")
    assert answer_usage(b"[" + payload + b"]") is None  # not an answer: no usage of its own
    assert answer_usage(payload + b" x") is None  # not JSON
