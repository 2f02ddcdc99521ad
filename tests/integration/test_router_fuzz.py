"""The router fuzzed from its own published API, in front of real llama.cpp replicas: whatever
a client sends, the router answers no 5xx of its own and ejects no replica.

schemathesis generates bodies, path parameters and headers from ``/openapi.json``, both fitting
the schemas (positive) and violating them (negative). Bounded: a few examples per route, and
what would make llama.cpp generate for long (``max_tokens``, ``n``, rounds) is capped, so the
run stays within a minute or two on two cores. Most bodies name the served model, so they reach
the replicas rather than stopping at a 404.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from slurm_llm import Deployment
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.llamacpp

MODEL = "smollm2"
EXAMPLES = 8  # per route and mode
CAPS = {"max_tokens": 4, "max_completion_tokens": 4, "max_new_tokens": 4, "n": 2,
        "best_of": 2, "max_rounds": 1, "top_logprobs": 2, "logprobs": 2}  # fmt: skip
SKIPPED = {"/metrics", "/docs", "/openapi.json"}  # answer text, not JSON; covered elsewhere


@pytest.fixture(scope="module")
def router(smollm2_llamacpp: Deployment, slurm_llm_home: Path) -> Iterator[RouterThread]:
    """A router of its own, so its replicas' state reflects this test's traffic only."""
    config = RouterConfig(probes=ProbeConfig(interval_s=0), deadline_s=60)
    with RouterThread(home=slurm_llm_home, deployment="shared-smollm2", config=config) as running:
        wait_until(lambda: running.load(MODEL).routable == 2, 60, "both replicas routable")
        yield running


def capped(value: Any) -> Any:
    """The body with what costs generation time capped, and the model named where the body
    names one as a string (anything else is left for the router to refuse)."""
    if isinstance(value, list):
        return [capped(item) for item in value[:4]]
    if not isinstance(value, dict):
        return value
    out = {key: capped(item) for key, item in value.items()}
    for key, cap in CAPS.items():
        if isinstance(out.get(key), int) and not isinstance(out[key], bool):
            out[key] = max(min(out[key], cap), -cap)
    if isinstance(out.get("model"), str):
        out["model"] = MODEL
    if isinstance(out.get("critic_model"), str):
        out["critic_model"] = MODEL
    out.pop("context", None)  # map-reduce with a tiny context makes hundreds of calls
    asks = "prompt" in out or "messages" in out
    if asks and "max_tokens" not in out and "max_completion_tokens" not in out:
        out["max_tokens"] = CAPS["max_tokens"]  # unbounded, llama.cpp writes to its context
    return out


def operations(router_url: str) -> list[Any]:
    """The documented operations; the document must load without an error."""
    schema = schemathesis.openapi.from_url(f"{router_url}/openapi.json")
    found = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        found.append(result.ok())
    return [op for op in found if op.path not in SKIPPED]


@pytest.mark.single_process
def test_no_body_makes_the_router_fail_or_eject_a_replica(router: RouterThread) -> None:
    router_faults: list[str] = []
    request_faults: list[str] = []
    sent = 0

    for operation in operations(router.url):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @hypothesis.settings(
                max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(hypothesis.HealthCheck),
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            )  # fmt: skip
            @hypothesis.given(case=strategy, named=st.booleans())
            def send(case: Any, named: bool) -> None:
                nonlocal sent
                if isinstance(case.body, dict | list):
                    case.body = capped(case.body)
                if case.path_parameters and named:
                    case.path_parameters["model"] = MODEL
                response = case.call(base_url=router.url, timeout=120)
                sent += 1
                where = f"{case.method} {case.formatted_path} {case.body!r:.300}"
                if response.status_code >= 500:
                    if response.headers.get("x-should-retry") == ["false"]:
                        request_faults.append(f"{response.status_code} {where}")
                    else:
                        router_faults.append(f"{response.status_code} {where}: {response.text}")

            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                send()  # a route with no body or parameters has no negative case

    assert sent > 150  # 19 routes, two modes, up to 8 examples each
    assert not router_faults, "\n".join(router_faults)
    backends = router.pool.of(MODEL)
    assert [b.failures for b in backends] == [0, 0], "a client's request ejected a replica"
    assert router.load(MODEL).routable == 2
    assert len(request_faults) <= 5, "\n".join(request_faults)  # engine faults, passed on
