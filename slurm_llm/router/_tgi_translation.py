"""TGI's native API (``/generate``, ``/generate_stream``, ``/``) on any backend.

Code written against the ``text-generation`` client keeps working when the model moves to vLLM
or llama.cpp: a TGI request becomes an OpenAI text completion, and the answer is turned back
into TGI's shapes. TGI replicas get the request unchanged. The OpenAI API does not expose token
ids, so translated tokens carry ``id: -1``; text, finish reason and counts are exact.
"""

from __future__ import annotations

import json
from typing import Any

from slurm_llm._sse import DONE, data_of
from slurm_llm.router._schemas import GenerateParameters, GenerateRequest

FINISH_REASONS = {"length": "length", "stop": "eos_token"}  # OpenAI's → TGI's


def to_completion(body: GenerateRequest, model: str, streamed: bool) -> dict[str, Any]:
    """The OpenAI text-completion request that asks for what a (checked) TGI request asks
    for."""
    parameters = body.parameters or GenerateParameters()
    request: dict[str, Any] = {
        "model": model,
        "prompt": body.inputs,
        "max_tokens": parameters.max_new_tokens or 20,
    }
    sampling = parameters.do_sample or any(
        value is not None for value in (parameters.temperature, parameters.top_k, parameters.top_p)
    )
    request["temperature"] = parameters.temperature or (1.0 if sampling else 0.0)
    for name in ("top_p", "top_k", "seed", "repetition_penalty", "frequency_penalty"):
        if getattr(parameters, name) is not None:
            request[name] = getattr(parameters, name)
    if parameters.stop:
        request["stop"] = parameters.stop
    if streamed:
        request["stream"] = True
    return request


def finish_reason(openai_reason: str | None, stop: list[str] | None) -> str:
    if openai_reason == "stop" and stop:
        return "stop_sequence"
    return FINISH_REASONS.get(openai_reason or "length", "length")


def from_completion(
    payload: dict[str, Any], body: dict[str, Any], stream_details: bool = False
) -> dict[str, Any]:
    """TGI's ``/generate`` answer for an OpenAI text-completion answer."""
    choice = payload["choices"][0]
    parameters = body.get("parameters") or {}
    text = choice.get("text") or ""
    if parameters.get("return_full_text"):
        text = body["inputs"] + text
    answer: dict[str, Any] = {"generated_text": text}
    if parameters.get("details") or stream_details:
        usage = payload.get("usage") or {}
        answer["details"] = {
            "finish_reason": finish_reason(choice.get("finish_reason"), parameters.get("stop")),
            "generated_tokens": usage.get("completion_tokens", 0),
            "seed": parameters.get("seed"),
            "prefill": [],
            "tokens": [],
        }
    return answer


class StreamTranslator:
    """Turns an OpenAI completion stream into TGI's ``/generate_stream`` events, chunk by chunk.

    TGI's last event carries the whole text and the details, so the translator keeps the text
    and the token count as they pass.
    """

    def __init__(self, body: dict[str, Any]) -> None:
        self.parameters = body.get("parameters") or {}
        self.prefix = body["inputs"] if self.parameters.get("return_full_text") else ""
        self.text: list[str] = []
        self.tokens = 0
        self.buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        self.buffer += chunk
        out: list[bytes] = []
        while b"\n\n" in self.buffer:
            event, self.buffer = self.buffer.split(b"\n\n", 1)
            for line in event.splitlines():
                if (data := data_of(line)) is not None:
                    out.extend(self._translate(data))
        return b"".join(out)

    def _translate(self, data: bytes) -> list[bytes]:
        if data == DONE:
            return []
        payload = json.loads(data)
        if "error" in payload:
            return [sse({"error": str(payload["error"].get("message", payload["error"])),
                         "error_type": "generation"})]  # fmt: skip
        choice = (payload.get("choices") or [{}])[0]
        piece = choice.get("text") or ""
        reason = choice.get("finish_reason")
        if not piece and reason is None:
            return []
        self.text.append(piece)
        self.tokens += bool(piece)
        event: dict[str, Any] = {
            "index": len(self.text),
            "token": {"id": -1, "text": piece, "logprob": None, "special": False},
            "generated_text": None,
            "details": None,
        }
        if reason is not None:
            event["generated_text"] = self.prefix + "".join(self.text)
            event["details"] = {
                "finish_reason": finish_reason(reason, self.parameters.get("stop")),
                "generated_tokens": self.tokens,
                "seed": self.parameters.get("seed"),
            }
        return [sse(event)]


def sse(event: dict[str, Any]) -> bytes:
    return f"data:{json.dumps(event)}\n\n".encode()


def error_body(message: str, kind: str) -> dict[str, str]:
    """TGI's error shape, which the ``text-generation`` client maps to its exceptions."""
    return {"error": message, "error_type": kind}
