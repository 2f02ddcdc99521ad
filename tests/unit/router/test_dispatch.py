"""What a replica is sent: the client's bytes, or, for an engine that schedules by priority,
the body with the caller's class as its ``priority`` (vLLM's test of it is in
``tests/integration/test_vllm_cpu.py``)."""

from __future__ import annotations

import json

from slurm_llm._api_keys import Priority
from slurm_llm.router._backends import Backend
from slurm_llm.router._dispatch import Call

BODY = b'{"model": "m", "prompt": "Hi",  "priority": -100}'


def test_an_engine_without_priorities_gets_the_bytes_the_client_sent() -> None:
    call = Call("m", "/v1/completions", BODY, priority="batch")
    assert call.for_backend(Backend("http://h:1", "m")) == ("/v1/completions", BODY)


def test_an_engine_with_priorities_gets_the_callers_class_in_place_of_the_clients_own() -> None:
    vllm = Backend("http://h:1", "m", request_priority=True)
    cases: list[tuple[Priority, int]] = [("interactive", 0), ("batch", 1)]
    for priority, expected in cases:
        path, body = Call("m", "/v1/completions", BODY, priority=priority).for_backend(vllm)
        assert path == "/v1/completions"
        assert json.loads(body) == {"model": "m", "prompt": "Hi", "priority": expected}


def test_a_tgi_replica_gets_its_own_request_untouched() -> None:
    tgi_request = ("/generate", b'{"inputs": "Hi"}')
    call = Call("m", "/v1/completions", BODY, tgi=tgi_request, priority="batch")
    assert call.for_backend(Backend("http://h:1", "m", engine="tgi")) == tgi_request
