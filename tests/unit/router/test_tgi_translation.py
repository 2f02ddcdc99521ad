"""TGI requests become OpenAI text completions, and the answers become TGI's again."""

from __future__ import annotations

import json

from slurm_llm.router._schemas import GenerateRequest
from slurm_llm.router._tgi_translation import (
    StreamTranslator,
    from_completion,
    to_completion,
)


def test_greedy_request_becomes_a_zero_temperature_completion() -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 5, "stop": ["\n"], "seed": 3}}
    assert to_completion(GenerateRequest.model_validate(body), "m", streamed=False) == {
        "model": "m", "prompt": "Hello", "max_tokens": 5, "temperature": 0.0, "seed": 3,
        "stop": ["\n"],
    }  # fmt: skip


def test_sampling_parameters_carry_over() -> None:
    body = {"inputs": "x", "parameters": {"do_sample": True, "top_k": 5, "top_p": 0.9}}
    request = to_completion(GenerateRequest.model_validate(body), "m", streamed=True)
    assert request["temperature"] == 1.0 and request["top_k"] == 5 and request["top_p"] == 0.9
    assert request["stream"] is True


def test_answer_with_details_and_full_text() -> None:
    payload = {
        "choices": [{"text": " world", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2},
    }
    body = {"inputs": "Hello", "parameters": {"details": True, "return_full_text": True}}
    answer = from_completion(payload, body)
    assert answer["generated_text"] == "Hello world"
    assert answer["details"]["finish_reason"] == "length"
    assert answer["details"]["generated_tokens"] == 2


def test_stopping_on_a_stop_sequence_is_reported_as_such() -> None:
    payload = {"choices": [{"text": "a", "finish_reason": "stop"}], "usage": {}}
    with_stop = from_completion(
        payload, {"inputs": "", "parameters": {"details": True, "stop": ["."]}}
    )
    without = from_completion(payload, {"inputs": "", "parameters": {"details": True}})
    assert with_stop["details"]["finish_reason"] == "stop_sequence"
    assert without["details"]["finish_reason"] == "eos_token"


def chunk(text: str, reason: str | None = None) -> bytes:
    event = {"choices": [{"text": text, "finish_reason": reason}]}
    return f"data: {json.dumps(event)}\n\n".encode()


def events(stream: bytes) -> list[dict[str, object]]:
    return [json.loads(line[5:]) for line in stream.split(b"\n\n") if line.startswith(b"data:")]


def test_stream_events_are_translated_even_when_split_across_reads() -> None:
    upstream = chunk("Hel") + chunk("lo") + chunk("", "length") + b"data: [DONE]\n\n"
    translator = StreamTranslator({"inputs": "Say: ", "parameters": {}})
    out = b"".join(translator.feed(upstream[i : i + 7]) for i in range(0, len(upstream), 7))
    tgi = events(out)
    assert [e["token"]["text"] for e in tgi] == ["Hel", "lo", ""]  # type: ignore[index]
    assert tgi[-1]["generated_text"] == "Hello"
    assert tgi[-1]["details"] == {"finish_reason": "length", "generated_tokens": 2, "seed": None}
    assert all(e["generated_text"] is None for e in tgi[:-1])


def test_an_upstream_error_event_becomes_a_tgi_error() -> None:
    error = b'data: {"error": {"message": "boom"}}\n\n'
    (event,) = events(StreamTranslator({"inputs": ""}).feed(error))
    assert event == {"error": "boom", "error_type": "generation"}
