"""Deep probes flip a replica's health only after several results in a row."""

from __future__ import annotations

from slurm_llm.router._backends import Backend
from slurm_llm.router._probes import ProbeConfig, probe_request, record_probe

CONFIG = ProbeConfig(unhealthy_after=3, healthy_after=2)


def test_a_replica_goes_down_after_three_failed_probes_in_a_row() -> None:
    backend = Backend("http://h:1", "m")
    assert [record_probe(backend, False, CONFIG) for _ in range(3)] == [False, False, True]
    assert backend.probed_down and not backend.routable(now=1e12)


def test_one_success_between_failures_resets_the_count() -> None:
    backend = Backend("http://h:1", "m")
    for passed in (False, False, True, False, False):
        record_probe(backend, passed, CONFIG)
    assert not backend.probed_down


def test_a_downed_replica_returns_after_two_good_probes() -> None:
    backend = Backend("http://h:1", "m", probed_down=True)
    assert [record_probe(backend, True, CONFIG) for _ in range(2)] == [False, True]
    assert backend.routable(now=1e12)


def test_probes_ask_for_one_real_token_in_each_engines_dialect() -> None:
    assert probe_request(Backend("http://h:1", "m", engine="llamacpp")) == (
        "/v1/completions",
        {"model": "m", "prompt": "Hi", "max_tokens": 1},
    )
    path, body = probe_request(Backend("http://h:1", "m", engine="tgi"))
    assert path == "/generate" and body["parameters"] == {"max_new_tokens": 1}
