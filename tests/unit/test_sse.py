"""The ``data:`` lines of an event stream as the engines send them."""

from __future__ import annotations

from slurm_llm._sse import DONE, data_of, json_event


def test_the_payload_of_a_data_line_is_stripped() -> None:
    assert data_of(b'data: {"a": 1}\n') == b'{"a": 1}'
    assert data_of(b'data:{"a": 1}') == b'{"a": 1}'
    assert data_of(b"data: [DONE]\r\n") == DONE


def test_other_lines_have_no_payload() -> None:
    for line in (b"", b"\n", b": keep-alive", b"event: error", b' data: {"a": 1}'):
        assert data_of(line) is None


def test_an_event_is_the_json_object_of_a_data_line() -> None:
    assert json_event(b'data: {"choices": [{"text": "hi"}]}\n') == {"choices": [{"text": "hi"}]}
    assert json_event(b'data:{"error": {"message": "engine died"}}') == {
        "error": {"message": "engine died"}
    }


def test_the_end_and_what_is_not_an_object_are_no_event() -> None:
    for line in (b"data: [DONE]", b"data: {broken", b"data: [1, 2]", b'data: "text"',
                 b"event: x", b"data:"):  # fmt: skip
        assert json_event(line) is None
